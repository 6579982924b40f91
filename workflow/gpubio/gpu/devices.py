"""Local GPU pinning: each GPU job takes its own device(s) through file locks.

Snakemake counts the ``gpu`` resource locally but never sets ``CUDA_VISIBLE_DEVICES``,
so N GPU jobs would all land on GPU 0. Here each job holds an exclusive ``flock`` on one
lock file per device (``gpu<index>.lock`` in the lock directory) and sees only its own
devices. The kernel drops a flock when its holder dies, so a crashed or killed job
frees its GPU without clean-up.

From a shell rule (the command is exec'd and inherits the locks)::

    python -m gpubio.gpu.devices --gpus 1 -- dorado basecaller ...

The lock directory is per user by default (``$XDG_RUNTIME_DIR/gpubio-gpu-locks``, else
``/tmp/gpubio-gpu-locks-<uid>``); ``$GPUBIO_GPU_LOCK_DIR`` or ``lock_dir`` pick another,
e.g. a world-writable one shared by all users of a workstation.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DeviceError",
    "DeviceLease",
    "DeviceTimeout",
    "acquire_gpus",
    "default_lock_dir",
    "detect_gpu_count",
    "main",
    "pin_gpus",
]

ENV_NUM_GPUS = "GPUBIO_NUM_GPUS"
ENV_LOCK_DIR = "GPUBIO_GPU_LOCK_DIR"
# Set next to CUDA_VISIBLE_DEVICES by a pin: the devices this process tree already holds.
ENV_PINNED = "GPUBIO_PINNED_GPUS"
log = logging.getLogger("gpubio.gpu")


class DeviceError(RuntimeError):
    """GPUs cannot be pinned as asked."""


class DeviceTimeout(DeviceError, TimeoutError):
    """All devices stayed busy for the whole timeout."""


def detect_gpu_count() -> int:
    """GPUs on this machine: ``$GPUBIO_NUM_GPUS`` if set, else ``nvidia-smi -L``, else 0.

    The variable wins so that a user (or a test) can restrict or fake the count on a
    machine that has nvidia-smi.
    """
    override = os.environ.get(ENV_NUM_GPUS, "").strip()
    if override:
        try:
            count = int(override)
        except ValueError:
            raise DeviceError(f"${ENV_NUM_GPUS} must be a whole number, got {override!r}") from None
        if count < 0:
            raise DeviceError(f"${ENV_NUM_GPUS} must be >= 0, got {count}")
        return count
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        # A broken driver is "no usable GPU", which callers already handle.
        log.warning("nvidia-smi -L failed (%s); assuming no GPU", err)
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def default_lock_dir() -> Path:
    """``$GPUBIO_GPU_LOCK_DIR``, ``$XDG_RUNTIME_DIR/gpubio-gpu-locks`` or a per-user /tmp dir."""
    if os.environ.get(ENV_LOCK_DIR):
        return Path(os.environ[ENV_LOCK_DIR])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "gpubio-gpu-locks"
    return Path(f"/tmp/gpubio-gpu-locks-{os.getuid()}")


@dataclass
class DeviceLease:
    """Devices held by this process; ``release`` (or process exit) frees them."""

    devices: list[int]
    fds: list[int] = field(default_factory=list)
    # "lock": locked here; "inherited": a parent pin holds them; "slurm": SLURM
    # assigned them and set CUDA_VISIBLE_DEVICES itself, which must stay as it is.
    source: str = "lock"

    @property
    def sets_environment(self) -> bool:
        return bool(self.devices) and self.source != "slurm"

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(map(str, self.devices))

    def release(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the last descriptor drops the flock
        self.fds.clear()

    def keep_across_exec(self) -> None:
        """Let an exec'd command inherit the locks (Python opens fds close-on-exec)."""
        for fd in self.fds:
            os.set_inheritable(fd, True)


def _scheduler_devices() -> list[int] | None:
    """Devices SLURM already gave this job, or None outside a SLURM GPU allocation.

    SLURM hands out GPUs exclusively, and inside its cgroup every job may see index 0,
    so locking there would only make jobs of one user wait for each other.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not os.environ.get("SLURM_JOB_ID") or not visible:
        return None
    entries = [e for e in visible.split(",") if e.strip()]
    try:
        return [int(e) for e in entries]
    except ValueError:  # UUIDs or MIG names: positions are all we can report
        return list(range(len(entries)))


def _inherited_devices() -> list[int] | None:
    """Devices an enclosing pin holds for this process tree, or None.

    A command started by the CLI inherits the lock; if it pinned again it would wait
    for itself forever, so it reuses what it has instead.
    """
    pinned = os.environ.get(ENV_PINNED)
    if not pinned or pinned != os.environ.get("CUDA_VISIBLE_DEVICES"):
        return None
    return [int(d) for d in pinned.split(",")]


def _candidates(total: int) -> list[int]:
    """Device indices to choose from: a preset CUDA_VISIBLE_DEVICES narrows them."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or total == 0:
        return list(range(total))
    try:
        return [int(e) for e in visible.split(",") if e.strip()]
    except ValueError:
        raise DeviceError(
            f"CUDA_VISIBLE_DEVICES={visible!r} names devices by UUID; pinning needs "
            f"indices. Unset it, or set {ENV_NUM_GPUS} and let gpubio choose."
        ) from None


def acquire_gpus(
    n: int,
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
    poll_s: float = 0.2,
) -> DeviceLease:
    """Lock ``n`` free devices, waiting up to ``timeout`` s (None: forever).

    Returns an empty lease when ``n`` is 0 or the machine has no GPU. Takes all ``n``
    at once or none, so two multi-GPU jobs never hold half each and wait forever.
    Inside a SLURM GPU allocation or an enclosing pin it returns those devices as they
    are, without locking.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return DeviceLease([])
    assigned = _scheduler_devices()
    if assigned is not None:
        return DeviceLease(assigned, source="slurm")
    inherited = _inherited_devices()
    if inherited is not None:
        if n > len(inherited):
            raise DeviceError(
                f"asked for {n} GPUs inside a pin that holds {len(inherited)} "
                f"(devices {inherited}); pin {n} in the outer command instead"
            )
        return DeviceLease(inherited[:n], source="inherited")
    candidates = _candidates(detect_gpu_count())
    if not candidates:
        return DeviceLease([])
    if n > len(candidates):
        raise DeviceError(
            f"asked for {n} GPUs but this machine has {len(candidates)} "
            f"(devices {candidates}); lower gpus or run on a bigger node"
        )
    directory = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        lease = _try_lock(n, candidates, directory)
        if lease is not None:
            return lease
        if deadline is not None and time.monotonic() >= deadline:
            raise DeviceTimeout(
                f"all {len(candidates)} GPUs stayed busy for {timeout:g} s "
                f"(holders: {_holders(candidates, directory)}; lock dir {directory})"
            )
        time.sleep(poll_s)


def _lock_file(directory: Path, device: int) -> Path:
    return directory / f"gpu{device}.lock"


def _try_lock(n: int, candidates: Sequence[int], directory: Path) -> DeviceLease | None:
    lease = DeviceLease([])
    for device in candidates:
        fd = os.open(_lock_file(directory, device), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        # Record the holder for "who has my GPU?" messages; exec keeps the pid.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        lease.devices.append(device)
        lease.fds.append(fd)
        if len(lease.devices) == n:
            return lease
    lease.release()
    return None


def _holders(candidates: Sequence[int], directory: Path) -> str:
    parts = []
    for device in candidates:
        with contextlib.suppress(OSError):
            pid = _lock_file(directory, device).read_text().strip()
            parts.append(f"gpu{device}: pid {pid or '?'}")
    return ", ".join(parts) or "unknown"


@contextlib.contextmanager
def pin_gpus(
    n: int = 1,
    lock_dir: str | Path | None = None,
    timeout: float | None = None,
    strict: bool = False,
) -> Iterator[list[int]]:
    """Hold ``n`` free GPUs and set CUDA_VISIBLE_DEVICES to them inside the block.

    Yields the device indices; ``[]`` when the machine has no GPU, so the caller takes
    its CPU path (``strict=True`` raises DeviceError instead).
    """
    lease = acquire_gpus(n, lock_dir, timeout)
    if n and not lease.devices:
        if strict:
            raise DeviceError(f"GPU requested ({n}) but none found (nvidia-smi -L, ${ENV_NUM_GPUS})")
        log.warning("no GPU found: running on the CPU (gpu.require: true makes this an error)")
    previous = {var: os.environ.get(var) for var in ("CUDA_VISIBLE_DEVICES", ENV_PINNED)}
    _held.extend(lease.fds)
    try:
        if lease.sets_environment:
            _export(lease)
        if lease.devices:
            log.info(
                "using GPU(s) %s (CUDA_VISIBLE_DEVICES=%s)",
                lease.devices,
                os.environ.get("CUDA_VISIBLE_DEVICES"),
            )
        yield list(lease.devices)
    finally:
        del _held[len(_held) - len(lease.fds) :]
        lease.release()
        if lease.sets_environment:
            for var, value in previous.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value


# lock descriptors of the pins this process holds now: a tool it starts gets them
# (`subprocess.run(..., pass_fds=held_lock_fds())`), so the GPU stays locked while the
# tool runs even if this process is killed
_held: list[int] = []


def held_lock_fds() -> tuple[int, ...]:
    return tuple(_held)


def _export(lease: DeviceLease) -> None:
    os.environ["CUDA_VISIBLE_DEVICES"] = lease.cuda_visible_devices
    os.environ[ENV_PINNED] = lease.cuda_visible_devices


def nvidia_smi_sees(devices: Sequence[int]) -> str | None:
    """None when ``nvidia-smi`` lists the job's devices; else why the tool cannot use them.

    External tools (dorado, pbrun) use the driver directly: the driver's own listing is
    the truth, not what the scheduler or the pinning claims.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi is not on PATH (no NVIDIA driver on this node)"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as err:
        return f"nvidia-smi -L failed: {err}"
    listed = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
    if out.returncode or listed < len(devices):
        return f"nvidia-smi -L lists {listed} device(s) (exit {out.returncode}), {len(devices)} assigned"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpubio.gpu.devices --gpus N -- cmd args...``: run cmd on pinned GPUs."""
    parser = argparse.ArgumentParser(
        prog="python -m gpubio.gpu.devices",
        description="Run a command on free GPU(s) of this machine, holding them until it exits.",
    )
    parser.add_argument("--gpus", type=int, default=1, help="devices to hold (default 1)")
    parser.add_argument("--lock-dir", type=Path, default=None, help="lock file directory")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait for free GPUs")
    parser.add_argument(
        "--strict", "--require-gpu", dest="strict", action="store_true", help="fail instead of running on CPU"
    )
    parser.add_argument("--usage", help="write the command's GPU usage record (JSON) here")
    parser.add_argument("--usage-job", default="", help="what the plan gave the job: the rule's resources.gpu_usage")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command and arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    try:
        lease = acquire_gpus(args.gpus, args.lock_dir, args.timeout)
    except DeviceError as err:
        print(f"gpubio: {err}", file=sys.stderr)
        return 75 if isinstance(err, DeviceTimeout) else 1
    if lease.sets_environment:  # also when unusable: a nested pin then reuses the held devices
        _export(lease)
    unusable = None
    if args.gpus and not lease.devices:
        unusable = "no GPU found on this node"
    elif lease.devices:
        unusable = nvidia_smi_sees(lease.devices)
    if unusable:
        if args.strict:
            print(f"gpubio: {command[0]}: {unusable}; GPU required (gpu.require: true)", file=sys.stderr)
            return 1
        print(f"gpubio: running {command[0]} on the CPU: {unusable}", file=sys.stderr)
    elif lease.devices:
        print(
            f"gpubio: running {command[0]} on GPU(s) {lease.cuda_visible_devices} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')})",
            file=sys.stderr,
        )
    # the command inherits the locks: they stay held while it runs, even if this wrapper dies
    lease.keep_across_exec()
    sys.stderr.flush()
    if args.usage:
        return _run_recorded(command, lease, args, unusable)
    try:
        os.execvp(command[0], command)
    except OSError as err:
        print(f"gpubio: cannot run {command[0]!r}: {err}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover  (execvp does not return)


def _run_recorded(command: list[str], lease: DeviceLease, args: argparse.Namespace, unusable: str | None) -> int:
    """Run the command as a child (it holds the locks too) and write its usage record."""
    from .usage import parse_job_spec, record_usage

    devices = [] if unusable else lease.devices
    code = 127
    with record_usage(args.usage, parse_job_spec(args.usage_job), args.gpus, devices) as record:
        if unusable and args.gpus:
            record.reason = unusable
        try:
            code = subprocess.run(command, pass_fds=lease.fds).returncode
        except OSError as err:
            print(f"gpubio: cannot run {command[0]!r}: {err}", file=sys.stderr)
        record.exit_status = code
    return code


if __name__ == "__main__":
    sys.exit(main())

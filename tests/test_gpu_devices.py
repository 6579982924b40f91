"""Local GPU pinning with file locks; fake devices via GPUBIO_NUM_GPUS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpubio.gpu.devices import (
    DeviceError,
    DeviceTimeout,
    acquire_gpus,
    default_lock_dir,
    detect_gpu_count,
    pin_gpus,
)

WORKFLOW = Path(__file__).resolve().parents[1] / "workflow"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in (
        "CUDA_VISIBLE_DEVICES",
        "SLURM_JOB_ID",
        "GPUBIO_NUM_GPUS",
        "GPUBIO_GPU_LOCK_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GPUBIO_GPU_LOCK_DIR", str(tmp_path / "locks"))


def fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setenv("GPUBIO_NUM_GPUS", str(n))


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = f"{WORKFLOW}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


# --------------------------------------------------------------------------- detection


def test_detect_env_override(monkeypatch):
    fake_gpus(monkeypatch, 3)
    assert detect_gpu_count() == 3
    monkeypatch.setenv("GPUBIO_NUM_GPUS", "many")
    with pytest.raises(DeviceError, match="GPUBIO_NUM_GPUS must be a whole number"):
        detect_gpu_count()


def test_detect_with_nvidia_smi(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        "echo 'GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)'\n"
        "echo '  MIG 1g.5gb Device 0: (UUID: MIG-bbbb)'\n"
        "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-cccc)'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert detect_gpu_count() == 2
    fake_gpus(monkeypatch, 1)  # the variable wins over nvidia-smi
    assert detect_gpu_count() == 1


def test_detect_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    assert detect_gpu_count() == 0


def test_default_lock_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUBIO_GPU_LOCK_DIR")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_lock_dir() == tmp_path / "gpubio-gpu-locks"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_lock_dir() == Path(f"/tmp/gpubio-gpu-locks-{os.getuid()}")


# --------------------------------------------------------------------------- pinning


def test_no_gpu_yields_empty_list_and_leaves_env(monkeypatch):
    fake_gpus(monkeypatch, 0)
    with pin_gpus(1) as devices:
        assert devices == []
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with (
        pytest.raises(DeviceError, match="GPU requested .* none found"),
        pin_gpus(1, strict=True),
    ):
        pass


def test_leases_are_distinct_until_released(monkeypatch):
    fake_gpus(monkeypatch, 2)
    first, second = acquire_gpus(1), acquire_gpus(1)
    assert (first.devices, second.devices) == ([0], [1])
    with pytest.raises(DeviceTimeout, match=rf"all 2 GPUs stayed busy .*gpu0: pid {os.getpid()}"):
        acquire_gpus(1, timeout=0.3)
    first.release()
    assert acquire_gpus(1, timeout=0.3).devices == [0]


def test_pin_sets_and_restores_env(monkeypatch):
    fake_gpus(monkeypatch, 2)
    with pin_gpus(1) as outer:
        assert outer == [0] and os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        with pin_gpus(1) as inner:  # a nested pin reuses the outer one, never waits on it
            assert inner == [0]
        with pytest.raises(DeviceError, match="inside a pin that holds 1"):
            acquire_gpus(2)
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and "GPUBIO_PINNED_GPUS" not in os.environ
    with pin_gpus(2) as both:  # everything was released
        assert both == [0, 1] and os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_multi_gpu_takes_all_or_none(monkeypatch):
    fake_gpus(monkeypatch, 4)
    one, three = acquire_gpus(1), acquire_gpus(3)
    assert one.devices == [0] and three.devices == [1, 2, 3]
    three.release()
    with pytest.raises(DeviceTimeout):
        acquire_gpus(4, timeout=0.2)
    with pytest.raises(DeviceError, match="asked for 5 GPUs but this machine has 4"):
        acquire_gpus(5)
    assert acquire_gpus(0).devices == []


def test_preset_cuda_visible_devices_narrows_the_choice(monkeypatch):
    fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    a, b = acquire_gpus(1), acquire_gpus(1)
    assert (a.devices, b.devices) == ([2], [3])
    fake_gpus(monkeypatch, 0)  # a stale variable on a machine without GPUs: CPU path
    assert acquire_gpus(1).devices == []


def test_slurm_allocation_is_used_as_is(monkeypatch, tmp_path):
    fake_gpus(monkeypatch, 4)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pin_gpus(1) as a, pin_gpus(1) as b:  # SLURM's cgroup: no locks, no waiting
        assert a == b == [0]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert not (tmp_path / "locks").exists()


HOLDER = """
import sys, time
from pathlib import Path
from gpubio.gpu.devices import pin_gpus
out, n_expected = Path(sys.argv[1]), int(sys.argv[2])
with pin_gpus(1, timeout=30) as devices:
    (out / f"{devices[0]}.{sys.argv[3]}").write_text("held")
    # hold until every process has its device, so all held them at the same time
    deadline = time.monotonic() + 30
    while len(list(out.iterdir())) < n_expected and time.monotonic() < deadline:
        time.sleep(0.05)
    if sys.argv[4] == "hang":
        print("holding", flush=True)
        time.sleep(60)
"""


def test_four_processes_get_four_devices(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env = child_env(GPUBIO_NUM_GPUS="4")
    procs = [subprocess.Popen([sys.executable, "-c", HOLDER, str(out), "4", str(i), "exit"], env=env) for i in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    held = sorted(f.name.split(".")[0] for f in out.iterdir())
    assert held == ["0", "1", "2", "3"]


def test_killed_holder_frees_its_device(monkeypatch, tmp_path):
    fake_gpus(monkeypatch, 1)
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), "1", "child", "hang"],
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "holding"
        with pytest.raises(DeviceTimeout, match=f"gpu0: pid {child.pid}"):
            acquire_gpus(1, timeout=0.3)
        child.send_signal(signal.SIGKILL)  # no clean-up runs
        child.wait(timeout=10)
        started = time.monotonic()
        with pin_gpus(1, timeout=5) as devices:
            assert devices == [0]
        assert time.monotonic() - started < 1.0
    finally:
        if child.poll() is None:
            child.kill()


# --------------------------------------------------------------------------- CLI


PROBE = """
import fcntl, os, sys
lock = os.path.join(os.environ["GPUBIO_GPU_LOCK_DIR"], "gpu0.lock")
fd = os.open(lock, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    state = "free"
except BlockingIOError:
    state = "held"
print(os.environ.get("CUDA_VISIBLE_DEVICES", "-"), state, os.getpid())
"""


def fake_nvidia_smi(directory: Path, devices: int, status: int = 0) -> Path:
    """An nvidia-smi that lists `devices` GPUs (the driver's view) and exits with `status`."""
    directory.mkdir(exist_ok=True)
    smi = directory / "nvidia-smi"
    lines = "".join(f"echo 'GPU {i}: Tesla T4 (UUID: GPU-{i:08d})'\n" for i in range(devices))
    smi.write_text(f"#!/bin/sh\n{lines}exit {status}\n")
    smi.chmod(0o755)
    return directory


def run_cli(*args: str, gpus: str, smi: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = child_env(GPUBIO_NUM_GPUS=gpus)
    if smi is not None:
        env["PATH"] = f"{smi}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "gpubio.gpu.devices", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_execs_the_command_holding_the_lock(tmp_path):
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "gpu0.lock").touch()
    smi = fake_nvidia_smi(tmp_path / "bin", 2)
    run = run_cli("--gpus", "1", "--", sys.executable, "-c", PROBE, gpus="2", smi=smi)
    assert run.returncode == 0, run.stderr
    visible, state, pid = run.stdout.split()
    assert (visible, state) == ("0", "held")  # the exec'd command holds GPU 0
    assert (tmp_path / "locks" / "gpu0.lock").read_text().strip() == pid  # exec kept the pid
    assert "on GPU(s) 0 (CUDA_VISIBLE_DEVICES=0)" in run.stderr
    assert "RuntimeWarning" not in run.stderr


def test_command_under_the_cli_can_pin_again_without_deadlock():
    nested = "from gpubio.gpu import pin_gpus\nwith pin_gpus(1, timeout=5) as d: print(d)"
    run = run_cli("--gpus", "1", "--", sys.executable, "-c", nested, gpus="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[0]"


def test_cli_without_gpu_runs_on_cpu_or_fails_when_strict(tmp_path):
    run = run_cli("--gpus", "1", "--", sys.executable, "-c", "print('ran')", gpus="0")
    assert run.returncode == 0 and run.stdout.strip() == "ran"
    assert "on the CPU: no GPU found on this node" in run.stderr
    strict = run_cli("--strict", "--gpus", "1", "--", sys.executable, "-c", "print('ran')", gpus="0")
    assert strict.returncode == 1 and strict.stdout == ""
    assert "no GPU found on this node; GPU required" in strict.stderr


def test_assigned_gpu_the_driver_does_not_list_is_the_cpu_path_said_truthfully(tmp_path):
    """SLURM (or the pinning) assigned a device, but the driver lists none: an external
    tool would run on the CPU, so the wrapper says so, and fails in require mode."""
    (tmp_path / "locks").mkdir()
    probe = "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))"
    for smi in (None, fake_nvidia_smi(tmp_path / "broken", 0, status=9)):
        run = run_cli("--gpus", "1", "--", sys.executable, "-c", probe, gpus="1", smi=smi)
        assert run.returncode == 0, run.stderr
        assert "on the CPU:" in run.stderr and "on GPU(s)" not in run.stderr
        strict = run_cli("--strict", "--gpus", "1", "--", sys.executable, "-c", probe, gpus="1", smi=smi)
        assert strict.returncode == 1 and strict.stdout == ""
        assert "GPU required" in strict.stderr


def test_recorded_command_keeps_the_lock_and_writes_its_usage_record(tmp_path):
    import json

    (tmp_path / "locks").mkdir()
    smi = fake_nvidia_smi(tmp_path / "bin", 1)
    record = tmp_path / "usage" / "job.gpu.json"
    run = run_cli(
        "--gpus",
        "1",
        "--usage",
        str(record),
        "--usage-job",
        "rule=call_parabricks;attempt=2;model=a100",
        "--",
        sys.executable,
        "-c",
        PROBE + "raise SystemExit(4)",
        gpus="1",
        smi=smi,
    )
    assert run.returncode == 4  # the tool's status, passed through
    visible, state, _ = run.stdout.split()
    assert (visible, state) == ("0", "held")  # the child holds the lock while it runs
    assert not record.exists()
    data = json.loads((record.parent / "job.attempt2.failed.gpu.json").read_text())
    assert (data["rule"], data["attempt"], data["planned_gpu_model"]) == ("call_parabricks", 2, "a100")
    assert data["exit_status"] == 4 and data["backend"] == "cuda" and data["gpus"] == 1
    assert data["nvml"].startswith("unavailable")  # no NVML here: recorded, never fatal
    assert data["peak_vram_gb"] is None and data["wall_s"] > 0


def test_cli_passes_the_exit_status_through():
    run = run_cli("--", sys.executable, "-c", "raise SystemExit(3)", gpus="1")
    assert run.returncode == 3


def test_tool_keeps_the_gpu_locked_when_its_wrapper_is_killed(tmp_path):
    """`python -m gpubio --gpus 1 tool-on-device -- tool`: the tool inherits the job's GPU lock,
    so killing the Python wrapper does not free the GPU while the tool still runs on it."""
    import fcntl

    (tmp_path / "locks").mkdir()
    smi = fake_nvidia_smi(tmp_path / "bin", 1)
    started = tmp_path / "tool.pid"
    tool = f"import os, time; open({str(started)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    env = child_env(GPUBIO_NUM_GPUS="1")
    env["PATH"] = f"{smi}{os.pathsep}{env['PATH']}"
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpubio",
            "--gpus",
            "1",
            "tool-on-device",
            "--gpu-args=",
            "--cpu-args=",
            "--",
            sys.executable,
            "-c",
            tool,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    tool_pid = int(started.read_text())
    try:
        wrapper.kill()
        wrapper.wait(timeout=10)
        fd = os.open(tmp_path / "locks" / "gpu0.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):  # the tool still holds GPU 0
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        os.kill(tool_pid, signal.SIGKILL)

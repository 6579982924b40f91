"""What a GPU step really used: one small JSON record per job, next to its benchmark file.

The GPU wrappers (``python -m gpubio --gpus N --usage FILE <command>`` for the package's own
steps, ``python -m gpubio.gpu.devices --usage FILE -- tool ...`` for external tools) write
it when the step ends, successful or not: the device and its VRAM, peak GPU memory (torch's
own counters for PyTorch steps, NVML samples for any process), mean GPU utilisation, wall
time, the input size the need was computed from, the attempt, and what the plan gave the
job. On the CPU path the record says so and why. ``gpubio calibrate`` learns needs from
these records; the report compares them with the plan.

Reading NVML never fails a job: every NVML call is guarded and a failure is written into
the record (``nvml``) instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger("gpubio.gpu")

RECORD_SUFFIX = ".gpu.json"
SAMPLE_INTERVAL_S = 1.0
# Lower-case pieces of the messages GPU tools print when the device runs out of memory.
GPU_OOM_MARKERS = (
    "cuda out of memory",  # PyTorch (Cellpose, scVI, Enformer, CONCH): torch.OutOfMemoryError
    "outofmemoryerror",  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError, cupy's
    "cuda error: out of memory",  # PyTorch / libtorch (dorado) CUDA runtime errors
    "cuda_error_out_of_memory",  # the CUDA driver API
    "cudaerrormemoryallocation",  # the CUDA runtime API (Parabricks, dorado)
    "cudasafecall() failed: out of memory",  # Parabricks
    "rmm::out_of_memory",  # RAPIDS memory manager (cuML, cuGraph, rapids-singlecell)
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)
# "out of memory" alone also names a host-memory kill; with one of these on the line it is the GPU
GPU_WORDS = ("cuda", "gpu", "device")


@dataclass
class UsageRecord:
    """One job's measured GPU use (``None``: not measured)."""

    rule: str = ""
    job: str = ""  # wildcards, e.g. "sample=s1"
    attempt: int = 1
    gpus: int = 0  # GPUs the job asked for
    backend: str = "cpu"  # what the step ran on: "cuda" or "cpu"
    reason: str = ""  # why the CPU, when it is the CPU
    device_model: str | None = None
    device_vram_gb: float | None = None
    peak_vram_gb: float | None = None
    mean_utilisation: float | None = None  # percent, over the NVML samples
    wall_s: float = 0.0
    input_size_mb: float | None = None
    planned_gpu_model: str | None = None
    planned_partition: str | None = None
    planned_vram_gb: float | None = None
    planned_runtime_min: float | None = None
    exit_status: int = 0
    oom: bool = False
    retry_after: str = ""  # a retry: why the attempt before failed (oom, other, unknown)
    sources: list[str] = field(default_factory=list)  # "torch", "nvml"
    nvml: str = ""  # "ok", or why NVML could not be read
    host: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def parse_job_spec(spec: str) -> dict[str, Any]:
    """``rule=basecall;job=sample=s1;attempt=2;model=t4;...`` (the rule's ``--usage-job``) as a dict."""
    keys = {
        "rule": ("rule", str),
        "job": ("job", str),
        "attempt": ("attempt", int),
        "model": ("planned_gpu_model", str),
        "partition": ("planned_partition", str),
        "vram_gb": ("planned_vram_gb", float),
        "runtime": ("planned_runtime_min", float),
        "input_mb": ("input_size_mb", float),
        "after": ("retry_after", str),
    }
    out: dict[str, Any] = {}
    for part in spec.split(";"):
        key, sep, value = part.partition("=")
        if not sep or key not in keys or value in ("", "None", "<TBD>"):
            continue
        name, kind = keys[key]
        try:
            out[name] = kind(value)
        except ValueError:
            continue
    return out


# --------------------------------------------------------------------------- NVML
def _visible_nvml_handles(nvml: Any) -> list[Any]:
    """NVML handles of the devices this job sees (CUDA_VISIBLE_DEVICES: indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
    handles = []
    for item in (v.strip() for v in visible.split(",") if v.strip()):
        if item.isdigit():
            handles.append(nvml.nvmlDeviceGetHandleByIndex(int(item)))
        else:
            handles.append(nvml.nvmlDeviceGetHandleByUUID(item))
    return handles


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SmiNvml:
    """The few NVML calls the sampler makes, answered by ``nvidia-smi --query-gpu``: for
    vendor containers (dorado, Parabricks) that have the driver's tool but no nvidia-ml-py."""

    def __init__(self, smi: str):
        self.smi = smi

    def _query(self, handle: str | None, fields: str) -> list[str]:
        import subprocess

        cmd = [self.smi, f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
        if handle is not None:
            cmd[1:1] = ["-i", handle]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def nvmlInit(self) -> None:
        self._query(None, "index")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self._query(None, "index"))

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return str(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        return uuid

    def nvmlDeviceGetName(self, handle: str) -> str:
        return self._query(handle, "name")[0]

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        from types import SimpleNamespace

        total, used = (float(v) * 2**20 for v in self._query(handle, "memory.total,memory.used")[0].split(","))
        return SimpleNamespace(total=total, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(gpu=float(self._query(handle, "utilization.gpu")[0]))


def default_nvml() -> Any:
    """nvidia-ml-py where installed, else nvidia-smi where on PATH; raises ImportError if neither."""
    try:
        import pynvml  # nvidia-ml-py

        return pynvml
    except ImportError:
        import shutil

        smi = shutil.which("nvidia-smi")
        if smi is None:
            raise ImportError("neither nvidia-ml-py (pynvml) nor nvidia-smi is available") from None
        return SmiNvml(smi)


class NvmlSampler:
    """Samples used memory and utilisation of the job's devices on a background thread.

    Device memory in use counts every process on the device; on a GPU that SLURM or the
    local pinning gave to this job alone, that is the job's use.
    """

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S, nvml: Any = None):
        self.interval_s = interval_s
        self.status = "not started"
        self.device_model: str | None = None
        self.device_vram_gb: float | None = None
        self.peak_used_gb: float | None = None
        self._utilisation: list[float] = []
        self._nvml = nvml
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def mean_utilisation(self) -> float | None:
        return sum(self._utilisation) / len(self._utilisation) if self._utilisation else None

    def start(self) -> NvmlSampler:
        if self._nvml is None:
            try:
                self._nvml = default_nvml()
            except ImportError as error:
                self.status = f"unavailable: {type(error).__name__}: {error}"
                return self
        try:
            self._nvml.nvmlInit()
            self._handles = _visible_nvml_handles(self._nvml)
            if not self._handles:
                self.status = "no device visible"
                return self
            first = self._handles[0]
            self.device_model = _name(self._nvml.nvmlDeviceGetName(first))
            self.device_vram_gb = round(self._nvml.nvmlDeviceGetMemoryInfo(first).total / 1e9, 2)
            self.status = "ok"
        except Exception as error:  # noqa: BLE001  (NVML must never fail the job)
            self.status = f"unavailable: {type(error).__name__}: {error}".strip()
            return self
        self._sample()
        self._thread = threading.Thread(target=self._run, name="gpubio-nvml", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        try:
            used = sum(self._nvml.nvmlDeviceGetMemoryInfo(h).used for h in self._handles) / 1e9
            util = [self._nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in self._handles]
        except Exception as error:  # noqa: BLE001
            self.status = f"sampling failed: {type(error).__name__}: {error}"
            self._stop.set()
            return
        self.peak_used_gb = max(used, self.peak_used_gb or 0.0)
        self._utilisation.append(sum(util) / len(util))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            if self.status == "ok":
                self._sample()
        try:
            if self._handles:
                self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def torch_peak_gb() -> tuple[float | None, str | None, float | None]:
    """Peak memory PyTorch reserved in this process (all devices), and device 0's name and VRAM.

    Only looks when torch is already imported and CUDA initialised: never imports torch.
    """
    import sys

    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return None, None, None
        count = torch.cuda.device_count()
        peak = sum(max(torch.cuda.max_memory_reserved(i), torch.cuda.max_memory_allocated(i)) for i in range(count))
        props = torch.cuda.get_device_properties(0)
        return peak / 1e9, props.name, props.total_memory / 1e9
    except Exception:  # noqa: BLE001
        return None, None, None


# --------------------------------------------------------------------------- recording
def gpu_oom_line(text: str) -> str | None:
    """The first line of ``text`` that reports a GPU running out of memory, else None."""
    for line in text.splitlines():
        lowered = line.lower()
        if any(marker in lowered for marker in GPU_OOM_MARKERS) or (
            "out of memory" in lowered and any(word in lowered for word in GPU_WORDS)
        ):
            return line.strip()
    return None


def looks_like_oom(text: str) -> bool:
    return gpu_oom_line(text) is not None


@contextmanager
def record_usage(
    path: str | os.PathLike | None,
    job: dict[str, Any] | None = None,
    gpus: int = 0,
    devices: list[int] | None = None,
    nvml: Any = None,
    interval_s: float = SAMPLE_INTERVAL_S,
) -> Iterator[UsageRecord]:
    """Measure the block and write its record to ``path`` when it ends, also on failure.

    ``devices``: what the job was given ([] or None: the CPU path). The caller may set
    ``backend``/``reason`` on the yielded record (e.g. torch saw no CUDA) and
    ``exit_status``/``oom`` for an external tool. ``path`` None measures nothing.
    """
    record = UsageRecord(**(job or {}), gpus=gpus, host=socket.gethostname())
    if path is None:
        yield record
        return
    on_gpu = bool(devices)
    record.backend = "cuda" if on_gpu else "cpu"
    if not on_gpu:
        record.reason = "no GPU requested" if not gpus else "no GPU found on this node"
    sampler = NvmlSampler(interval_s, nvml).start() if on_gpu else None
    start = time.perf_counter()
    try:
        yield record
    except BaseException as error:
        record.exit_status = record.exit_status or _exit_status(error)
        record.oom = record.oom or looks_like_oom(f"{type(error).__name__}: {error}")
        raise
    finally:
        record.wall_s = round(time.perf_counter() - start, 3)
        _finish(record, sampler)
        write_record(path if not record.exit_status else failed_record_path(path, record.attempt), record)


def failed_record_path(path: str | os.PathLike, attempt: int) -> Path:
    """Where a failed attempt's record goes: beside the job's, so a retry does not overwrite it."""
    path = Path(path)
    stem = path.name[: -len(RECORD_SUFFIX)] if path.name.endswith(RECORD_SUFFIX) else path.stem
    return path.with_name(f"{stem}.attempt{attempt}.failed{RECORD_SUFFIX}")


def _exit_status(error: BaseException) -> int:
    if isinstance(error, SystemExit):
        return error.code if isinstance(error.code, int) else 1
    return 1


def _finish(record: UsageRecord, sampler: NvmlSampler | None) -> None:
    peaks = []
    torch_peak, torch_name, torch_vram = torch_peak_gb()
    if torch_peak is not None:
        peaks.append(torch_peak)
        record.sources.append("torch")
        record.device_model = record.device_model or torch_name
        record.device_vram_gb = record.device_vram_gb or (round(torch_vram, 2) if torch_vram else None)
    if sampler is not None:
        sampler.stop()
        record.nvml = sampler.status
        if sampler.status == "ok" and sampler.peak_used_gb is not None:
            peaks.append(sampler.peak_used_gb)
            record.sources.append("nvml")
            record.mean_utilisation = (
                round(sampler.mean_utilisation, 1) if sampler.mean_utilisation is not None else None
            )
        record.device_model = record.device_model or sampler.device_model
        record.device_vram_gb = record.device_vram_gb or sampler.device_vram_gb
    if peaks:
        record.peak_vram_gb = round(max(peaks), 3)


def write_record(path: str | os.PathLike, record: UsageRecord) -> None:
    """Write atomically; a record that cannot be written is logged, never fatal."""
    from gpubio.atomic import write_text_atomic

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(str(path), json.dumps(asdict(record), indent=1) + "\n")
    except OSError as error:
        log.warning("could not write the GPU usage record %s: %s", path, error)


def read_records(roots: list[str | os.PathLike], sample_folders: Collection[str] | None = None) -> list[UsageRecord]:
    """Every ``*.gpu.json`` record under the given directories (or the files themselves).

    ``sample_folders``: where the records of the samples (and runs) in the sheets now are,
    relative to a root (``genomics/s1``, ``genomics/runs/flowcell_A``); a record in any other
    folder below a module's own (a sample removed from its sheet) is left out. Records in a
    module's folder itself (steps over all samples) are kept.
    """
    current = None if sample_folders is None else {Path(folder) for folder in sample_folders}
    records = []
    for root in map(Path, roots):
        paths = [root] if root.is_file() else sorted(root.rglob(f"*{RECORD_SUFFIX}"))
        for path in paths:
            folder = path.parent.relative_to(root) if path != root else None
            if current is not None and folder is not None and len(folder.parts) > 1 and folder not in current:
                continue
            try:
                records.append(UsageRecord.from_dict(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError) as error:
                log.warning("skipping unreadable GPU usage record %s: %s", path, error)
    return records

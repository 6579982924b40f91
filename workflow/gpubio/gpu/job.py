"""The device of the running step: what it was given, what it really runs on, and its record.

The CLI (``python -m gpubio --gpus N ...``) pins the job's GPUs and sets this once; steps
ask it for their torch device instead of reading CLI state. It tells the truth: a step
that was given a GPU its library cannot use (SLURM assigned a device but torch sees no
CUDA) runs on the CPU with one line saying why, or fails in require mode
(``gpu.require: true``), and its usage record says which.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .usage import UsageRecord

log = logging.getLogger("gpubio.gpu")


class GpuUnusable(RuntimeError):
    """A GPU was required but what the step runs cannot use it."""


@dataclass
class JobDevice:
    gpus: int = 0  # GPUs the rule asked for
    devices: list[int] = field(default_factory=list)  # what the pinning gave it ([]: none found)
    require: bool = False
    record: UsageRecord = field(default_factory=UsageRecord)

    def use_cpu(self, step: str, why: str) -> None:
        """Run ``step`` on the CPU: fail in require mode when a GPU was asked for; else log why."""
        if self.gpus and self.require:
            raise GpuUnusable(f"{step}: {why}")
        self.record.backend, self.record.reason = "cpu", why
        log.info("%s on the CPU: %s", step, why)


_current = JobDevice()


def current_job() -> JobDevice:
    """The running step's device (a CPU step with no GPU when the CLI did not set one)."""
    return _current


def set_current_job(job: JobDevice) -> JobDevice:
    global _current
    _current = job
    return job


def torch_device(step: str, threads: int | None = None) -> str:
    """``"cuda"`` when this job holds a GPU and torch can use it, else ``"cpu"``; logged once,
    torch's CPU threads set. Fails in require mode when a GPU was asked for but is unusable."""
    import torch

    job = current_job()
    if threads:
        torch.set_num_threads(threads)
    if not job.gpus:
        job.use_cpu(step, "no GPU requested for this step")
        return "cpu"
    if not job.devices:
        job.use_cpu(step, "no GPU found on this node")
        return "cpu"
    if not torch.cuda.is_available():
        job.use_cpu(step, f"GPU(s) {job.devices} assigned, but torch {torch.__version__} sees no CUDA device")
        return "cpu"
    name = torch.cuda.get_device_name(0)
    job.record.backend, job.record.device_model = "cuda", job.record.device_model or name
    log.info("%s on the GPU: %s (devices %s)", step, name, job.devices)
    return "cuda"


def step_torch_device(step: str, threads: int):
    """:func:`torch_device` as a ``torch.device``, for the steps that pass one to their models."""
    import torch

    return torch.device(torch_device(step, max(1, threads)))

"""Runs on this machine: which GPUs it has, and whether a job's need can run here at all.

On a cluster a need is judged by the partitions file; on a workstation or laptop by the
GPUs in the box. There a need the box cannot hold is not an error: the step runs its CPU
path, as it does where there is no GPU. Only ``gpu.require: true`` (no CPU path allowed)
turns it into a refusal at start-up.

Whether a run is local is decided when the Snakefile is parsed, before Snakemake has chosen
an executor: ``gpu.site: cluster | local`` says it; ``auto`` reads it from the run (inside a
SLURM job, or with a remote executor's ``--jobs``, it is the cluster).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from .catalogue import Catalogue, CatalogueError, GpuModel

__all__ = ["LocalGpu", "LocalGpus", "detect_local_gpus", "site_is_local", "SITE_KINDS"]

SITE_KINDS = ("auto", "cluster", "local")
log = logging.getLogger("gpubio.gpu")


def site_is_local(setting: str, remote_jobs: int | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether jobs run on this machine. ``remote_jobs``: Snakemake's ``--jobs`` for a
    remote executor (``workflow.resource_settings.nodes``), None for a local run."""
    if setting not in SITE_KINDS:
        raise ValueError(f"gpu.site must be one of {', '.join(SITE_KINDS)}, got {setting!r}")
    if setting != "auto":
        return setting == "local"
    environ = os.environ if environ is None else environ
    # a cluster job parses the Snakefile again and must keep the placement it was submitted with
    return not environ.get("SLURM_JOB_ID") and remote_jobs is None


@dataclass(frozen=True)
class LocalGpu:
    """One GPU of this machine; VRAM and compute capability None where unknown."""

    name: str
    vram_gb: float | None = None
    compute_capability: float | None = None

    def describe(self) -> str:
        if self.vram_gb is None:
            return f"{self.name} (VRAM unknown)"
        cc = f", cc {self.compute_capability:g}" if self.compute_capability is not None else ""
        return f"{self.name} ({self.vram_gb:g} GB{cc})"


@dataclass(frozen=True)
class LocalGpus:
    """The GPUs of this machine and where that was read."""

    gpus: tuple[LocalGpu, ...]
    source: str

    def describe(self) -> str:
        if not self.gpus:
            return f"no GPU ({self.source})"
        names: dict[str, int] = {}
        for gpu in self.gpus:
            names[gpu.describe()] = names.get(gpu.describe(), 0) + 1
        return ", ".join(f"{n} x {name}" for name, n in names.items()) + f" ({self.source})"

    def summary(self) -> str:
        """The start-up line of a local run."""
        text = f"gpubio: local run: GPU needs are judged by this machine's GPUs: {self.describe()}"
        if any(gpu.vram_gb is None for gpu in self.gpus):
            text += "; VRAM unknown, so every need is taken to fit"
        return text

    def fitting(self, vram_gb: float, min_compute_capability: float) -> list[LocalGpu]:
        """GPUs that can hold one GPU's share of a need; unknown VRAM or capability counts as
        fitting (the GPUBIO_NUM_GPUS count says nothing else; the tool finds out)."""
        return [
            gpu
            for gpu in self.gpus
            if (gpu.vram_gb is None or gpu.vram_gb >= vram_gb)
            and (gpu.compute_capability is None or gpu.compute_capability >= min_compute_capability)
        ]


_SMI_QUERY = ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]


def detect_local_gpus(catalogue: Catalogue) -> LocalGpus:
    """``$GPUBIO_NUM_GPUS`` GPUs of unknown VRAM where set, else what ``nvidia-smi`` lists
    (names resolved in the catalogue, else the measured VRAM), else none."""
    # imported here: `python -m gpubio.gpu.devices` warns when the package imported it first
    from .devices import ENV_NUM_GPUS, detect_gpu_count

    if os.environ.get(ENV_NUM_GPUS, "").strip():
        count = detect_gpu_count()
        return LocalGpus(tuple(LocalGpu(f"GPU {i}") for i in range(count)), f"${ENV_NUM_GPUS}={count}")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return LocalGpus((), "nvidia-smi not found")
    try:
        out = subprocess.run([smi, *_SMI_QUERY], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        log.warning("nvidia-smi failed (%s); assuming no GPU", err)
        return LocalGpus((), "nvidia-smi failed")
    return LocalGpus(parse_nvidia_smi(out.stdout, catalogue), "nvidia-smi")


def parse_nvidia_smi(text: str, catalogue: Catalogue) -> tuple[LocalGpu, ...]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits``
    (memory in MiB)."""
    gpus = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, memory = line.rpartition(",")
        try:
            vram_gb = round(float(memory) / 1024, 1)
        except ValueError:
            vram_gb = None
        model = catalogue_model(name.strip(), vram_gb, catalogue)
        if model is not None:
            gpus.append(LocalGpu(model.name, model.vram_gb, model.compute_capability))
        else:
            gpus.append(LocalGpu(name.strip(), vram_gb))
    return tuple(gpus)


def catalogue_model(name: str, vram_gb: float | None, catalogue: Catalogue) -> GpuModel | None:
    """The catalogue model an nvidia-smi name means (``NVIDIA A100-SXM4-40GB``, ``Tesla T4``):
    a word of the name that is a catalogue family, sized by the measured VRAM where it has
    several members."""
    words = [w for w in re.split(r"[\s_-]+", name.lower()) if w not in ("nvidia", "tesla", "geforce", "rtx")]
    for word in words:
        candidates = [word]
        if vram_gb is not None:
            # a 40 GB card reports about 40,960 MiB: try the nearest whole sizes first
            candidates = [f"{word}-{round(vram_gb)}", f"{word}-{round(vram_gb * 1.048576)}", word]
        for candidate in candidates:
            try:
                return catalogue.resolve(candidate)
            except CatalogueError:
                continue
    return None

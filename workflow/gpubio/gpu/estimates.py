"""How long a GPU job is expected to run, as against how long it may run (its runtime limit).

Work is counted in T4-GPU-minutes (the T4 is speed 1.0 in the GPU catalogue): a job of W
T4-GPU-minutes is expected to take W / (speed x GPUs) minutes on GPUs of another model, and
W / speed GPU-minutes (the work is taken to split evenly over a job's GPUs).

Where ``gpubio calibrate`` measured a rule on this lab's runs, its work is the median line
through those runs' GPU time against input size. Otherwise it is the rule's estimate below:
a start-up cost plus a rate per MB of input, rough figures for the tool on a T4 (each names
what it assumes), so the plan says ``estimate`` beside them. A rule without one gets
:data:`DEFAULT_ESTIMATE`. The reserved time is the job's runtime limit: what a cluster
holds for it, and what an allocation is charged when the job runs that long.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkEstimate:
    """T4-GPU-minutes of one job: ``base_min + per_input_mb x input size (MB)``."""

    base_min: float
    per_input_mb: float
    basis: str  # what the figures assume, for the plan's notes and the README

    def at(self, size_mb: float | None) -> float:
        return self.base_min + self.per_input_mb * (size_mb or 0.0)


# gpubio's GPU rules, on a T4. Sizes are what Snakemake counts as the job's input (every
# input file: models and references included).
RULE_ESTIMATES: Mapping[str, WorkEstimate] = {
    "basecall": WorkEstimate(1.0, 0.02, "dorado hac: about 20 min per GB of POD5 on a T4 (sup: 5-10x longer)"),
    "call_parabricks": WorkEstimate(
        2.0, 0.0035, "Parabricks DeepVariant: about 4 T4-GPU-hours for a 30x genome (70 GB of BAM)"
    ),
    "variant_effects": WorkEstimate(
        2.0, 0.001, "Enformer scores a ref and an alt window per variant (about 0.4 s per variant on a T4)"
    ),
    "register_image": WorkEstimate(0.5, 0.02, "learned registration: a few seconds per megapixel"),
    "train_cellpose": WorkEstimate(5.0, 0.2, "Cellpose training: minutes for a few training images"),
    "restore_image": WorkEstimate(0.5, 0.005, "Cellpose 3 restoration: about 0.5 s per megapixel"),
    "segment_cells": WorkEstimate(0.5, 0.01, "Cellpose segmentation: about 1 s per megapixel"),
    "detect_doublets": WorkEstimate(0.5, 0.01, "Scrublet on rapids-singlecell: about a minute for 10,000 cells"),
    "integrate_cells": WorkEstimate(1.0, 0.02, "rapids-singlecell: minutes for 100,000 cells"),
    "annotate_scanvi": WorkEstimate(2.0, 0.06, "scANVI training: about 20 min for 100,000 cells"),
    "embed_cells": WorkEstimate(1.0, 0.01, "Geneformer / scGPT inference: about 1,000 cells per second"),
    "embed_tiles": WorkEstimate(1.0, 0.003, "CONCH image encoder: about 200 tiles per second"),
}
DEFAULT_ESTIMATE = WorkEstimate(5.0, 0.01, "no estimate for this rule: 5 min + 0.01 min per MB")


@dataclass(frozen=True)
class Expected:
    """A job's expected wall time (minutes) on the GPUs it was placed on, and where it comes
    from: ``calibrated`` (this lab's runs) or ``estimate`` (the rule's estimate)."""

    minutes: float
    source: str

    def gpu_hours(self, gpus: int) -> float:
        return gpus * self.minutes / 60


def rule_work(rule: str, size_mb: float | None, calibrated: Any = None) -> tuple[float, str]:
    """T4-GPU-minutes of one job of ``rule`` with ``size_mb`` of input, and its source.

    ``calibrated``: the rule's :class:`gpubio.gpu.calibrate.CalibratedNeed`, used where it
    has measured work (records run on a GPU)."""
    if calibrated is not None and getattr(calibrated, "work", None) is not None:
        return calibrated.work_min(size_mb), "calibrated"
    return RULE_ESTIMATES.get(rule, DEFAULT_ESTIMATE).at(size_mb), "estimate"


def expected_time(rule: str, gpus: int, speed: float, size_mb: float | None, calibrated: Any = None) -> Expected | None:
    """The expected wall time of a job on ``gpus`` GPUs of relative ``speed``; None for a CPU job."""
    if gpus <= 0 or speed <= 0:
        return None
    work, source = rule_work(rule, size_mb, calibrated)
    return Expected(max(work, 0.0) / (speed * gpus), source)

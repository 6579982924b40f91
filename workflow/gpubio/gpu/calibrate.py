"""`gpubio calibrate`: learn each rule's GPU need from the usage records of past runs.

For every rule with measured GPU records, VRAM is fitted as a function of input size: a
robust slope (Theil-Sen: the median of pairwise slopes, so one odd job does not tilt it),
raised until the line lies on or above every measured peak (an upper bound, not a mean),
then a safety margin on top. Where size does not move the peak, the need is a constant.
A job that ran out of memory proves the need was above that GPU's VRAM at its size: the
fit is raised above it. Runtime is fitted the same way. The work a job is expected to take
(for the plan's expected GPU-hours, :mod:`gpubio.gpu.estimates`) is the median line through the
GPU runs' time, in T4-GPU-minutes (wall time x GPUs x the catalogue speed of the GPU it ran
on), with no margin: a typical job, where the runtime line bounds every job. The result is
``config/gpu_needs.yaml``, which placement reads at start-up: the calibrated need replaces
the declared one, never below the rule's floor (the tool's documented minimum).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from .catalogue import BUILTIN_CATALOGUE, Catalogue, CatalogueError
from .usage import UsageRecord

log = logging.getLogger("gpubio.gpu")

DEFAULT_MARGIN = 0.2
# a slope that moves the peak by less than this share over the sizes seen is no slope
MIN_SIZE_EFFECT = 0.05
MIN_POINTS_FOR_SLOPE = 3


@dataclass(frozen=True)
class Line:
    """``intercept + slope x size_mb``; slope 0 is a constant."""

    intercept: float
    slope: float = 0.0

    def at(self, size_mb: float | None) -> float:
        return self.intercept + self.slope * (size_mb or 0.0)

    def to_dict(self, unit: str) -> dict[str, float]:
        out = {f"constant_{unit}": round(self.intercept, 3)}
        if self.slope:
            out = {f"intercept_{unit}": round(self.intercept, 3), f"{unit}_per_input_mb": round(self.slope, 6)}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], unit: str) -> Line:
        if f"constant_{unit}" in data:
            return cls(float(data[f"constant_{unit}"]))
        return cls(float(data[f"intercept_{unit}"]), float(data[f"{unit}_per_input_mb"]))


@dataclass(frozen=True)
class CalibratedNeed:
    """A rule's measured need: VRAM per GPU (GB) and runtime (minutes) against input size (MB)."""

    rule: str
    vram: Line
    runtime: Line | None
    records: int
    oom_records: int
    max_input_mb: float | None
    work: Line | None = None  # T4-GPU-minutes, median line (None: no record ran on a GPU)

    def vram_gb(self, size_mb: float | None) -> float:
        """At ``size_mb``; unknown size (a job whose inputs are not made yet): the largest size seen."""
        return self.vram.at(self.max_input_mb if size_mb is None else size_mb)

    def runtime_min(self, size_mb: float | None) -> int | None:
        if self.runtime is None:
            return None
        return max(1, math.ceil(self.runtime.at(self.max_input_mb if size_mb is None else size_mb)))

    def work_min(self, size_mb: float | None) -> float:
        """Expected T4-GPU-minutes at ``size_mb`` (unknown: the largest size seen)."""
        assert self.work is not None
        return max(0.0, self.work.at(self.max_input_mb if size_mb is None else size_mb))


def upper_line(points: list[tuple[float, float]]) -> Line:
    """The lowest line of Theil-Sen slope on or above every (size, value) point."""
    sizes = [s for s, _ in points]
    top = max(v for _, v in points)
    slope = 0.0
    if len(points) >= MIN_POINTS_FOR_SLOPE and max(sizes) > min(sizes):
        slopes = [(v2 - v1) / (s2 - s1) for i, (s1, v1) in enumerate(points) for s2, v2 in points[i + 1 :] if s2 != s1]
        slope = max(0.0, median(slopes))
        if slope * (max(sizes) - min(sizes)) < MIN_SIZE_EFFECT * top:
            slope = 0.0
    return Line(max(v - slope * s for s, v in points), slope)


def median_line(points: list[tuple[float, float]]) -> Line:
    """The Theil-Sen line through (size, value) points: median pairwise slope (never below 0),
    median intercept; a typical value, where :func:`upper_line` bounds them all."""
    slope = upper_line(points).slope
    return Line(median(v - slope * s for s, v in points), slope)


def record_speed(record: UsageRecord, catalogue: Catalogue = BUILTIN_CATALOGUE) -> float:
    """The catalogue speed (T4 = 1) of the GPU a record ran on: its device name, else the GPU
    type the plan gave it; 1.0 where neither resolves."""
    from .local_site import catalogue_model

    model = catalogue_model(record.device_model, record.device_vram_gb, catalogue) if record.device_model else None
    if model is None and record.planned_gpu_model:
        try:
            model = catalogue.resolve(record.planned_gpu_model)
        except CatalogueError:
            model = None
    return model.speed if model is not None else 1.0


def fit_rule(
    rule: str,
    records: list[UsageRecord],
    margin: float = DEFAULT_MARGIN,
    catalogue: Catalogue = BUILTIN_CATALOGUE,
) -> CalibratedNeed | None:
    """One rule's need from its records; None when no record measured a GPU peak."""
    measured = [r for r in records if r.backend == "cuda" and r.peak_vram_gb is not None and not r.exit_status]
    ooms = [r for r in records if r.oom and r.device_vram_gb]
    if not measured and not ooms:
        return None
    size = lambda r: r.input_size_mb or 0.0  # noqa: E731
    if measured:
        fit = upper_line([(size(r), r.peak_vram_gb) for r in measured])
        vram = Line(fit.intercept * (1 + margin), fit.slope * (1 + margin))
    else:
        vram = Line(0.0)
    for r in ooms:  # the need at that size was above the VRAM of the GPU that ran out
        floor = r.device_vram_gb * (1 + margin)
        if vram.at(size(r)) < floor:
            vram = Line(vram.intercept + floor - vram.at(size(r)), vram.slope)
    finished = [r for r in records if not r.exit_status and r.wall_s > 0]
    runtime = None
    if finished:
        fit = upper_line([(size(r), r.wall_s / 60) for r in finished])
        runtime = Line(fit.intercept * (1 + margin), fit.slope * (1 + margin))
    on_gpu = [r for r in finished if r.backend == "cuda"]
    work = (
        median_line([(size(r), r.wall_s / 60 * max(r.gpus, 1) * record_speed(r, catalogue)) for r in on_gpu])
        if on_gpu
        else None
    )
    sizes = [r.input_size_mb for r in records if r.input_size_mb is not None]
    return CalibratedNeed(rule, vram, runtime, len(records), len(ooms), max(sizes) if sizes else None, work)


def calibrate(
    records: list[UsageRecord], margin: float = DEFAULT_MARGIN, catalogue: Catalogue = BUILTIN_CATALOGUE
) -> dict[str, CalibratedNeed]:
    by_rule: dict[str, list[UsageRecord]] = {}
    for record in records:
        if record.rule:
            by_rule.setdefault(record.rule, []).append(record)
    needs = {}
    for rule, rule_records in sorted(by_rule.items()):
        need = fit_rule(rule, rule_records, margin, catalogue)
        if need is not None:
            needs[rule] = need
    return needs


def needs_to_yaml(needs: dict[str, CalibratedNeed], sources: list[str], margin: float) -> str:
    import yaml

    body = {}
    for rule, need in needs.items():
        entry: dict[str, Any] = {"vram": need.vram.to_dict("gb")}
        if need.runtime is not None:
            entry["runtime"] = need.runtime.to_dict("min")
        if need.work is not None:
            entry["work"] = need.work.to_dict("t4_gpu_min")
        entry["records"] = need.records
        entry["oom_records"] = need.oom_records
        if need.max_input_mb is not None:
            entry["max_input_mb"] = round(need.max_input_mb, 3)
        body[rule] = entry
    header = (
        "# GPU needs measured by `gpubio calibrate` (do not edit by hand; re-run it after new runs).\n"
        f"# From the usage records under: {', '.join(sources)}; margin {margin:.0%} over the measured upper bound.\n"
        "# Placement uses these instead of the rules' declared VRAM (never below a rule's floor);\n"
        "# delete this file, or set gpu.needs: '' in config.yaml, to place by the declared needs again.\n"
    )
    return header + yaml.safe_dump({"rules": body}, sort_keys=True)


class NeedsError(ValueError):
    """The calibrated needs file cannot be read."""


def load_needs(path: str | os.PathLike) -> dict[str, CalibratedNeed]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        needs = {}
        for rule, entry in (data.get("rules") or {}).items():
            runtime = Line.from_dict(entry["runtime"], "min") if "runtime" in entry else None
            work = Line.from_dict(entry["work"], "t4_gpu_min") if "work" in entry else None
            needs[rule] = CalibratedNeed(
                rule,
                Line.from_dict(entry["vram"], "gb"),
                runtime,
                int(entry.get("records", 0)),
                int(entry.get("oom_records", 0)),
                entry.get("max_input_mb"),
                work,
            )
        return needs
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise NeedsError(
            f"{path}: not a calibrated needs file ({type(error).__name__}: {error}); "
            "re-create it with `gpubio calibrate`, or delete it"
        ) from None


def write_needs(records_dirs: list[str], out: str, margin: float = DEFAULT_MARGIN) -> dict[str, CalibratedNeed]:
    from gpubio.atomic import write_text_atomic

    from .usage import read_records

    records = read_records(records_dirs)
    needs = calibrate(records, margin)
    if not needs:
        raise SystemExit(
            f"gpubio calibrate: no GPU usage records with a measured peak under {', '.join(records_dirs)} "
            "(records are written by GPU jobs that ran on a GPU: benchmarks/**/*.gpu.json)"
        )
    write_text_atomic(out, needs_to_yaml(needs, records_dirs, margin))
    return needs

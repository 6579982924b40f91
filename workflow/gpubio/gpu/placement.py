"""Where a GPU job runs: a pure placement function and the rule-facing resources.

``place_gpu_job`` picks a partition and GPU model for one job's need. ``gpu_resources``
wraps it into the standard Snakemake resources a rule declares::

    rule basecall:
        ...
        resources:
            **gpu_resources(vram_gb=lambda size_mb: 4 + size_mb / 1000, policy="cheapest"),

The site (inventory + catalogue, needs, mode) is one object, built once at start-up by
``build_site`` and passed to every rule's resources (``gpu_resources(SITE, ...)``); rules
never name a partition or model. ``builtin_site()`` is the shipped example partitions and
catalogue.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from .catalogue import (
    BUILTIN_CATALOGUE,
    Catalogue,
    CatalogueError,
    GpuModel,
    load_catalogue,
)
from .inventory import BUILTIN_INVENTORY, Inventory, SitePartition, load_inventory
from .local_site import LocalGpus, detect_local_gpus, site_is_local

__all__ = [
    "Economics",
    "GpuNeed",
    "GpuPool",
    "Placement",
    "PlacementError",
    "Policy",
    "Site",
    "build_site",
    "builtin_site",
    "check_declared_needs",
    "escalate",
    "cpu_resources",
    "gpu_pools",
    "gpu_resources",
    "place_gpu_job",
    "planned_job_problems",
    "pool_fits",
]

Policy = Literal["cheapest", "fastest", "balanced"]
POLICIES: tuple[str, ...] = get_args(Policy)
VramSpec = float | int | Callable[[float], float]

# Defaults when a rule does not say; generous enough for typical GPU tools.
DEFAULT_MEM_MB_PER_GPU = 16_000
DEFAULT_CPU_JOB_MEM_MB = 4_000
DEFAULT_RUNTIME_MIN = 60
# set: place by the rules' declared needs even where a calibrated needs file exists
ENV_DECLARED_NEEDS = "GPUBIO_DECLARED_NEEDS"
# set (by `gpubio plan`): GPU jobs carry resource gpu_why, why they went where they did
ENV_EXPLAIN = "GPUBIO_PLAN_WHY"


class PlacementError(ValueError):
    """No partition at the site fits a job's need."""


@dataclass(frozen=True)
class GpuNeed:
    """What one job needs. ``vram_gb`` is per GPU: a number or ``f(input_size_mb)``."""

    gpus: int = 1
    vram_gb: VramSpec = 0.0
    min_compute_capability: float = 0.0
    policy: Policy = "cheapest"
    cpus: int | None = None
    mem_mb: int | None = None
    runtime: int | None = None  # minutes
    rule: str | None = None  # for messages, and to find the rule's calibrated need
    min_vram_gb: float = 0.0  # the tool's documented minimum: calibration never goes below it

    def __post_init__(self) -> None:
        where = f"rule {self.rule!r}: " if self.rule else ""
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 0:
            raise ValueError(f"{where}gpus must be a whole number >= 0, got {self.gpus!r}")
        if not callable(self.vram_gb):
            _check_number(self.vram_gb, f"{where}vram_gb")
        _check_number(self.min_compute_capability, f"{where}min_compute_capability")
        _check_number(self.min_vram_gb, f"{where}min_vram_gb")
        if self.policy not in POLICIES:
            raise ValueError(f"{where}policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("cpus", "mem_mb", "runtime"):
            value = getattr(self, name)
            if value is not None:
                _check_number(value, f"{where}{name}")

    @property
    def is_static(self) -> bool:
        """True when VRAM does not depend on the input size."""
        return not callable(self.vram_gb)

    def at_input_size(self, size_mb: float) -> GpuNeed:
        """This need with ``vram_gb`` evaluated for an input of ``size_mb`` MB."""
        if self.is_static:
            return self
        assert callable(self.vram_gb)
        value = self.vram_gb(size_mb)
        where = f"rule {self.rule!r}: " if self.rule else ""
        _check_number(value, f"{where}vram_gb({size_mb:g} MB)")
        return replace(self, vram_gb=float(value))

    def describe(self) -> str:
        """``"2 GPUs with >= 24 GB VRAM each, compute capability >= 8.0"``."""
        if self.gpus == 0:
            text = "CPU only"
        else:
            text = f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}"
            if callable(self.vram_gb):
                text += " with VRAM depending on input size"
            elif self.vram_gb:
                text += f" with >= {self.vram_gb:g} GB VRAM{' each' if self.gpus > 1 else ''}"
            if self.min_compute_capability:
                text += f", compute capability >= {self.min_compute_capability:g}"
        limits = [
            f"{v:g} {unit}"
            for v, unit in (
                (self.cpus, "CPUs"),
                (self.mem_mb, "MB RAM"),
                (self.runtime, "min"),
            )
            if v is not None
        ]
        return text + (f" ({', '.join(limits)})" if limits else "")


def _check_number(value: Any, at: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{at} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{at} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class GpuPool:
    """One GRES type in one partition, resolved to its catalogue model."""

    partition: SitePartition
    gres_type: str
    model: GpuModel
    order: int  # position at the site; breaks ties in file order

    def describe(self) -> str:
        return f"{self.partition.name}: {self.partition.max_gpu} x {self.model.describe()}"


@dataclass(frozen=True)
class Placement:
    """Where a job goes. ``gpu_model`` is the site's GRES type (what SLURM is asked for).

    Spread over several partitions (gpu.spread), ``partition`` lists them (``gpu-a100,gpu-h100``,
    what ``sbatch -p`` takes), ``model`` is the first one's GPU and ``gpu_model`` is ``""`` where
    they hold different GPU types (an untyped request, ``--gpus=N``). ``why`` says why it went
    there (the plan's column)."""

    partition: str
    gpus: int = 0
    gpu_model: str | None = None
    model: GpuModel | None = None
    attempt: int = 1
    why: str = ""

    def describe(self) -> str:
        if self.model is None:
            return f"partition {self.partition} (CPU)"
        gres = f"GRES type {self.gpu_model}" if self.gpu_model else "any GPU type of these partitions"
        return f"partition {self.partition}, {self.gpus} x {self.model.describe()} ({gres})"


OBJECTIVES = ("cheapest", "fastest", "balanced")


@dataclass(frozen=True, eq=False)
class Economics:
    """What a GPU hour costs and what placement optimises (config gpu.prices, gpu.objective,
    gpu.spread).

    ``prices``: per GPU-hour by catalogue model (lower-case name); empty: the catalogue's
    relative costs (T4 = 1) stand in. ``objective`` set: every GPU job goes where its expected
    cost (``cheapest``), time (``fastest``) or cost x time (``balanced``) is lowest, whatever its
    rule's policy; work is the same on every GPU, so a job's expected cost on a model is its
    price / speed and its time 1 / speed. None: each rule's own policy. ``spread``: a job goes
    to every partition whose GPUs all fit it, best first (``sbatch -p a,b``)."""

    prices: Mapping[str, float] = field(default_factory=dict)
    objective: str | None = None
    spread: bool = False

    def hourly(self, model: GpuModel) -> float:
        """Price of one GPU-hour of ``model`` (its relative cost where no prices are given)."""
        return self.prices.get(model.key, model.cost)

    def price(self, model: GpuModel | None) -> float | None:
        """The configured price of ``model`` per GPU-hour; None without prices."""
        return self.prices.get(model.key) if model is not None and self.prices else None


NO_ECONOMICS = Economics()


def _rank(need: GpuNeed, economics: Economics) -> tuple[Callable[[GpuPool], tuple[float, ...]], str]:
    """How fitting pools are ordered for a job (best first), and what that order is, for the
    plan's ``why``."""
    objective = economics.objective
    if not objective:
        return _POLICY_KEYS[need.policy], f"rule policy {need.policy}"

    def cost(p: GpuPool) -> float:
        return economics.hourly(p.model) / p.model.speed

    keys: dict[str, Callable[[GpuPool], tuple[float, ...]]] = {
        "cheapest": lambda p: (cost(p), 1 / p.model.speed, p.order),
        "fastest": lambda p: (1 / p.model.speed, cost(p), p.order),
        "balanced": lambda p: (cost(p) / p.model.speed, cost(p), p.order),
    }
    return keys[objective], f"gpu.objective {objective}"


def _why(
    need: GpuNeed,
    economics: Economics,
    fitting: list[GpuPool],
    chosen: GpuPool,
    rank: tuple[Callable[[GpuPool], tuple[float, ...]], str],
    larger: int,
) -> str:
    """One line: what chose, each fitting GPU's figure it compared (best first), escalation."""
    key, what = rank
    prices = "gpu.prices" if economics.prices else "relative cost"
    label, value = (
        {
            "cheapest": (
                f"{prices} / speed (cost of a T4-hour of work)",
                lambda p: economics.hourly(p.model) / p.model.speed,
            ),
            "fastest": ("speed (T4 1)", lambda p: p.model.speed),
            "balanced": (f"{prices} / speed^2 (cost x time)", lambda p: economics.hourly(p.model) / p.model.speed**2),
        }[economics.objective]
        if economics.objective
        else {
            "cheapest": ("relative hourly cost (T4 1)", lambda p: p.model.cost),
            "fastest": ("speed (T4 1)", lambda p: p.model.speed),
            "balanced": ("relative cost / speed", lambda p: p.model.cost / p.model.speed),
        }[need.policy]
    )
    seen: dict[str, str] = {}
    for pool in sorted(fitting, key=lambda p: (p is not chosen, key(p))):
        seen.setdefault(pool.model.name, f"{pool.model.name} {value(pool):.3g}")
    text = f"{what}: {label} of the fitting GPUs {' / '.join(seen.values())}"
    if larger:
        text += f"; {larger} step{'s' if larger > 1 else ''} larger after GPU out-of-memory"
    return text


def gpu_pools(inventory: Inventory, catalogue: Catalogue) -> list[GpuPool]:
    """Every (partition, GRES type) at the site, resolved through the catalogue."""
    pools: list[GpuPool] = []
    for partition in inventory.partitions:
        if not partition.has_gpus:
            continue
        for gres_type in partition.gpu_types:
            try:
                model = catalogue.resolve(partition.catalogue_name(gres_type))
            except CatalogueError as err:
                raise CatalogueError(f"{inventory.source}: partition {partition.name!r}: {err}") from None
            pools.append(GpuPool(partition, gres_type, model, order=len(pools)))
    return pools


def _fits_limits(need: GpuNeed, partition: SitePartition) -> bool:
    return (
        (need.cpus is None or need.cpus <= partition.max_cpus_per_task)
        and (need.mem_mb is None or need.mem_mb <= partition.max_mem_mb)
        and (need.runtime is None or need.runtime <= partition.max_runtime)
        and (need.cpus is None or need.gpus == 0 or need.cpus / need.gpus <= partition.max_cpus_per_gpu)
    )


def pool_fits(need: GpuNeed, pool: GpuPool) -> bool:
    """Whether one job with this (static) need fits a pool."""
    assert not callable(need.vram_gb)
    return (
        pool.model.vram_gb >= need.vram_gb
        and pool.model.compute_capability >= need.min_compute_capability
        and pool.partition.max_gpu >= need.gpus
        and _fits_limits(need, pool.partition)
    )


_POLICY_KEYS: dict[str, Callable[[GpuPool], tuple[float, ...]]] = {
    "cheapest": lambda p: (p.model.cost, -p.model.speed, p.order),
    "fastest": lambda p: (-p.model.speed, p.model.cost, p.order),
    # One job on its own: least cost per unit of work; the whole-workflow plan is
    # gpubio.gpu.balance.plan_balanced.
    "balanced": lambda p: (p.model.cost / p.model.speed, -p.model.speed, p.order),
}


def place_gpu_job(
    need: GpuNeed,
    inventory: Inventory,
    catalogue: Catalogue,
    attempt: int = 1,
    *,
    input_size_mb: float | None = None,
    larger: int | None = None,
    economics: Economics = NO_ECONOMICS,
) -> Placement:
    """Pick the partition and GPU model for one job.

    A pool fits when its model has >= the VRAM (per GPU) and compute capability asked
    for, its partition has >= ``gpus`` per node, and the need's cpus/mem_mb/runtime are
    within the partition's limits. Policies: cheapest = lowest relative hourly cost
    (tie: faster); fastest = highest speed (tie: cheaper); balanced = lowest cost per
    unit of work (tie: faster); then file order. ``economics.objective``, where set, orders
    them instead (:class:`Economics`).

    ``larger`` > 0 moves to the ``larger``-th strictly larger VRAM size above that choice
    (the next larger GPU the site has), choosing within that size by the same order, and
    stays at the largest. The workflow counts one step per GPU out-of-memory of the job's
    earlier attempts (:mod:`gpubio.gpu.retry`); without ``larger``, every attempt before
    ``attempt`` counts as one. With ``economics.spread`` the job goes to every partition
    whose GPUs all fit (at that size or larger), best first. A need with ``gpus=0`` goes to
    a CPU partition. Raises PlacementError when nothing fits.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    larger = attempt - 1 if larger is None else larger
    if not need.is_static:
        if input_size_mb is None:
            raise ValueError("this need's vram_gb depends on the input size; pass input_size_mb")
        need = need.at_input_size(input_size_mb)
    if need.gpus == 0:
        return replace(_place_cpu_job(need, inventory, catalogue), attempt=attempt)

    pools = gpu_pools(inventory, catalogue)
    fitting = [p for p in pools if pool_fits(need, p)]
    if not fitting:
        raise PlacementError(_no_fit_message(need, inventory, pools))
    rank = _rank(need, economics)
    key = rank[0]
    chosen = escalate(fitting, min(fitting, key=key), larger, key)
    why = _why(need, economics, fitting, chosen, rank, larger)
    placed = Placement(chosen.partition.name, need.gpus, chosen.gres_type, chosen.model, attempt, why)
    if economics.spread:  # after out-of-memory, only GPUs as large as the one escalated to
        eligible = [p for p in fitting if not larger or p.model.vram_gb >= chosen.model.vram_gb]
        placed = spread(placed, pools, eligible, key)
    return placed


def escalate(
    fitting: list[GpuPool], chosen: GpuPool, larger: int, key: Callable[[GpuPool], tuple[float, ...]]
) -> GpuPool:
    """``larger`` > 0: the ``larger``-th strictly larger VRAM size above ``chosen`` among the
    fitting pools (the next larger GPU the site has), the best by ``key`` within a size; the
    largest stays the largest."""
    if larger > 0:
        sizes = sorted({p.model.vram_gb for p in fitting if p.model.vram_gb > chosen.model.vram_gb})
        if sizes:
            tier = sizes[min(larger - 1, len(sizes) - 1)]
            chosen = min((p for p in fitting if p.model.vram_gb == tier), key=key)
    return chosen


def spread(
    placed: Placement, pools: list[GpuPool], eligible: list[GpuPool], key: Callable[[GpuPool], tuple[float, ...]]
) -> Placement:
    """``placed`` widened to every partition whose GPU types are all ``eligible`` (so any GPU
    SLURM hands out there fits), ordered by their best pool; typed where they share one GRES
    type, else untyped (``gpu_model`` ""). Unchanged where fewer than two partitions qualify
    or ``placed``'s own partition holds a GPU type that does not fit."""
    ok = {(p.partition.name, p.gres_type) for p in eligible}
    ordered = dict.fromkeys([placed.partition, *(p.partition.name for p in sorted(eligible, key=key))])
    whole = [name for name in ordered if all((name, p.gres_type) in ok for p in pools if p.partition.name == name)]
    if len(whole) < 2 or whole[0] != placed.partition:
        return placed
    types = {p.gres_type for p in eligible if p.partition.name in whole}
    return replace(
        placed,
        partition=",".join(whole),
        gpu_model=placed.gpu_model if len(types) == 1 else "",
        why=f"{placed.why}; spread over {', '.join(whole)} (gpu.spread), the first that can start it runs it",
    )


def _place_cpu_job(need: GpuNeed, inventory: Inventory, catalogue: Catalogue) -> Placement:
    """A partition without GPUs, the first in file order whose limits fit; never a GPU
    partition while the site has a CPU one. A site without any takes CPU jobs on the GPU
    partition with the cheapest GPUs that fits (:func:`cpu_jobs_note` says so)."""
    cpu_partitions = [p for p in inventory.partitions if not p.has_gpus]
    candidates = cpu_partitions or _by_gpu_cost(inventory, catalogue)
    fitting = [p for p in candidates if _fits_limits(need, p)]
    if fitting:
        return Placement(partition=fitting[0].name)
    if cpu_partitions:
        limits = "; ".join(_describe_limits(p) for p in cpu_partitions)
        raise PlacementError(
            f"{_rule_prefix(need)}no partition without GPUs in {inventory.source} fits the CPU job "
            f"({need.describe()}): {limits}. Raise that partition's limits in {inventory.source}, or lower "
            f"the job's threads (--set-threads RULE=N or --max-threads N), mem_mb or runtime; "
            f"CPU jobs are not sent to GPU partitions."
        )
    raise PlacementError(
        f"{_rule_prefix(need)}no partition in {inventory.source} fits the CPU job "
        f"({need.describe()}). Lower cpus/mem_mb/runtime, or raise the partition "
        f"limits in {inventory.source}."
    )


def _by_gpu_cost(inventory: Inventory, catalogue: Catalogue) -> list[SitePartition]:
    """GPU partitions, the cheapest GPUs first (file order among equals)."""
    cost: dict[str, float] = {}
    for pool in gpu_pools(inventory, catalogue):
        cost[pool.partition.name] = min(cost.get(pool.partition.name, math.inf), pool.model.cost)
    return sorted((p for p in inventory.partitions if p.has_gpus), key=lambda p: cost.get(p.name, math.inf))


def _describe_limits(partition: SitePartition) -> str:
    limits = [
        f"{name} {value:g}"
        for name, value in (
            ("max_cpus_per_task", partition.max_cpus_per_task),
            ("max_mem_mb", partition.max_mem_mb),
            ("max_runtime", partition.max_runtime),
        )
        if math.isfinite(value)
    ]
    return f"{partition.name!r} allows {', '.join(limits) or 'anything'}"


def cpu_jobs_note(inventory: Inventory, catalogue: Catalogue) -> str | None:
    """Where CPU jobs go on a site without a partition free of GPUs, and why; None where it has one."""
    if any(not p.has_gpus for p in inventory.partitions):
        return None
    host = _by_gpu_cost(inventory, catalogue)[0]
    return (
        f"{inventory.source} has no partition without GPUs (max_gpu: 0), so CPU jobs go to "
        f"{host.name!r}, the partition with the cheapest GPUs (the next where its limits are too small); "
        f"add a CPU partition to keep GPU nodes for GPU jobs"
    )


def _rule_prefix(need: GpuNeed) -> str:
    return f"rule {need.rule!r}: " if need.rule else ""


def _no_fit_message(need: GpuNeed, inventory: Inventory, pools: list[GpuPool]) -> str:
    head = f"{_rule_prefix(need)}no partition in {inventory.source} fits the GPU need ({need.describe()})."
    if not pools:
        return (
            f"{head} The site has no GPU partitions. Add one (max_gpu, "
            f"available_gpu_models) to {inventory.source}, or configure the site "
            f"with cpu_only=True to run GPU steps on their CPU path."
        )
    assert not callable(need.vram_gb)
    largest = max(pools, key=lambda p: (p.model.vram_gb, p.model.speed))
    big = [p for p in pools if p.model.vram_gb >= need.vram_gb]
    capable = [p for p in big if p.model.compute_capability >= need.min_compute_capability]
    roomy = [p for p in capable if p.partition.max_gpu >= need.gpus]
    # The first filter that empties the field is the reason.
    if not big:
        why = f"no GPU has {need.vram_gb:g} GB"
    elif not capable:
        best_cc = max(p.model.compute_capability for p in big)
        why = f"the highest compute capability among them is {best_cc:g}"
    elif not roomy:
        most = max(capable, key=lambda p: p.partition.max_gpu)
        why = (
            f"no partition with such GPUs has more than {most.partition.max_gpu} GPUs "
            f"per node ({most.partition.name!r})"
        )
    else:
        names = ", ".join(sorted({p.partition.name for p in roomy}))
        why = f"the cpus/mem_mb/runtime asked for exceed the limits of {names}"
    site = "; ".join(p.describe() for p in pools)
    return (
        f"{head} Largest GPU available: {largest.model.describe()} in partition "
        f"{largest.partition.name!r}. Why: {why}. Site GPUs: {site}. "
        f"To fix: lower the need (smaller shards or batch size; vram_gb is per GPU), or "
        f"add a partition with a larger GPU to {inventory.source} (and the model to "
        f"config['gpu']['catalogue'] if it is not built in)."
    )


# --------------------------------------------------------------------------- site


class JobNotices:
    """Problems of single jobs met while Snakemake evaluates their resources (a CPU job no CPU
    partition holds, a GPU job gpu.require refuses here), said once per rule. A dry-run sees
    them only so; a run checks its jobs before the first one (:func:`planned_job_problems`)
    and stops, so it silences them first."""

    def __init__(self) -> None:
        self.said: set[str] = set()
        self.silent = False

    def say(self, rule: str | None, message: str) -> None:
        if self.silent or rule in self.said:
            return
        self.said.add(rule or "")
        print(f"gpubio: {message} (a run, not a dry-run, stops here before its first job)", file=sys.stderr)


@dataclass(frozen=True)
class Site:
    """Inventory + catalogue. ``cpu_only`` places every job on a CPU partition.

    ``local``: the run's jobs run on this machine, whose GPUs (not the inventory) decide
    whether a need can run. Jobs still carry the partition the inventory gives them where
    it has one (the plan and usage records name it); a need the inventory cannot hold
    goes to partition ``local``. ``require`` (gpu.require) refuses a need that no local
    GPU can hold, as no CPU path is allowed then: for the jobs a run will run, before the
    first (:func:`planned_job_problems`), never for a rule without jobs.
    """

    inventory: Inventory
    catalogue: Catalogue
    cpu_only: bool = False
    # rule -> CalibratedNeed, from config/gpu_needs.yaml (``gpubio calibrate``)
    needs: Mapping[str, Any] = field(default_factory=dict)
    local: LocalGpus | None = None
    require: bool = False
    economics: Economics = NO_ECONOMICS
    # why each retry goes where it goes (gpubio.gpu.retry); None: retries stay on the same GPU class
    retries: Any = field(default=None, compare=False, repr=False)
    # the plan's dry-run: jobs carry resource gpu_why (why they went where they did)
    explain: bool = False
    # (need, attempt, size, larger) -> Placement: every job of a rule asks the same question
    _placements: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # (rule, wildcards, attempt, threads, input MB) -> Placement: one job's placement, shared by
    # all its resources
    _jobs: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # (rule, wildcards) -> the placement of the job's latest attempt, for the params that need
    # it (call_parabricks' small-GPU options): Snakemake evaluates params after resources
    _latest: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    notices: JobNotices = field(default_factory=JobNotices, compare=False, hash=False, repr=False)
    # the needs the rules declared (gpu_resources / cpu_resources), for check_declared_needs
    declared: dict = field(default_factory=dict, compare=False, hash=False, repr=False)
    # rule -> its need, as declared (rule=) or as named when Snakemake first evaluated it
    rule_needs: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def job_placement(self, rule: str, wildcards: Any) -> Placement | None:
        """Where the latest attempt of one job of ``rule`` was placed (its resources placed
        it), else None."""
        return self._latest.get((rule, _wildcards_key(wildcards)))

    def place(self, need: GpuNeed, attempt: int = 1, input_size_mb: float | None = None, larger: int = 0) -> Placement:
        """Where a job with this need goes; ``larger``: steps to a larger GPU (its GPU
        out-of-memory failures so far)."""
        key = (need, attempt, input_size_mb, larger)
        placed = self._placements.get(key)
        if placed is None:
            placed = self._placements[key] = self._place(need, attempt, input_size_mb, larger)
        return placed

    def _place(self, need: GpuNeed, attempt: int, input_size_mb: float | None, larger: int) -> Placement:
        if self.cpu_only and need.gpus:
            need = replace(need, gpus=0)
        effective = self.effective_need(need, input_size_mb)
        try:
            return place_gpu_job(
                effective,
                self.inventory,
                self.catalogue,
                attempt,
                input_size_mb=input_size_mb,
                larger=larger,
                economics=self.economics,
            )
        except PlacementError:
            if self.local is None:
                raise
        # this machine's GPUs if enough of them fit, else the step's CPU path
        return Placement(
            partition="local",
            gpus=effective.gpus,
            gpu_model="local" if effective.gpus else None,
            attempt=attempt,
            why=f"a local run: no partition of {self.inventory.source} fits, this machine's GPUs or CPU path run it",
        )

    def retry(self, rule: str | None, wildcards: Any, attempt: int) -> Any:
        """How a job's attempt escalates (:class:`gpubio.gpu.retry.RetryDecision`)."""
        from .retry import FIRST, RetryDecision

        if attempt <= 1:
            return FIRST
        if self.retries is None or not rule:
            return RetryDecision(attempt)
        return self.retries.decide(rule, wildcards, attempt)

    def require_problem(self, need: GpuNeed, input_size_mb: float | None = None) -> str | None:
        """Under gpu.require on this machine: why no local GPU can hold the need, else None. A
        need that grows with its input is judged at its input's size, or at its smallest while
        that input is not made yet."""
        if self.local is None or not self.require or self.cpu_only or not need.gpus:
            return None
        effective = self.effective_need(need, input_size_mb).at_input_size(input_size_mb or 0.0)
        assert not callable(effective.vram_gb)
        if len(self.local.fitting(effective.vram_gb, effective.min_compute_capability)) >= effective.gpus:
            return None
        return (
            f"{_rule_prefix(need)}gpu.require is true but this machine cannot run the GPU need "
            f"({effective.describe()}): it has {self.local.describe()}. Lower the need, set "
            f"gpu.require: false to let the step run its CPU path, or run it on the cluster "
            f"(--profile profiles/slurm-gpu)."
        )

    def cpu_jobs_note(self) -> str | None:
        """Where CPU jobs go on a site without a partition free of GPUs, and why (else None)."""
        return cpu_jobs_note(self.inventory, self.catalogue)

    def effective_need(self, need: GpuNeed, input_size_mb: float | None = None) -> GpuNeed:
        """The rule's calibrated need where one was measured (never below its floor), else
        the declared one. Calibrated needs that grow with input size take the largest size
        measured when this job's size is not known yet."""
        calibrated = self.needs.get(need.rule) if need.gpus and need.rule else None
        if calibrated is None:
            return need
        vram = max(calibrated.vram_gb(input_size_mb), need.min_vram_gb)
        runtime = calibrated.runtime_min(input_size_mb)
        return replace(need, vram_gb=round(vram, 2), runtime=runtime if runtime else need.runtime)


def builtin_site() -> Site:
    """A new site of the built-in inventory (the shipped example partitions) and catalogue."""
    return Site(BUILTIN_INVENTORY, BUILTIN_CATALOGUE)


def build_site(
    partitions_file: str | Path | None = None,
    catalogue_overrides: Mapping[str, Any] | None = None,
    cpu_only: bool = False,
    needs_file: str | Path | None = None,
    *,
    kind: str = "cluster",
    remote_jobs: int | None = None,
    require: bool = False,
    prices: Mapping[str, Any] | None = None,
    objective: str | None = None,
    spread: bool = False,
    job_files: Callable[..., Any] | None = None,
    main_process: bool = True,
    workdir: str | os.PathLike = ".",
) -> Site:
    """The site GPU jobs are placed on; built once at start-up and passed to the rules.

    ``kind`` (config gpu.site): ``cluster`` judges needs by the inventory, ``local`` by
    this machine's GPUs, ``auto`` picks local unless inside a SLURM job or given
    ``remote_jobs`` (Snakemake's ``--jobs`` for a remote executor); see
    :mod:`gpubio.gpu.local_site`. ``require`` (gpu.require) matters only locally.

    ``partitions_file`` None keeps the built-in inventory. Every GRES type must resolve
    in the catalogue (checked here).
    ``needs_file``: calibrated needs (``gpubio calibrate``), used when the file exists,
    unless ``$GPUBIO_DECLARED_NEEDS`` is set (the plan's "declared" column).

    ``prices`` (gpu.prices: GPU model -> price per GPU-hour), ``objective`` and ``spread``:
    see :class:`Economics`; with prices, every GPU model at the site needs one. ``job_files``
    (``gpubio.gpu.retry.snakemake_job_files(workflow)``) says where a job leaves its log and
    usage record: a retry reads them and goes to a larger GPU only after GPU out-of-memory;
    without it retries stay on the same GPU class. ``main_process``: this Snakemake process
    schedules the run (false inside a cluster job, which reads the retry decisions back).
    """
    inventory = BUILTIN_INVENTORY if partitions_file is None else load_inventory(partitions_file)
    needs = {}
    if needs_file and Path(needs_file).is_file() and not os.environ.get(ENV_DECLARED_NEEDS):
        from .calibrate import load_needs

        needs = load_needs(needs_file)
    catalogue = load_catalogue(catalogue_overrides)
    local = detect_local_gpus(catalogue) if site_is_local(kind, remote_jobs) else None
    pools = gpu_pools(inventory, catalogue)  # fail now on an unknown GRES type
    if objective and objective not in OBJECTIVES:
        raise PlacementError(f"gpu.objective must be one of {', '.join(OBJECTIVES)} or '', got {objective!r}")
    economics = Economics(_model_prices(prices, catalogue, pools, inventory.source), objective or None, spread)
    from .retry import RetryTracker

    retries = RetryTracker(job_files, workdir, main_process) if job_files is not None else None
    return Site(
        inventory,
        catalogue,
        cpu_only,
        needs,
        local,
        require,
        economics,
        retries,
        explain=bool(os.environ.get(ENV_EXPLAIN)),
    )


def _model_prices(
    prices: Mapping[str, Any] | None, catalogue: Catalogue, pools: list[GpuPool], source: str
) -> dict[str, float]:
    """gpu.prices by catalogue model (lower-case name); every GPU model at the site needs one."""
    if not prices:
        return {}
    resolved: dict[str, float] = {}
    for name, price in prices.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price <= 0:
            raise CatalogueError(f"gpu.prices[{name!r}] must be a price per GPU-hour above 0, got {price!r}")
        try:
            model = catalogue.resolve(str(name))
        except CatalogueError as error:
            raise CatalogueError(f"gpu.prices[{name!r}]: {error}") from None
        resolved[model.key] = float(price)
    missing = sorted({f"{p.model.name} (partition {p.partition.name})" for p in pools if p.model.key not in resolved})
    if missing:
        raise CatalogueError(
            f"gpu.prices has no price for {', '.join(missing)} of {source}: give every GPU model "
            "at the site a price per GPU-hour, or leave gpu.prices empty"
        )
    return resolved


def check_declared_needs(site: Site) -> list[Placement]:
    """Place every static GPU need the rules declared (attempt 1); raise one error listing all
    misfits. The Snakefile calls it once every rule is declared, before the DAG is built.

    Size-dependent needs are checked when Snakemake evaluates them, which is still
    while it builds the DAG. A CPU job's CPUs are its threads, known per job: CPU needs are
    checked for the jobs a run will run (:func:`planned_job_problems`).
    """
    placements, errors = [], []
    for need in site.declared:
        if not need.is_static or not need.gpus:
            continue
        try:
            placements.append(site.place(need))
        except PlacementError as err:
            errors.append(str(err))
    if errors:
        raise PlacementError("\n".join(errors))
    return placements


def gpu_resources(
    site: Site,
    rule: str | None = None,
    *,
    gpus: int = 1,
    vram_gb: VramSpec = 0.0,
    min_compute_capability: float = 0.0,
    policy: Policy = "cheapest",
    cpus: int | None = None,
    mem_mb: int | Callable[..., Any] | None = None,
    runtime: int | str | Callable[..., Any] | None = None,
    min_vram_gb: float = 0.0,
    group: Any = None,
) -> dict[str, Any]:
    """Standard Snakemake resources for a GPU job: ``resources: **gpu_resources(SITE, "rule", ...)``.

    ``site``: the site built at start-up (:func:`build_site`); ``rule``: the rule's name, for
    start-up messages and its calibrated need (without it the need is named when Snakemake
    first evaluates it).

    Returns ``gpu`` (int), ``gpu_model`` and ``slurm_partition`` (callables of
    ``attempt``, and of ``input`` when VRAM depends on input size), ``mem_mb``, ``runtime``
    (minutes) and ``vram_gb``. A job's CPUs are its ``threads`` (what it will get, after
    ``--cores``): the SLURM plugin asks for ``--cpus-per-task`` = threads, and placement
    checks that number against the partitions' CPU limits. ``cpus`` overrides it (then
    ``cpus_per_task`` is set). ``mem_mb``/``runtime`` may be
    Snakemake resource callables; they pass through. Static needs are checked against the
    site by :func:`check_declared_needs` once every rule is declared.

    ``policy="balanced"`` takes ``group``, a :class:`gpubio.gpu.balance.BalancedGroup`
    holding all jobs of the rule: each job then goes where the group's plan puts it.

    ``min_vram_gb`` is the tool's documented minimum (e.g. dorado 8 GB): a calibrated
    need (``gpubio calibrate``) replaces ``vram_gb`` but never goes below it.
    """
    if (policy == "balanced") != (group is not None):
        raise ValueError(
            f"{'rule ' + repr(rule) + ': ' if rule else ''}policy='balanced' and group=BalancedGroup(...) go together"
        )
    need = GpuNeed(
        gpus=gpus,
        vram_gb=vram_gb,
        min_compute_capability=min_compute_capability,
        policy=policy,
        cpus=cpus,
        mem_mb=mem_mb if isinstance(mem_mb, int) else None,
        runtime=runtime if isinstance(runtime, int) else None,
        rule=rule,
        min_vram_gb=min_vram_gb,
    )
    site.declared[need] = None
    if rule:
        site.rule_needs[rule] = need

    gpu_count = 0 if site.cpu_only else gpus
    resources: dict[str, Any] = {
        "gpu": gpu_count,
        "slurm_partition": _fixed_cpu_partition(site, need) or _placement_resource(site, need, _partition, group),
        # without cpus_per_task the SLURM plugin asks for --cpus-per-task = the job's threads
        **({"cpus_per_task": cpus} if cpus is not None else {}),
        "mem_mb": (
            mem_mb if mem_mb is not None else (DEFAULT_MEM_MB_PER_GPU * gpus if gpus else DEFAULT_CPU_JOB_MEM_MB)
        ),
        "runtime": _runtime_resource(site, need, runtime if runtime is not None else DEFAULT_RUNTIME_MIN),
        "vram_gb": _vram_resource(site, need),
    }
    if gpu_count:
        resources["gpu_model"] = _placement_resource(site, need, _gpu_model, group)
    resources["gpu_usage"] = _usage_resource(site, need, group)
    if site.explain and gpus:
        resources["gpu_why"] = _placement_resource(site, need, _why_placed, group)
    return resources


def _partition(placement: Placement) -> str:
    return placement.partition


def _gpu_model(placement: Placement) -> str | None:
    return placement.gpu_model


def _why_placed(placement: Placement) -> str:
    return placement.why


def _fixed_cpu_partition(site: Site, need: GpuNeed) -> str | None:
    """The partition of a CPU rule's jobs when their thread counts cannot change it, else None.

    A CPU job goes to the first partition without GPUs whose limits fit; its CPUs are its
    threads, known per job. The partition that fits the rule with any CPU count takes every
    job whose threads it allows, and when no such partition allows more CPUs per task, a job
    it cannot take fits nowhere (the run refuses it before its first job). Then the partition
    is a fixed string: Snakemake evaluates a resource function for every job of a large DAG.
    """
    if need.gpus or need.cpus is not None or not need.is_static:
        return None
    try:
        name = site.place(need).partition
    except PlacementError:
        return None
    if name not in site.inventory.names:
        return None
    partitions = site.inventory.partitions
    candidates = [p for p in partitions if not p.has_gpus] or partitions
    widest = max(p.max_cpus_per_task for p in candidates)
    return name if site.inventory[name].max_cpus_per_task >= widest else None


def cpu_resources(
    site: Site,
    rule: str | None = None,
    *,
    cpus: int | None = None,
    mem_mb: int | Callable[..., Any] | None = None,
    runtime: int | str | Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Resources of a CPU job: the CPU partition of the site, CPUs (the rule's ``threads``
    unless ``cpus`` is given), memory and runtime."""
    resources = gpu_resources(site, rule, gpus=0, cpus=cpus, mem_mb=mem_mb, runtime=runtime)
    for key in ("gpu", "vram_gb", "gpu_usage", "gpu_why"):
        resources.pop(key, None)
    return resources


def _resource_callable(func: Callable[..., Any]) -> Callable[..., Any]:
    """Snakemake reads the signature of every resource callable for every job (to pass only
    the parameters it names); a stored signature turns that into an attribute lookup."""
    func.__signature__ = inspect.signature(func)  # type: ignore[attr-defined]
    return func


def input_files_mb(input: Any) -> float:
    """``input.size_mb`` as Snakemake computes it, by plain stats for local files: Snakemake
    runs an event loop per call, and every job of a size-dependent rule asks several times.

    An input not made yet (any job's during a dry-run) raises FileNotFoundError naming that
    input, which Snakemake takes as "size not known yet", as it does from ``input.size_mb``.
    """
    if not isinstance(input, list):  # Snakemake's InputFiles is a list of paths
        return input.size_mb
    if any(getattr(path, "is_storage", False) for path in input):
        return input.size_mb
    return sum(os.path.getsize(path) / 1024 / 1024 for path in input)  # Snakemake's rounding, per file


def _wildcards_key(wildcards: Any) -> tuple:
    items = wildcards.items() if hasattr(wildcards, "items") else ()
    return tuple((str(k), str(v)) for k, v in items)


def _placed(
    site: Site,
    need: GpuNeed,
    group: Any,
    wildcards: Any,
    attempt: int,
    rulename: str | None,
    threads: int | None,
    size_mb: float | None,
) -> Placement:
    """Where one job goes: its balanced group's plan, else the site's placement of its need;
    computed once per job (rule, wildcards, attempt) and shared by all its resources.

    A CPU job no partition without GPUs holds, or a GPU job gpu.require refuses here, is said
    once per rule (a dry-run's view) and a run refuses it before its first job
    (:func:`planned_job_problems`); its resources meanwhile name the widest CPU partition.
    """
    named = _named(need, rulename, threads)
    if named.rule and named.rule not in site.rule_needs:
        site.rule_needs[named.rule] = _named(need, rulename)
    # threads and input size are part of a job's key: --cores may lower its threads, and an
    # input made again may have changed size
    key = (named.rule, _wildcards_key(wildcards), attempt, threads, size_mb)
    placed = site._jobs.get(key) if named.rule else None
    if placed is None:
        placed = _place_job(site, need, named, group, wildcards, attempt, size_mb)
        if named.rule:
            site._jobs[key] = placed
            site._latest[key[:2]] = placed
    return placed


def _place_job(
    site: Site, need: GpuNeed, named: GpuNeed, group: Any, wildcards: Any, attempt: int, size_mb: float | None
) -> Placement:
    require_problem = site.require_problem(named, size_mb)
    if require_problem:
        site.notices.say(named.rule, require_problem)
    larger = site.retry(named.rule, wildcards, attempt).larger if attempt > 1 and need.gpus else 0
    if group is not None:
        return group.place(named, wildcards, attempt, site, larger)
    try:
        return site.place(named, attempt, None if need.is_static else size_mb, larger)
    except PlacementError as error:
        if need.gpus and not site.cpu_only:
            raise
        site.notices.say(named.rule, str(error))
        return Placement(partition=_widest(site.inventory).name, attempt=attempt)


def _widest(inventory: Inventory) -> SitePartition:
    """The CPU partition (else any) that allows the most CPUs, memory and runtime."""
    candidates = [p for p in inventory.partitions if not p.has_gpus] or list(inventory.partitions)
    return max(candidates, key=lambda p: (p.max_cpus_per_task, p.max_mem_mb, p.max_runtime))


def planned_job_problems(jobs: Iterable[Any], site: Site) -> list[str]:
    """What stops the jobs a run will run where the site is known before the first one: a CPU
    job no partition without GPUs holds (its CPUs are its threads), a GPU job gpu.require
    refuses on this machine. One line per rule, naming how many of its jobs; a rule without
    jobs in this run is never named. ``jobs``: Snakemake's jobs (``.rule.name``, ``.threads``,
    ``.input``), e.g. ``workflow.dag.needrun_jobs()`` in an ``onstart`` handler.
    """
    if site.local is not None and not site.require:
        return []  # a local run places every job (partition "local" where the file has none)
    site.notices.silent = True  # a job's threads come from its resources: said here instead
    rule_fits: dict[str, bool] = {}  # CPU rule -> whether its declared threads fit (fewer always do)
    found: dict[str, list] = {}  # rule -> [problem, jobs]
    for job in jobs:
        rule = job.rule.name
        need = site.rule_needs.get(rule)
        if need is None:
            continue
        if need.gpus and not site.cpu_only:
            problem = site.require_problem(need, None if need.is_static else _known_size(job.input))
        elif site.local is None:
            if rule not in rule_fits:
                declared = _declared_threads(job.rule)
                rule_fits[rule] = declared is not None and _cpu_job_problem(site, need, declared) is None
            problem = None if rule_fits[rule] else _cpu_job_problem(site, need, job.threads)
        else:
            continue
        if problem:
            found.setdefault(rule, [problem, 0])[1] += 1
    return [f"{problem} ({count} job{'s' if count > 1 else ''} of this run)" for problem, count in found.values()]


def _declared_threads(rule: Any) -> int | None:
    """A rule's ``threads:`` where it is a number (Snakemake keeps it as resource ``_cores``);
    a job gets as many or fewer (``--cores``, ``--max-threads``)."""
    resources = getattr(rule, "resources", None)
    declared = getattr(resources.get("_cores"), "value", None) if resources is not None else None
    return declared if isinstance(declared, int) and not isinstance(declared, bool) else None


def _cpu_job_problem(site: Site, need: GpuNeed, threads: int) -> str | None:
    try:  # a CPU job's VRAM need, also one that grows with its input, does not place it
        site.place(_named(need, need.rule, threads), 1, None if need.is_static else 0.0)
    except PlacementError as error:
        return str(error)
    return None


def _known_size(input: Any) -> float | None:
    """A job's input size (MB) where its inputs exist, else None."""
    try:
        return input_files_mb(input)
    except (FileNotFoundError, OSError):
        return None


def _placement_resource(
    site: Site, need: GpuNeed, pick: Callable[[Placement], Any], group: Any = None
) -> Callable[..., Any]:
    """A Snakemake resource callable; Snakemake passes only the parameters named here."""
    if group is not None and not need.is_static:
        raise ValueError("a balanced group needs a fixed vram_gb (its jobs are planned together)")

    if need.is_static:

        @_resource_callable
        def static_resource(
            wildcards: Any, attempt: int = 1, rulename: str | None = None, threads: int | None = None
        ) -> Any:
            return pick(_placed(site, need, group, wildcards, attempt, rulename, threads, None))

        return static_resource

    @_resource_callable
    def sized_resource(
        wildcards: Any, input: Any, attempt: int = 1, rulename: str | None = None, threads: int | None = None
    ) -> Any:
        return pick(_placed(site, need, group, wildcards, attempt, rulename, threads, input_files_mb(input)))

    return sized_resource


def _usage_resource(site: Site, need: GpuNeed, group: Any = None) -> Callable[..., str]:
    """``resources.gpu_usage``: what the plan gave this job, for its usage record
    (``--usage-job``): rule, wildcards, attempt, model, partition, VRAM, runtime, input size.
    A string resource: Snakemake schedules nothing by it; it is evaluated once inputs exist."""

    @_resource_callable
    def gpu_usage(
        wildcards: Any, input: Any, attempt: int = 1, rulename: str | None = None, threads: int | None = None
    ) -> str:
        size = input_files_mb(input)
        placed = _placed(site, need, group, wildcards, attempt, rulename, threads, size)
        effective = site.effective_need(_named(need, rulename), size)
        vram = effective.at_input_size(size).vram_gb if not effective.is_static else effective.vram_gb
        job = ",".join(f"{k}={v}" for k, v in wildcards.items())
        fields = {
            "rule": rulename or need.rule or "",
            "job": job,
            "attempt": attempt,
            "model": placed.gpu_model or "",
            "partition": placed.partition,
            "vram_gb": round(float(vram), 3),
            "runtime": effective.runtime or "",
            "input_mb": round(size, 3),
        }
        if attempt > 1:  # why the attempt before failed: it decided this one's GPU
            fields["after"] = site.retry(rulename or need.rule, wildcards, attempt).after
        return ";".join(f"{k}={v}" for k, v in fields.items())

    return gpu_usage


def _vram_resource(site: Site, need: GpuNeed) -> int | Callable[..., int]:
    """VRAM per GPU in whole GB (Snakemake rounds floats; round up instead): the
    calibrated need where the site has one for the rule, else the declared one."""
    calibrated = bool(site.needs) and need.gpus > 0
    if need.is_static and not calibrated:
        assert not callable(need.vram_gb)
        return math.ceil(need.vram_gb)

    if need.is_static:

        @_resource_callable
        def static_vram_gb(wildcards: Any, rulename: str | None = None) -> int:
            return math.ceil(site.effective_need(_named(need, rulename)).vram_gb)

        return static_vram_gb

    @_resource_callable
    def vram_gb(wildcards: Any, input: Any, rulename: str | None = None) -> int:
        size = input_files_mb(input)
        named = site.effective_need(_named(need, rulename), size)
        sized = named.at_input_size(size)
        assert not callable(sized.vram_gb)
        return math.ceil(sized.vram_gb)

    return vram_gb


def _runtime_resource(site: Site, need: GpuNeed, declared: Any) -> Any:
    """The runtime limit (minutes): the calibrated one where the site measured the rule
    (a GPU job with a fixed declared limit), else the declared limit."""
    if not (site.needs and need.gpus and isinstance(declared, int)):
        return declared

    @_resource_callable
    def runtime(wildcards: Any, rulename: str | None = None) -> int:
        return site.effective_need(_named(need, rulename)).runtime or declared

    return runtime


@functools.lru_cache(maxsize=4096)  # one per rule and thread count: jobs of a rule share it
def _named(need: GpuNeed, rulename: str | None, threads: int | None = None) -> GpuNeed:
    """The need of one job: named after its rule, its CPUs its threads unless given."""
    if rulename and not need.rule:
        need = replace(need, rule=rulename)
    if threads is not None and need.cpus is None:
        need = replace(need, cpus=threads)
    return need

"""The ``balanced`` policy: place all GPU jobs at once to finish soonest (or cheapest).

Estimate model, shared by the planner and by :func:`estimate_assignment`: a job with
``g`` GPUs and ``h`` hours on T4-equivalent GPUs takes ``h / speed`` hours on a pool
(one GRES type in one partition) and occupies ``g`` of its GPUs. A pool's busy time is
its GPU-hours over its GPU count (``max_gpu``, see :mod:`gpubio.gpu.inventory`), but
never less than its longest job. The makespan is the largest busy time; the cost is
GPU-hours times the model's relative hourly cost (T4-hours).

Identical jobs form one class, so the integer program has one count per class and pool,
whatever the number of jobs: 1,000 shards solve as fast as 10.
"""

from __future__ import annotations

import heapq
import math
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import pulp

from .catalogue import Catalogue
from .inventory import Inventory
from .placement import (
    GpuNeed,
    GpuPool,
    Placement,
    PlacementError,
    gpu_pools,
    place_gpu_job,
    pool_fits,
)

__all__ = [
    "BalanceJob",
    "BalancedGroup",
    "BalancedPlan",
    "estimate_assignment",
    "plan_balanced",
    "schedule_makespan",
]

Objective = Literal["makespan", "cost"]
PoolKey = tuple[str, str]  # (partition, GRES type)


@dataclass(frozen=True)
class BalanceJob:
    """One GPU job: its need (static VRAM) and runtime on T4-equivalent GPUs, in hours."""

    id: str
    need: GpuNeed
    t4_hours: float

    def __post_init__(self) -> None:
        if not self.need.is_static:
            raise ValueError(f"job {self.id!r}: evaluate the VRAM need first (need.at_input_size)")
        if self.need.gpus < 1:
            raise ValueError(f"job {self.id!r}: the balanced plan is for GPU jobs (gpus >= 1)")
        if not (math.isfinite(self.t4_hours) and self.t4_hours > 0):
            raise ValueError(f"job {self.id!r}: t4_hours must be > 0, got {self.t4_hours!r}")


@dataclass(frozen=True)
class BalancedPlan:
    """Per-job placements plus the estimates they were chosen by."""

    assignment: Mapping[str, Placement]
    makespan_h: float
    cost: float  # T4-hours
    busy_h: Mapping[PoolKey, float]  # estimated busy time per used pool
    optimal: bool  # proven within the gap asked for; False if stopped by the time limit
    solve_s: float
    classes: int

    def counts(self) -> Counter[str]:
        """Jobs per partition."""
        return Counter(p.partition for p in self.assignment.values())


def _job_class(job: BalanceJob) -> tuple[object, ...]:
    # Everything placement and the estimate look at; the rule name and policy do not count.
    n = job.need
    return (
        n.gpus,
        n.vram_gb,
        n.min_compute_capability,
        n.cpus,
        n.mem_mb,
        n.runtime,
        job.t4_hours,
    )


def _pool_key(pool: GpuPool) -> PoolKey:
    return (pool.partition.name, pool.gres_type)


def plan_balanced(
    jobs: Sequence[BalanceJob],
    inventory: Inventory,
    catalogue: Catalogue,
    *,
    objective: Objective = "makespan",
    makespan_bound_h: float | None = None,
    time_limit_s: float = 5.0,
    gap: float = 0.001,
) -> BalancedPlan:
    """Assign jobs to pools by integer program (CBC, one thread).

    ``objective="makespan"``: shortest estimated makespan, then cheapest among those.
    ``objective="cost"``: cheapest plan whose makespan is within ``makespan_bound_h``,
    then shortest among those. ``time_limit_s`` bounds both solves together; ``gap``
    is the relative optimality gap accepted (closing the last fraction of a percent
    between whole-job plans and the fluid bound can take CBC minutes and buys nothing
    for an estimate).
    """
    started = time.perf_counter()
    if objective not in ("makespan", "cost"):
        raise ValueError(f"objective must be 'makespan' or 'cost', got {objective!r}")
    if objective == "cost" and makespan_bound_h is None:
        raise ValueError("objective='cost' needs makespan_bound_h")
    ids = [j.id for j in jobs]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"job ids must be unique; repeated: {dupes}")
    if not jobs:
        return BalancedPlan({}, 0.0, 0.0, {}, True, 0.0, 0)

    classes: dict[tuple[object, ...], list[BalanceJob]] = defaultdict(list)
    for job in jobs:
        classes[_job_class(job)].append(job)
    members = list(classes.values())
    pools = gpu_pools(inventory, catalogue)
    fitting = []
    for group in members:
        fit = [p for p in pools if pool_fits(group[0].need, p)]
        if not fit:
            place_gpu_job(group[0].need, inventory, catalogue)  # raises the full message
            raise PlacementError(f"job {group[0].id!r}: no pool fits")  # pragma: no cover
        fitting.append(fit)

    prob = pulp.LpProblem("gpubio_balance", pulp.LpMinimize)
    makespan = prob.add_variable("makespan", lowBound=0)
    count: dict[tuple[int, int], pulp.LpVariable] = {}
    used: dict[tuple[int, int], pulp.LpVariable] = {}
    pool_index = {_pool_key(p): k for k, p in enumerate(pools)}
    for c, (group, fit) in enumerate(zip(members, fitting, strict=True)):
        for pool in fit:
            k = pool_index[_pool_key(pool)]
            count[c, k] = prob.add_variable(f"n_{c}_{k}", 0, len(group), cat="Integer")
            used[c, k] = prob.add_variable(f"y_{c}_{k}", 0, 1, cat="Integer")
            prob += count[c, k] <= len(group) * used[c, k]
            # A pool is busy at least as long as its longest job.
            prob += makespan >= group[0].t4_hours / pool.model.speed * used[c, k]
        prob += pulp.lpSum(count[c, pool_index[_pool_key(p)]] for p in fit) == len(group)
    for k, pool in enumerate(pools):
        terms = [
            count[c, k] * group[0].need.gpus * group[0].t4_hours / pool.model.speed
            for c, group in enumerate(members)
            if (c, k) in count
        ]
        if terms:
            prob += pulp.lpSum(terms) <= pool.partition.max_gpu * makespan
    cost = pulp.lpSum(
        count[c, k] * members[c][0].need.gpus * members[c][0].t4_hours / pools[k].model.speed * pools[k].model.cost
        for (c, k) in count
    )

    first, second = (makespan, cost) if objective == "makespan" else (cost, makespan)
    if objective == "cost":
        prob += makespan <= makespan_bound_h
    optimal = _solve(prob, first, _cbc(time_limit_s, gap))
    if optimal is None:
        raise PlacementError(
            f"no plan finishes within {makespan_bound_h:g} h; "
            f"plan with objective='makespan' to see the shortest possible"
        )
    best = pulp.value(first)
    # Second pass keeps the first optimum (to a hair) and improves the other measure.
    prob += first <= best * (1 + 1e-6) + 1e-9
    left = max(0.5, time_limit_s - (time.perf_counter() - started))
    optimal = (_solve(prob, second, _cbc(left, gap)) or False) and optimal

    assignment: dict[str, Placement] = {}
    for c, (group, fit) in enumerate(zip(members, fitting, strict=True)):
        queue = iter(group)
        for pool in fit:
            n = round(count[c, pool_index[_pool_key(pool)]].value() or 0)
            for _ in range(n):
                job = next(queue)
                assignment[job.id] = Placement(
                    partition=pool.partition.name,
                    gpus=job.need.gpus,
                    gpu_model=pool.gres_type,
                    model=pool.model,
                )
        # Guard against solver rounding: any job left over goes to its fastest pool.
        for job in queue:
            pool = max(fit, key=lambda p: p.model.speed)
            assignment[job.id] = Placement(pool.partition.name, job.need.gpus, pool.gres_type, pool.model)

    span, total, busy = estimate_assignment(jobs, assignment, inventory)
    return BalancedPlan(
        assignment=assignment,
        makespan_h=span,
        cost=total,
        busy_h=busy,
        optimal=optimal,
        solve_s=time.perf_counter() - started,
        classes=len(members),
    )


def _cbc(time_limit_s: float, gap: float) -> pulp.LpSolver:
    """CBC, quiet and on one thread: a CBC on PATH, else the one bundled with pulp."""
    options = dict(msg=False, timeLimit=time_limit_s, threads=1, gapRel=gap)
    system = pulp.COIN_CMD(**options)
    if system.available():
        return system
    # pulp 3.3 flags its bundled CBC as deprecated for 4.0 but still ships it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(**options)


def _solve(
    prob: pulp.LpProblem,
    objective: pulp.LpAffineExpression | pulp.LpVariable,
    solver: pulp.LpSolver,
) -> bool | None:
    """Solve for ``objective``; None if infeasible, else whether proven optimal."""
    prob.setObjective(objective)
    prob.solve(solver)
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return None
    return bool(prob.sol_status == pulp.LpSolutionOptimal)


def estimate_assignment(
    jobs: Sequence[BalanceJob],
    assignment: Mapping[str, Placement],
    inventory: Inventory,
) -> tuple[float, float, dict[PoolKey, float]]:
    """(makespan h, cost T4-hours, busy h per pool) of any assignment, by the module's model."""
    gpu_hours: dict[PoolKey, float] = defaultdict(float)
    longest: dict[PoolKey, float] = defaultdict(float)
    speed: dict[PoolKey, float] = {}
    cost = 0.0
    for job in jobs:
        placed = assignment[job.id]
        assert placed.model is not None and placed.gpu_model is not None
        key = (placed.partition, placed.gpu_model)
        hours = job.t4_hours / placed.model.speed
        gpu_hours[key] += job.need.gpus * hours
        longest[key] = max(longest[key], hours)
        speed[key] = placed.model.speed
        cost += job.need.gpus * hours * placed.model.cost
    busy = {key: max(gpu_hours[key] / inventory[key[0]].max_gpu, longest[key]) for key in gpu_hours}
    return max(busy.values(), default=0.0), cost, busy


def schedule_makespan(
    jobs: Sequence[BalanceJob],
    assignment: Mapping[str, Placement],
    inventory: Inventory,
) -> float:
    """Makespan of a longest-job-first list schedule of whole jobs on each pool's GPUs.

    A check on the fluid estimate: jobs are indivisible, so e.g. 21 one-hour jobs on
    8 GPUs take 3 h, not 2.6 h.
    """
    by_pool: dict[PoolKey, list[tuple[float, int]]] = defaultdict(list)
    for job in jobs:
        placed = assignment[job.id]
        assert placed.model is not None and placed.gpu_model is not None
        by_pool[(placed.partition, placed.gpu_model)].append((job.t4_hours / placed.model.speed, job.need.gpus))
    span = 0.0
    for (partition, _), work in by_pool.items():
        free = [0.0] * inventory[partition].max_gpu  # when each GPU is next free
        heapq.heapify(free)
        for hours, gpus in sorted(work, reverse=True):
            taken = [heapq.heappop(free) for _ in range(gpus)]
            end = max(taken) + hours
            for _ in taken:
                heapq.heappush(free, end)
            span = max(span, end)
    return span


class BalancedGroup:
    """All jobs of one rule, placed together by :func:`plan_balanced`.

    ``jobs`` maps a job key to its estimated hours on a T4 (or is a function returning
    that mapping, called once when the plan is first needed); ``key`` turns a job's
    wildcards into its key. A rule uses it as
    ``resources: **gpu_resources(vram_gb=8, policy="balanced", group=BalancedGroup(...))``.
    The plan is made once per site (so a changed inventory re-plans); a retry after GPU
    out-of-memory moves the job from its planned GPU to the next larger one, as any other
    job does.
    """

    def __init__(self, jobs, key, objective: Objective = "makespan", makespan_bound_h: float | None = None):
        self._jobs = jobs
        self._key = key
        self._objective = objective
        self._bound = makespan_bound_h
        self._plans: dict[int, tuple[object, BalancedPlan]] = {}

    def plan(self, need: GpuNeed, site) -> BalancedPlan:
        cached = self._plans.get(id(site))
        if cached is None or cached[0] is not site:
            jobs = self._jobs() if callable(self._jobs) else self._jobs
            balance_jobs = [BalanceJob(str(k), need, float(h)) for k, h in jobs.items()]
            plan = plan_balanced(
                balance_jobs,
                site.inventory,
                site.catalogue,
                objective=self._objective,
                makespan_bound_h=self._bound,
            )
            cached = self._plans[id(site)] = (site, plan)
        return cached[1]

    def place(self, need: GpuNeed, wildcards, attempt: int, site, larger: int = 0) -> Placement:
        """The group plan's placement of one job; ``larger`` steps to a larger GPU from there
        (one per GPU out-of-memory of its earlier attempts)."""
        from .placement import _POLICY_KEYS, escalate

        key = str(self._key(wildcards))
        plan = self.plan(need, site)
        if key not in plan.assignment:
            raise PlacementError(f"job {key!r} is not one of the jobs its balanced group was planned for")
        planned = plan.assignment[key]
        why = f"balanced group: the rule's jobs spread over the GPU types by an integer program ({self._objective})"
        if larger == 0:
            return replace(planned, attempt=attempt, why=why)
        pools = gpu_pools(site.inventory, site.catalogue)
        fitting = [p for p in pools if pool_fits(need, p)]
        start = next(p for p in fitting if (p.partition.name, p.gres_type) == (planned.partition, planned.gpu_model))
        chosen = escalate(fitting, start, larger, _POLICY_KEYS[need.policy])
        return Placement(
            chosen.partition.name,
            need.gpus,
            chosen.gres_type,
            chosen.model,
            attempt,
            f"{why}; {larger} step{'s' if larger > 1 else ''} larger after GPU out-of-memory",
        )

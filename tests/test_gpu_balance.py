"""The balanced policy: all GPU jobs placed at once by integer program."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpubio.gpu import (
    BUILTIN_CATALOGUE,
    GpuNeed,
    PlacementError,
    load_inventory,
    place_gpu_job,
)
from gpubio.gpu.balance import (
    BalanceJob,
    estimate_assignment,
    plan_balanced,
    schedule_makespan,
)

PARTITIONS = Path(__file__).resolve().parents[1] / "profiles" / "slurm-gpu" / "partitions.yaml"
CAT = BUILTIN_CATALOGUE


@pytest.fixture
def inv():
    # gpu-t4: 8 x T4 (speed 1), gpu-a100: 4 x A100-40 (speed 4), gpu-h100: 2 x H100 (speed 7)
    return load_inventory(PARTITIONS)


def shards(n: int, hours: float = 1.0, prefix: str = "shard", **need) -> list[BalanceJob]:
    return [BalanceJob(f"{prefix}{i}", GpuNeed(vram_gb=8, **need), hours) for i in range(n)]


def test_100_equal_shards_spread_over_all_partitions(inv):
    jobs = shards(100)
    plan = plan_balanced(jobs, inv, CAT)
    # capacity in T4-equivalents: 8 + 16 + 14 = 38/h; 100 jobs -> 100/38 = 2.63 h at best
    assert dict(plan.counts()) == {"gpu-t4": 21, "gpu-a100": 42, "gpu-h100": 37}
    assert plan.makespan_h == pytest.approx(37 / 14)  # h100 pool is the last to finish
    assert plan.cost == pytest.approx(21 * 1.0 + 42 * 1.0 + 37 * 9 / 7)
    assert plan.optimal and plan.classes == 1
    assert set(plan.assignment) == {j.id for j in jobs}
    assert {p.gpu_model for p in plan.assignment.values()} == {"t4", "a100", "h100"}


def test_balanced_beats_cheapest_fit_and_fastest_only(inv):
    jobs = shards(100)
    balanced = plan_balanced(jobs, inv, CAT).assignment
    cheapest = {j.id: place_gpu_job(j.need, inv, CAT) for j in jobs}
    fastest = {j.id: place_gpu_job(GpuNeed(vram_gb=8, policy="fastest"), inv, CAT) for j in jobs}
    spans = {
        name: estimate_assignment(jobs, plan, inv)[0]
        for name, plan in (
            ("balanced", balanced),
            ("cheapest", cheapest),
            ("fastest", fastest),
        )
    }
    assert spans == pytest.approx({"balanced": 37 / 14, "cheapest": 100 / 8, "fastest": 100 / 14})
    # Whole jobs on real GPUs (list schedule): 3 h vs 13 h vs 50 rounds of 1/7 h.
    assert schedule_makespan(jobs, balanced, inv) == pytest.approx(3.0)
    assert schedule_makespan(jobs, cheapest, inv) == pytest.approx(13.0)
    assert schedule_makespan(jobs, fastest, inv) == pytest.approx(50 / 7)


def test_multi_gpu_jobs_use_gpu_hours(inv):
    # 60 GB fits only the H100s; 2-GPU jobs fill the node: 6 jobs x 2 GPUs x 1 h / 7 / 2 GPUs
    jobs = [BalanceJob(f"big{i}", GpuNeed(gpus=2, vram_gb=60), 1.0) for i in range(6)]
    plan = plan_balanced(jobs, inv, CAT)
    assert dict(plan.counts()) == {"gpu-h100": 6}
    assert plan.makespan_h == pytest.approx(6 / 7)
    assert schedule_makespan(jobs, plan.assignment, inv) == pytest.approx(6 / 7)


def test_one_long_job_goes_to_the_fastest_gpu(inv):
    # The fluid estimate alone would spread one 14 h job thinly; a job is indivisible.
    plan = plan_balanced([BalanceJob("long", GpuNeed(vram_gb=8), 14.0)], inv, CAT)
    assert plan.assignment["long"].partition == "gpu-h100"
    assert plan.makespan_h == pytest.approx(2.0)


def test_mixed_classes_respect_each_need(inv):
    jobs = shards(40) + [BalanceJob(f"wide{i}", GpuNeed(vram_gb=30), 2.0) for i in range(20)]
    plan = plan_balanced(jobs, inv, CAT)
    assert plan.classes == 2
    assert all(plan.assignment[f"wide{i}"].partition != "gpu-t4" for i in range(20))
    span, cost, busy = estimate_assignment(jobs, plan.assignment, inv)
    assert (span, cost) == pytest.approx((plan.makespan_h, plan.cost))
    # 40 + 20 x 2 = 80 T4-hours over 38 T4-equivalents/h, rounded up to whole jobs
    assert 80 / 38 <= plan.makespan_h <= 80 / 38 * 1.1


def test_cost_objective_under_a_makespan_bound(inv):
    jobs = shards(100)
    plan = plan_balanced(jobs, inv, CAT, objective="cost", makespan_bound_h=13.0)
    # T4 and A100-40 cost the same per job (1 T4-hour); the H100 costs 9/7 per job
    assert plan.cost == pytest.approx(100.0)
    assert "gpu-h100" not in plan.counts()
    assert plan.makespan_h == pytest.approx(67 / 16)  # the quickest of the cheapest plans
    tight = plan_balanced(jobs, inv, CAT, objective="cost", makespan_bound_h=3.0)
    assert tight.makespan_h <= 3.0 and tight.cost > plan.cost
    with pytest.raises(PlacementError, match="no plan finishes within 2 h"):
        plan_balanced(jobs, inv, CAT, objective="cost", makespan_bound_h=2.0)


def test_removing_a_partition_replans(inv):
    plan = plan_balanced(shards(100), inv.without("gpu-h100"), CAT)
    assert dict(plan.counts()) == {"gpu-t4": 33, "gpu-a100": 67}
    assert plan.makespan_h == pytest.approx(67 / 16)


def test_1000_jobs_in_three_classes_reach_the_fluid_bound(inv):
    # how fast this solves is measured in bench/placement.py, not asserted here
    jobs = (
        shards(600)
        + shards(300, hours=2.0, prefix="b")
        + [BalanceJob(f"c{i}", GpuNeed(gpus=2, vram_gb=30), 0.5) for i in range(100)]
    )
    plan = plan_balanced(jobs, inv, CAT)
    assert plan.classes == 3 and len(plan.assignment) == 1000
    # within 1 % of the fluid lower bound: 600 + 600 + 100 T4-GPU-hours / 38 per hour
    assert plan.makespan_h == pytest.approx(1300 / 38, rel=0.01)


def test_bad_input(inv):
    with pytest.raises(PlacementError, match="Largest GPU available: H100"):
        plan_balanced([BalanceJob("huge", GpuNeed(vram_gb=500), 1.0)], inv, CAT)
    with pytest.raises(ValueError, match="unique"):
        plan_balanced(shards(2) + shards(1), inv, CAT)
    with pytest.raises(ValueError, match="evaluate the VRAM need first"):
        BalanceJob("x", GpuNeed(vram_gb=lambda mb: mb), 1.0)
    with pytest.raises(ValueError, match="gpus >= 1"):
        BalanceJob("x", GpuNeed(gpus=0), 1.0)
    with pytest.raises(ValueError, match="needs makespan_bound_h"):
        plan_balanced(shards(2), inv, CAT, objective="cost")
    assert plan_balanced([], inv, CAT).makespan_h == 0.0

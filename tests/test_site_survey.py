"""scripts/partitions-from-sinfo: a partitions file drafted from SLURM's own description of a site."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest
import yaml

from conftest import REPO
from gpubio.gpu import load_catalogue, load_inventory, place_gpu_job
from gpubio.gpu.catalogue import CatalogueError
from gpubio.gpu.placement import GpuNeed, PlacementError, gpu_pools
from gpubio.gpu.site_survey import draft_inventory, parse_gres, render, slurm_minutes, survey

SCRIPT = REPO / "scripts" / "partitions-from-sinfo"
SHIPPED = REPO / "profiles" / "slurm-gpu" / "partitions.yaml"

# A site unlike the test cluster: two GPU types on one node, an unknown type, GPUs without a
# type, a node in two partitions, partition limits below what the nodes have.
NODES = """\
NodeName=big01 Arch=x86_64 CPUTot=96 RealMemory=1024000 Gres=gpu:a100_80g:4(S:0-1),gpu:l40s:2,shard:l40s:8 OS=Linux 6.1 #1 SMP Partitions=gpu-mixed,gpu-long State=IDLE
NodeName=big02 Arch=x86_64 CPUTot=64 RealMemory=512000 Gres=gpu:a100_80g:2 OS=Linux 6.1 #1 SMP Partitions=gpu-mixed State=MIXED
NodeName=ws01 CPUTot=16 RealMemory=64000 Gres=gpu:rtx6000:2 Partitions=gpu-ws State=IDLE
NodeName=old01 CPUTot=8 RealMemory=32000 Gres=gpu:4 Partitions=gpu-old State=IDLE
NodeName=cpu[01-02] CPUTot=128 RealMemory=256000 Gres=(null) Partitions=short State=IDLE
"""
PARTITIONS = """\
PartitionName=gpu-mixed MaxTime=2-00:00:00 MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED Nodes=big[01-02] State=UP
PartitionName=gpu-long MaxTime=7-00:00:00 MaxCPUsPerNode=32 MaxMemPerNode=256000 Nodes=big01 State=UP
PartitionName=gpu-ws MaxTime=12:00:00 MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED Nodes=ws01 State=UP
PartitionName=gpu-old MaxTime=UNLIMITED MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED Nodes=old01 State=UP
PartitionName=short MaxTime=30:00 MaxCPUsPerNode=UNLIMITED MaxMemPerNode=UNLIMITED Nodes=cpu[01-02] State=UP
"""


def test_gres_and_time_limits_are_read_as_slurm_writes_them():
    assert parse_gres("gpu:a100_80g:4(S:0-1),gpu:l40s:2,shard:l40s:8") == {"a100_80g": 4, "l40s": 2}
    assert parse_gres("gpu:4") == {"": 4} and parse_gres("(null)") == {}
    assert [slurm_minutes(t) for t in ("2-00:00:00", "12:00:00", "30:00", "90", "UNLIMITED")] == [
        2880,
        720,
        30,
        90,
        None,
    ]


def test_draft_of_a_mixed_site(tmp_path):
    draft = draft_inventory(survey(NODES, PARTITIONS), load_catalogue(), {"rtx6000": "l40s"})
    parts = draft.partitions
    assert list(parts) == ["gpu-mixed", "gpu-long", "gpu-ws", "gpu-old", "short"]
    # GPUs per node: the larger node (4 + 2); limits: the larger node, capped by the partition
    assert parts["gpu-mixed"] == {
        "max_gpu": 6,
        "available_gpu_models": ["a100_80g", "l40s"],
        "max_cpus_per_task": 96,
        "max_mem_mb": 1024000,
        "max_runtime": "2d",
    }
    assert (parts["gpu-long"]["max_cpus_per_task"], parts["gpu-long"]["max_mem_mb"]) == (32, 256000)
    assert parts["gpu-long"]["max_runtime"] == "7d" and parts["gpu-ws"]["max_runtime"] == "12h"
    assert parts["short"] == {"max_gpu": 0, "max_cpus_per_task": 128, "max_mem_mb": 256000, "max_runtime": "30m"}
    assert parts["gpu-old"]["max_gpu"] == 0 and "CHECK" in draft.notes[("gpu-old", "max_gpu")]
    assert draft.gpu_models == {"gpu-ws": {"rtx6000": "l40s"}}  # only what the name does not say

    text = render(draft, "test")
    assert yaml.safe_load(text) == {"partitions": parts, "gpu_models": draft.gpu_models}
    path = tmp_path / "partitions.yaml"
    path.write_text(text)
    inventory = load_inventory(path)
    pools = {(p.partition.name, p.gres_type): p.model.name for p in gpu_pools(inventory, load_catalogue())}
    assert pools == {
        ("gpu-mixed", "a100_80g"): "A100-80",
        ("gpu-mixed", "l40s"): "L40S",
        ("gpu-long", "a100_80g"): "A100-80",
        ("gpu-long", "l40s"): "L40S",
        ("gpu-ws", "rtx6000"): "L40S",
    }


def test_unknown_gres_type_is_marked_and_stops_gpubio_with_its_name(tmp_path):
    draft = draft_inventory(survey(NODES, PARTITIONS), load_catalogue(), {})
    text = render(draft, "test")
    line = next(li for li in text.splitlines() if "rtx6000" in li)
    assert "CHECK" in line and "--gpu-model rtx6000=" in line
    path = tmp_path / "partitions.yaml"
    path.write_text(text)
    with pytest.raises(CatalogueError, match="rtx6000"):
        gpu_pools(load_inventory(path), load_catalogue())


def placements(inventory, catalogue) -> dict:
    """Where each of a grid of GPU needs goes (or that none fits)."""
    found = {}
    for vram, cc, gpus, policy in itertools.product(
        (4, 12, 16, 24, 30, 40, 60, 80, 100), (0, 8.0, 9.0), (1, 2, 4, 8), ("cheapest", "fastest")
    ):
        need = GpuNeed(gpus=gpus, vram_gb=vram, min_compute_capability=cc, policy=policy)
        try:
            p = place_gpu_job(need, inventory, catalogue)
            found[need] = (p.partition, p.gpu_model, p.model.name)
        except PlacementError:
            found[need] = None
    return found


def test_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--gpu-model" in proc.stdout and "partitions.yaml" in proc.stdout


@pytest.mark.slurm
def test_draft_from_the_test_cluster_places_jobs_as_the_shipped_file(slurm_cluster, tmp_path):
    out = tmp_path / "partitions.yaml"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--gpu-model", "a100=a100-40", "--out", str(out)],
        capture_output=True,
        text=True,
        env=slurm_cluster.env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "0 line(s) marked CHECK" in proc.stderr
    drafted, shipped = load_inventory(out), load_inventory(SHIPPED)
    assert drafted.names == ("gpu-t4", "gpu-a100", "gpu-h100", "cpu")
    assert set(drafted.names) == set(shipped.names)
    for name in shipped.names:
        assert (drafted[name].max_gpu, drafted[name].gpu_types) == (shipped[name].max_gpu, shipped[name].gpu_types)
    catalogue = load_catalogue()
    ours, theirs = placements(drafted, catalogue), placements(shipped, catalogue)
    assert ours == theirs
    assert sum(p is not None for p in ours.values()) > 50  # and every GPU partition gets some
    assert {p[0] for p in ours.values() if p} == {"gpu-t4", "gpu-a100", "gpu-h100"}

    # without the hint the bare `a100` is marked and read as the 80 GB card
    unhinted = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=slurm_cluster.env, timeout=60
    )
    assert unhinted.returncode == 0, unhinted.stderr
    a100_line = next(li for li in unhinted.stdout.splitlines() if "[a100]" in li)
    assert "CHECK" in a100_line and "--gpu-model a100=a100-40" in a100_line
    (tmp_path / "unhinted.yaml").write_text(unhinted.stdout)
    need = GpuNeed(vram_gb=60)
    assert place_gpu_job(need, load_inventory(tmp_path / "unhinted.yaml"), catalogue).partition == "gpu-a100"
    assert place_gpu_job(need, shipped, catalogue).partition == "gpu-h100"  # the shipped A100s have 40 GB

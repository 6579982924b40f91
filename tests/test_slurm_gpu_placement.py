"""The SLURM integration test: a GPU workflow through profiles/slurm-gpu on a real
(throw-away) SLURM cluster with fake GPUs. Every job must run in the partition the plan
predicted, see the GPUs SLURM gave it, and a job failing with CUDA out-of-memory on a T4
must be retried on the next larger GPU.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import BIN, GPU_WORKFLOW, REPO, TEST_PARTITIONS, gpu_plan

pytestmark = pytest.mark.slurm


def test_gpu_jobs_land_where_the_plan_says(slurm_cluster, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(TEST_PARTITIONS)}}))

    plan, _ = gpu_plan(tmp_path, config)
    expected = {(r.wildcards.replace("shard=", "shard") or r.rule): r for r in plan.itertuples()}

    # the shipped profile, as a user with a shared virtual environment runs it (no --sdm)
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(GPU_WORKFLOW),
        "--directory",
        str(tmp_path),
        "--profile",
        str(REPO / "profiles" / "slurm-gpu"),
        "--configfile",
        str(config),
        "--slurm-partition-config",
        str(TEST_PARTITIONS),
        # this cluster has no accounting database: ask squeue, early and often
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
        "--retries",
        "1",
        "--jobs",
        "8",
        "--latency-wait",
        "5",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=slurm_cluster.env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:] + slurm_cluster.logs()

    ran = {}
    for path in sorted((tmp_path / "where").glob("*.json")):
        ran[path.stem] = json.loads(path.read_text())
    assert set(ran) == set(expected), (set(ran), set(expected))
    for name, info in ran.items():
        row = expected[name]
        if name == "oom":
            continue
        assert info["slurm_job_partition"] == row.partition, name
        if row.gpus:
            devices = info["cuda_visible_devices"].split(",")
            assert len(devices) == row.gpus, (name, info)
            assert info["backend"] == "cuda" and len(info["devices"]) == row.gpus  # SLURM's devices were used
        else:
            assert info["cuda_visible_devices"] is None and info["backend"] == "cpu"
    # balanced shards really were spread over more than one partition
    assert len({ran[n]["slurm_job_partition"] for n in ran if n.startswith("shard")}) >= 2
    # escalation: planned on a T4 (attempt 1), failed with CUDA OOM, ran on the next larger GPU
    assert expected["oom"].partition == "gpu-t4"
    assert ran["oom"]["slurm_job_partition"] == "gpu-a100"

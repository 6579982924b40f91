"""The SLURM integration test: a GPU workflow through profiles/slurm-gpu on a real
(throw-away) SLURM cluster with fake GPUs. Every job must run in the partition the plan
predicted, see the GPUs SLURM gave it; a job failing with CUDA out-of-memory on a T4 must be
retried on the next larger GPU, a job failing otherwise on a T4 again. With gpu.spread a job
sent to two partitions starts in the second while the first is drained.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import BIN, GPU_WORKFLOW, REPO, TEST_PARTITIONS, gpu_plan

pytestmark = pytest.mark.slurm


def run_on_cluster(cluster, tmp_path, config, *targets: str) -> subprocess.CompletedProcess:
    """The test workflow through the shipped profile, as a user with a shared virtual
    environment runs it (no --sdm)."""
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
        *targets,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=cluster.env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:] + cluster.logs()
    return proc


def test_gpu_jobs_land_where_the_plan_says(slurm_cluster, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(TEST_PARTITIONS)}}))

    plan, _ = gpu_plan(tmp_path, config)
    expected = {(r.wildcards.replace("shard=", "shard") or r.rule): r for r in plan.itertuples()}
    run_on_cluster(slurm_cluster, tmp_path, config)

    ran = {}
    for path in sorted((tmp_path / "where").glob("*.json")):
        ran[path.stem] = json.loads(path.read_text())
    assert set(ran) == set(expected), (set(ran), set(expected))
    for name, info in ran.items():
        row = expected[name]
        if name in ("oom", "flaky"):
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
    # escalation: planned on a T4 (attempt 1), failed with CUDA OOM, ran on the next larger GPU;
    # a job that failed for another reason ran again on a T4
    assert expected["oom"].partition == expected["flaky"].partition == "gpu-t4"
    assert ran["oom"]["slurm_job_partition"] == "gpu-a100"
    assert ran["flaky"]["slurm_job_partition"] == "gpu-t4"
    retries = {
        row.split("\t")[0]: row.split("\t") for row in (tmp_path / "logs" / "gpu_retries.tsv").read_text().splitlines()
    }
    assert retries["oom"][2:5] == ["2", "oom", "1"] and retries["flaky"][2:5] == ["2", "other", "0"]
    assert "not for GPU memory (logs/flaky.log reports no GPU out-of-memory)" in retries["flaky"][5]


def test_a_spread_job_starts_in_its_second_partition_while_the_first_is_drained(slurm_cluster, tmp_path):
    """30 GB fits the A100-40 and the H100: with gpu.spread the job goes to `-p gpu-a100,gpu-h100`
    with an untyped GPU request; with the A100 node drained, SLURM starts it on the H100."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(TEST_PARTITIONS), "spread": True}}))
    plan, _ = gpu_plan(tmp_path, config)
    planned = plan.set_index("rule").loc["spread"]
    assert (planned["partition"], planned["gpu_model"], planned["model"]) == ("gpu-a100,gpu-h100", "", "A100-40")

    node = slurm_cluster.partitions["gpu-a100"].name
    slurm_cluster.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=gpubio-spread-test"])
    try:
        proc = run_on_cluster(slurm_cluster, tmp_path, config, "where/spread.json")
    finally:
        slurm_cluster.run(["scontrol", "update", f"nodename={node}", "state=resume"])
    ran = json.loads((tmp_path / "where" / "spread.json").read_text())
    # a job sent to several partitions sees them all, the one it runs in first
    assert ran["slurm_job_partition"] == "gpu-h100,gpu-a100" and len(ran["cuda_visible_devices"].split(",")) == 1
    [jobid] = re.findall(r"submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    info = slurm_cluster.job_info(jobid)
    assert info["Partition"] == "gpu-h100" and info.get("TresPerJob") == "gres:gpu:1", info

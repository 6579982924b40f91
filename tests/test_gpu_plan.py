"""`gpubio plan` and the dry-run: every job's GPU model and partition, from the partitions file alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import BIN, GPU_WORKFLOW, REPO, TEST_PARTITIONS
from conftest import gpu_plan as plan
from gpubio.gpu.plan import parse_dry_run


def site_config(tmp_path: Path, partitions: dict | None = None) -> Path:
    path = TEST_PARTITIONS
    if partitions is not None:
        path = tmp_path / "partitions.yaml"
        path.write_text(yaml.safe_dump(partitions))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(path)}}))
    return config


def where(table: pd.DataFrame) -> dict[str, str]:
    return {(r.wildcards or r.rule): r.partition for r in table.itertuples()}


def test_plan_places_every_job_from_the_partitions_file(tmp_path):
    table, printed = plan(tmp_path, site_config(tmp_path))
    placed = where(table)
    assert placed["small"] == "gpu-t4"  # 8 GB fits the cheapest GPU
    assert placed["medium"] == "gpu-a100"  # 30 GB: not a 16 GB T4; A100-40 is the cheapest that fits
    assert placed["large"] == "gpu-h100"  # policy fastest
    assert placed["cpu"] == "cpu"
    assert placed["oom"] == "gpu-t4"  # attempt 1
    shards = [p for k, p in placed.items() if k.startswith("shard=")]
    assert len(shards) == 6 and set(shards) == {"gpu-a100", "gpu-h100"}  # balanced: spread, no slow T4
    row = table.set_index("rule").loc["large"]
    assert (row["gpus"], row["vram_gb"], row["model"]) == (2, 30, "H100")
    assert row["reserved_gpu_hours"] == round(2 * 5 / 60, 4)
    assert row["reserved_cost"] > row["reserved_gpu_hours"]  # an H100 hour costs more than a T4 hour
    assert "rule policy fastest" in row["why"] and "H100 7" in row["why"]
    totals = pd.read_csv(tmp_path / "plan.partitions.tsv", sep="\t").set_index("partition")
    assert totals.loc["gpu-t4", "jobs"] == 3 and totals.loc["cpu", "gpu_jobs"] == 0
    assert totals.drop(index="(total)")["jobs"].sum() == totals.loc["(total)", "jobs"] == len(table) == 13
    assert "per partition, expected against reserved:" in printed


def test_plan_after_calibration_shows_declared_and_calibrated_side_by_side(tmp_path):
    """Rule `medium` declares 30 GB (an A100); its past runs used 3 GB: after `gpubio calibrate`
    the plan puts it on a T4 and shows the declared A100 beside it, with both totals."""
    import json

    for i, size in enumerate([0.001, 0.002, 0.003]):
        record = {
            "rule": "medium",
            "backend": "cuda",
            "gpus": 1,
            "peak_vram_gb": 3.0,
            "device_model": "NVIDIA A100-SXM4-40GB",
            "device_vram_gb": 40.0,
            "input_size_mb": size,
            "wall_s": 120 + i,
        }
        (tmp_path / "past" / "benchmarks").mkdir(parents=True, exist_ok=True)
        (tmp_path / "past" / "benchmarks" / f"medium{i}.gpu.json").write_text(json.dumps(record))
    needs = tmp_path / "gpu_needs.yaml"
    proc = subprocess.run(
        [sys.executable, "-m", "gpubio", "calibrate", str(tmp_path / "past"), "--out", str(needs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    config = site_config(tmp_path)
    before, _ = plan(tmp_path, config)
    settings = yaml.safe_load(config.read_text())
    settings["gpu"]["needs"] = str(needs)
    config.write_text(yaml.safe_dump(settings))
    after, printed = plan(tmp_path, config)
    medium = after.set_index("rule").loc["medium"]
    assert before.set_index("rule").loc["medium", "gpu_model"] == "a100"
    assert (medium["declared_gpu_model"], medium["declared_vram_gb"]) == ("a100", 30)
    assert (medium["gpu_model"], medium["vram_gb"]) == ("t4", 4)  # 3 GB + 20 % margin, rounded up
    assert medium["reserved_min"] == 3  # 2 min measured + margin, instead of the declared 5
    # expected: the median of the measured runs (121 s on a 40 GB A100, speed 4: 8.07
    # T4-minutes), on the T4 it goes to now
    assert medium["expected_from"] == "calibrated" and float(medium["expected_min"]) == pytest.approx(8.07, abs=0.01)
    small = after.set_index("rule").loc["small"]
    assert small["gpu_model"] == small["declared_gpu_model"] == "t4"  # no records: declared need
    assert small["expected_from"] == "estimate"
    assert after["reserved_cost"].sum() < after["declared_reserved_cost"].sum()
    assert "declared needs against calibrated" in printed and "medium" in printed.split("declared needs")[1]


def test_inventory_change_replaces_jobs_without_touching_rules(tmp_path):
    partitions = yaml.safe_load(TEST_PARTITIONS.read_text())
    del partitions["partitions"]["gpu-h100"]
    table, _ = plan(tmp_path, site_config(tmp_path, partitions))
    placed = where(table)
    assert placed["large"] == "gpu-a100"  # the fastest GPU left
    assert "gpu-h100" not in set(placed.values())
    assert placed["small"] == "gpu-t4"


def test_plan_of_a_site_without_cpu_partitions_names_where_cpu_jobs_go_and_why(tmp_path):
    partitions = yaml.safe_load(TEST_PARTITIONS.read_text())
    del partitions["partitions"]["cpu"]
    table, printed = plan(tmp_path, site_config(tmp_path, partitions))
    assert where(table)["cpu"] == "gpu-t4"  # the cheapest GPUs, not the partition with the fewest
    totals = pd.read_csv(tmp_path / "plan.partitions.tsv", sep="\t", keep_default_na=False).set_index("partition")
    assert totals.loc["gpu-t4", "note"].startswith("takes CPU jobs: the site has no partition without GPUs")
    assert (totals.drop(index="gpu-t4")["note"] == "").all()
    assert f"{tmp_path / 'partitions.yaml'} has no partition without GPUs (max_gpu: 0), so CPU jobs go to 'gpu-t4'" in (
        printed
    )


def test_dry_run_with_the_cluster_profile_shows_model_and_partition(tmp_path):
    config = site_config(tmp_path)
    proc = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(GPU_WORKFLOW),
            "--configfile",
            str(config),
            "-n",
            "--profile",
            str(REPO / "profiles" / "slurm-gpu"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    jobs = {j.rule: j for j in parse_dry_run(proc.stdout)}
    assert jobs["medium"].resources["gpu_model"] == "a100"
    assert jobs["medium"].resources["slurm_partition"] == "gpu-a100"
    assert jobs["cpu"].resources["slurm_partition"] == "cpu" and "gpu_model" not in jobs["cpu"].resources


def test_impossible_need_fails_at_start_up(tmp_path):
    config = site_config(tmp_path)
    proc = subprocess.run(
        [
            str(BIN / "snakemake"),
            "-s",
            str(GPU_WORKFLOW),
            "--configfile",
            str(config),
            "-n",
            "--profile",
            str(REPO / "profiles" / "slurm-gpu"),
            "--config",
            "large_vram_gb=300",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "no partition in" in output and "fits the GPU need" in output
    assert "Largest GPU available: H100" in output
    assert "Building DAG" not in output  # before any job is planned


def test_parse_dry_run_reads_jobs():
    text = """
rule shard:
    output: where/shard00.json
    jobid: 7
    wildcards: shard=00
    resources: tmpdir=/tmp, mem_mb=200, mem=200 MB, runtime=5, gpu=1, slurm_partition=gpu-a100, gpu_model=a100
Shell command: true

localrule all:
    input: a, b
    jobid: 0
    resources: tmpdir=/tmp
"""
    jobs = parse_dry_run(text)
    assert [j.rule for j in jobs] == ["shard", "all"]
    assert jobs[0].wildcards == {"shard": "00"}
    assert jobs[0].resources["mem"] == "200 MB" and jobs[0].resources["gpu_model"] == "a100"


def test_parse_dry_run_reads_the_jobs_of_a_group():
    # a cluster dry-run lists grouped jobs indented under their group
    text = """
rule align:
    jobid: 2
    wildcards: sample=s-9
    resources: tmpdir=/tmp, mem_mb=8000, runtime=240, slurm_partition=cpu
Shell command: true
[Tue Dec  1 15:05:55 2026] Group job per_sample (jobs in lexicogr. order):

    [Tue Dec  1 15:05:55 2026]
    rule qc:
        jobid: 3
        wildcards: sample=s-9
        resources: tmpdir=/tmp, mem_mb=2000, runtime=60, slurm_partition=cpu-short
Shell command: true

    [Tue Dec  1 15:05:55 2026]
    rule sort:
        jobid: 4
        wildcards: sample=s-9, part=2
        resources: tmpdir=/tmp, mem_mb=4000, runtime=120, slurm_partition=cpu-short
Shell command: true

[Tue Dec  1 15:05:55 2026]
localrule all:
    jobid: 0
"""
    jobs = parse_dry_run(text)
    assert [j.rule for j in jobs] == ["align", "qc", "sort", "all"]
    assert [j.wildcards for j in jobs] == [{"sample": "s-9"}, {"sample": "s-9"}, {"sample": "s-9", "part": "2"}, {}]
    assert [j.resources.get("slurm_partition") for j in jobs] == ["cpu", "cpu-short", "cpu-short", None]


def test_make_profiles_lets_snakemake_find_the_profile_by_name(workdir, tmp_path):
    xdg = tmp_path / "xdg"
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg)}
    subprocess.run(["make", "-s", "profiles"], cwd=REPO, env=env, check=True, capture_output=True)
    assert (xdg / "snakemake" / "slurm-gpu").resolve() == REPO / "profiles" / "slurm-gpu"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--profile", "slurm-gpu", "-n"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Using profile slurm-gpu" in proc.stdout + proc.stderr
    jobs = parse_dry_run(proc.stdout)
    assert jobs and all(j.resources.get("slurm_partition") for j in jobs if j.rule != "all")


def test_the_demo_plan_expects_far_less_gpu_time_than_it_reserves(workdir, tmp_path):
    """The demo's nine GPU jobs run minutes; their runtime limits reserve 26 GPU-hours. The
    plan gives both, per job, per partition, per sample and in total."""
    out = tmp_path / "plan" / "gpu_plan.tsv"
    proc = subprocess.run(
        [sys.executable, "-m", "gpubio", "plan", "--snakefile", str(REPO / "Snakefile"), "--out", str(out)]
        + ["--", "--profile", str(REPO / "profiles" / "slurm-gpu")],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    gpu = table[table["gpus"] > 0]
    assert set(gpu["rule"]) >= {"train_cellpose", "segment_cells", "integrate_cells", "variant_effects"}
    assert (gpu["expected_from"] == "estimate").all()  # no calibrated runs in a fresh project
    assert (gpu["expected_min"].astype(float) < gpu["reserved_min"]).all()
    assert (gpu["input_mb"].astype(float) > 0).all()  # sized by the files each job is made from
    totals = pd.read_csv(out.with_suffix(".partitions.tsv"), sep="\t", keep_default_na=False).set_index("partition")
    total = totals.loc["(total)"]
    # 4 h each: annotate_scanvi, integrate_cells, train_cellpose, variant_effects x 2;
    # 2 h: segment_cells x 2; 1 h: detect_doublets x 2
    assert total["reserved_gpu_hours"] == gpu["reserved_gpu_hours"].sum() == 26.0
    assert 0 < total["expected_gpu_hours"] < 0.1 * total["reserved_gpu_hours"]
    samples = pd.read_csv(out.with_suffix(".samples.tsv"), sep="\t").set_index("sample")
    assert samples.loc["(total)", "reserved_gpu_hours"] == 26.0 and samples.loc["illu1", "gpu_jobs"] == 1
    assert "per partition, expected against reserved:" in proc.stdout and "per sample:" in proc.stdout
    assert "(total)" in proc.stdout and "rule policy cheapest" in proc.stdout


def test_prices_cost_each_job_and_the_objective_places_it(tmp_path):
    prices = {"T4": 0.53, "A100-40": 4.10, "H100": 15.0}
    config = site_config(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["gpu"] |= {"prices": prices, "objective": "balanced"}
    config.write_text(yaml.safe_dump(settings))
    table, printed = plan(tmp_path, config)
    rows = table.set_index("wildcards").loc[""].set_index("rule")  # the jobs without wildcards
    # balanced (cost x time): the A100-40 for every job that fits it, the rule's policy ignored
    assert rows.loc["small", "model"] == rows.loc["large", "model"] == "A100-40"
    assert rows.loc["small", "why"].startswith("gpu.objective balanced: gpu.prices / speed^2")
    for rule in ("small", "large"):
        row = rows.loc[rule]
        assert float(row["cost_per_gpu_hour"]) == 4.10
        assert float(row["reserved_cost"]) == pytest.approx(row["reserved_gpu_hours"] * 4.10, abs=1e-3)
        assert float(row["expected_cost"]) == pytest.approx(float(row["expected_gpu_hours"]) * 4.10, abs=1e-3)
    assert "Costs: GPU-hours x cost (gpu.prices)" in printed

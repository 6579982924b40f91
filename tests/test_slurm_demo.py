"""The real workflow on SLURM: the whole demo (genomics, transcriptomics, imaging) plus a
POD5 run through profiles/slurm-gpu on the throw-away cluster. Every job must finish in
the partition the run's own plan (results/gpu_plan.tsv) gives it, a run's basecalling
shards must be spread over more than one GPU type, short per-sample steps must go in one
submission per sample, and GPU steps on the fake GPUs must log that they ran on the CPU.

Also, without SLURM: the plan spreads the shards (gpu.balance) or sends them all to the
fastest GPU (gpu.balance: false).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pysam
import pytest
import yaml

from conftest import BIN, REPO, demo_project, run_snakemake

DOUBLES = REPO / "tests" / "doubles"
sys.path.insert(0, str(DOUBLES))
from doublelib import write_pod5  # noqa: E402

SHARDS = 6
POD5_SAMPLE = "lib-7"
POD5_RUN = "flowcell_A"  # the run is named after its POD5 file
# Rules Snakemake runs in its own process, never submitted
LOCAL_RULES = {"all", "gpu_plan"}
# Where each GPU step logs (rule -> log path); a new GPU rule must be added here
GPU_STEP_LOGS = {
    "basecall": "logs/genomics/runs/{run}/basecall_{shard}.log",
    "variant_effects": "logs/genomics/{sample}/variant_effects.log",
    "detect_doublets": "logs/transcriptomics/{sample}/detect_doublets.log",
    "integrate_cells": "logs/transcriptomics/integrate_cells.log",
    "annotate_scanvi": "logs/transcriptomics/annotate_scanvi.log",
    "embed_cells": "logs/transcriptomics/embed_cells.log",
    "register_image": "logs/imaging/{sample}/register_image.log",
    "train_cellpose": "logs/imaging/train_cellpose.log",
    "segment_cells": "logs/imaging/{sample}/segment_cells.log",
}


def write_pod5_run(path: Path, reference: Path, reads: int, seed: int) -> None:
    """A POD5 file of error-free reads (800-2,400 bp, both strands) drawn from a reference."""
    rng = random.Random(seed)
    with pysam.FastaFile(str(reference)) as fasta:
        contigs = [fasta.fetch(name).upper() for name in fasta.references]
    complement = str.maketrans("ACGT", "TGCA")
    records = []
    while len(records) < reads:
        seq = rng.choice(contigs)
        length = rng.randint(800, 2400)
        if len(seq) <= length:
            continue
        start = rng.randrange(len(seq) - length)
        read = seq[start : start + length]
        if set(read) - set("ACGT"):
            continue
        records.append((read.translate(complement)[::-1] if rng.random() < 0.5 else read, 0))
    write_pod5(path, records)


def add_pod5_run(project: Path, reference: Path, genomics_sheet: Path | None = None) -> float:
    """Append a POD5 sample to the project's genomics sheet; returns a shard size giving SHARDS shards."""
    pod5 = project / "pod5" / f"{POD5_RUN}.pod5"
    pod5.parent.mkdir(exist_ok=True)
    write_pod5_run(pod5, reference, reads=90, seed=11)
    sheet = genomics_sheet or project / "config" / "genomics.tsv"
    table = pd.read_csv(sheet, sep="\t", dtype=str, keep_default_na=False)
    row = {column: "" for column in table.columns} | {"sample": POD5_SAMPLE, "platform": "ont", "pod5": str(pod5)}
    pd.concat([table, pd.DataFrame([row])]).to_csv(sheet, sep="\t", index=False)
    size_mb = pod5.stat().st_size / 1e6
    shard_size_mb = size_mb / (SHARDS - 0.5)
    assert math.ceil(size_mb / shard_size_mb) == SHARDS
    return shard_size_mb


def write_config(project: Path, name: str, genomics: dict, gpu: dict | None = None) -> str:
    """config/<name>: the project's config.yaml with these genomics (and gpu) settings changed."""
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["genomics"]["basecall"].update(genomics.pop("basecall", {}))
    config["genomics"].update(genomics)
    config["gpu"].update(gpu or {})
    (project / "config" / name).write_text(yaml.safe_dump(config))
    return f"config/{name}"


def plan_jobs(plan_file: Path) -> dict[tuple[str, str], pd.Series]:
    """The plan's rows keyed by (rule, wildcards as k=v,k=v sorted)."""
    plan = pd.read_csv(plan_file, sep="\t", keep_default_na=False)
    jobs = {}
    for _, row in plan.iterrows():
        pairs = sorted(item.strip() for item in re.split(r",\s*(?=[\w.-]+=)", row["wildcards"]) if "=" in item)
        jobs[row["rule"], ",".join(pairs)] = row
    return jobs


def submitted_jobs(cluster, after: set[str]) -> list[dict]:
    """Jobs SLURM ran since `after`: partition, state, and the Snakemake jobs in each (from its batch script)."""
    out = cluster.run(["squeue", "--states=all", "-h", "-o", "%i|%P|%T"]).stdout
    jobs = []
    for line in out.splitlines():
        jobid, partition, state = line.split("|")
        if jobid in after:
            continue
        script = cluster.run(["scontrol", "write", "batch_script", jobid, "-"]).stdout
        words = shlex.split(next(line for line in script.splitlines() if "--target-jobs" in line))
        first = words.index("--target-jobs") + 1
        targets = []
        for word in words[first:]:
            if word.startswith("--"):
                break
            rule, _, wildcards = word.partition(":")
            targets.append((rule, ",".join(sorted(w for w in wildcards.split(",") if w))))
        jobs.append({"jobid": jobid, "partition": partition, "state": state, "targets": targets})
    return jobs


def log_path(rule: str, wildcards: str) -> str:
    values = dict(pair.split("=", 1) for pair in wildcards.split(",") if pair)
    return GPU_STEP_LOGS[rule].format(**values)


@pytest.fixture(scope="module")
def slurm_demo(slurm_cluster, demo_data, tmp_path_factory) -> dict:
    """The demo plus a POD5 run, once, through the shipped profile on the test cluster."""
    root = tmp_path_factory.mktemp("slurm-demo")
    demo_project(root, demo_data)
    reference = demo_data / "resources" / "demo" / "genomics" / "reference.fa"
    shard_size_mb = add_pod5_run(root, reference)
    configfile = write_config(root, "slurm.yaml", {"basecall": {"shard_size_mb": shard_size_mb}})
    env = slurm_cluster.env | {
        "PATH": os.pathsep.join([str(DOUBLES / "bin"), str(BIN), os.environ["PATH"]]),
        "GPUBIO_DOUBLES_LOG": str(root / "doubles.log"),
    }
    # the plan lists every job (--forceall); the reference index may be there from earlier tests
    done_before = {("reference_index", "")} if Path(f"{reference}.fai").exists() else set()
    before = set(slurm_cluster.run(["squeue", "--states=all", "-h", "-o", "%i"]).stdout.split())
    # the shipped profile as is; only the status command differs (no accounting database here)
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(root),
        "--profile",
        str(REPO / "profiles" / "slurm-gpu"),
        "--configfile",
        configfile,
        "--slurm-status-command",
        "squeue",
        "--jobs",
        "4",
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:] + slurm_cluster.logs()
    return {
        "root": root,
        "planned": plan_jobs(root / "results" / "gpu_plan.tsv"),
        "ran": submitted_jobs(slurm_cluster, before),
        "done_before": done_before,
    }


@pytest.mark.slurm
@pytest.mark.e2e
def test_demo_on_slurm_runs_every_job_where_the_plan_says(slurm_demo):
    planned, ran = slurm_demo["planned"], slurm_demo["ran"]
    # every submitted job finished, once, and together they are exactly the plan's jobs
    assert [j for j in ran if j["state"] != "COMPLETED"] == []
    targets = [t for j in ran for t in j["targets"]]
    assert len(targets) == len(set(targets))
    assert set(targets) == {key for key in planned if key[0] not in LOCAL_RULES} - slurm_demo["done_before"]
    # each in the partition the plan gives it (a group job's members share one)
    for job in ran:
        for target in job["targets"]:
            assert job["partition"] == planned[target]["partition"], (job, target)
    # and the results are real: the POD5 sample's reads were basecalled, aligned and counted
    qc = json.loads((slurm_demo["root"] / "results" / "genomics" / POD5_SAMPLE / "qc.json").read_text())
    assert qc["reads"] == 90 and qc["mapped_fraction"] == 1.0


@pytest.mark.slurm
@pytest.mark.e2e
def test_demo_on_slurm_spreads_basecall_shards_over_gpu_types(slurm_demo):
    shards = [j for j in slurm_demo["ran"] if j["targets"][0][0] == "basecall"]
    assert len(shards) == SHARDS and all(len(j["targets"]) == 1 for j in shards)
    assert {j["partition"] for j in shards} == {"gpu-a100", "gpu-h100"}  # as in the plan test below


@pytest.mark.slurm
@pytest.mark.e2e
def test_demo_on_slurm_submits_one_job_per_sample_for_short_steps(slurm_demo):
    ran = slurm_demo["ran"]
    groups = [j for j in ran if len(j["targets"]) > 1]
    sheet = pd.read_csv(slurm_demo["root"] / "config" / "genomics.tsv", sep="\t")
    assert len(groups) == len(sheet)
    for job in groups:  # never mixing samples: a failure costs one sample
        assert {rule for rule, _ in job["targets"]} == {"read_qc", "sort_bam", "alignment_qc", "call_bcftools"}
        assert len({wildcards for _, wildcards in job["targets"]}) == 1, job
    assert {wildcards for job in groups for _, wildcards in job["targets"]} == {f"sample={s}" for s in sheet["sample"]}
    assert len(ran) == sum(len(j["targets"]) for j in ran) - 3 * len(sheet)


def gpu_step_logs(slurm_demo, rules) -> dict[tuple[str, str], str]:
    steps = [key for key, row in slurm_demo["planned"].items() if row["gpus"] > 0]
    assert {rule for rule, _ in steps} <= set(GPU_STEP_LOGS)
    return {key: (slurm_demo["root"] / log_path(*key)).read_text() for key in steps if key[0] in rules}


@pytest.mark.slurm
@pytest.mark.e2e
def test_demo_on_slurm_torch_steps_say_they_ran_on_the_cpu_and_why(slurm_demo):
    logs = gpu_step_logs(slurm_demo, set(GPU_STEP_LOGS) - {"basecall"})
    assert {rule for rule, _ in logs} >= {"train_cellpose", "segment_cells", "annotate_scanvi", "variant_effects"}
    for (rule, wildcards), text in logs.items():
        assert re.search(r"\bCPU\b|\bcpu\b", text), (rule, wildcards, text[-2000:])
        # SLURM assigned a (fake) GPU; what the step runs cannot use it, and the log says why
        if rule in ("integrate_cells", "detect_doublets"):  # rapids-singlecell, not torch
            assert "falling back to the CPU: rapids_singlecell" in text, (rule, text[-2000:])
            continue
        assert re.search(r"on the CPU: GPU\(s\) \[\d+\] assigned, but torch \S+ sees no CUDA device", text), (
            rule,
            text[-2000:],
        )


@pytest.mark.slurm
@pytest.mark.e2e
def test_demo_on_slurm_basecalls_on_the_cpu_of_a_node_without_driver(slurm_demo):
    logs = gpu_step_logs(slurm_demo, {"basecall"})
    assert len(logs) == SHARDS
    for key, text in logs.items():
        # SLURM assigned a fake GPU that the node's driver (the nvidia-smi double) does not list
        assert "dorado on the CPU: nvidia-smi -L lists 0 device(s)" in text, (key, text[-2000:])
    # dorado itself was told to use the CPU for every shard
    calls = [line.split("\t") for line in (slurm_demo["root"] / "doubles.log").read_text().splitlines()]
    calls = [words for words in calls if words[:2] == ["dorado", "basecaller"]]
    assert len(calls) == SHARDS and all("-x" in words and "cpu" in words for words in calls), calls


# --------------------------------------------------------------------------- plan, no SLURM


def write_reference(path: Path, seed: int) -> None:
    """Three random contigs (6-9 kb) unlike the demo's reference."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(3):
            seq = "".join(rng.choice("ACGT") for _ in range(rng.randint(6000, 9000)))
            fh.write(f">ctg{i + 1}\n" + "\n".join(seq[k : k + 70] for k in range(0, len(seq), 70)) + "\n")
    pysam.faidx(str(path))


@pytest.fixture
def pod5_project(tmp_path) -> Path:
    """A genomics-only project: one POD5 sample on a random reference; other modules off."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    for sheet in ("transcriptomics", "imaging"):
        (tmp_path / "config" / f"{sheet}.tsv").write_text("")
    reference = tmp_path / "ref" / "genome.fa"
    reference.parent.mkdir()
    write_reference(reference, seed=5)
    sheet = tmp_path / "config" / "genomics.tsv"
    sheet.write_text("sample\tplatform\tpod5\n")
    shard_size_mb = add_pod5_run(tmp_path, reference, sheet)
    settings = {
        "reference": str(reference),
        "basecall": {"shard_size_mb": shard_size_mb},
        "variant_effects": {"enabled": False},
    }
    write_config(tmp_path, "balance.yaml", dict(settings, basecall=dict(settings["basecall"])))
    write_config(tmp_path, "no_balance.yaml", dict(settings, basecall=dict(settings["basecall"])), {"balance": False})
    write_config(tmp_path, "bad_balance.yaml", dict(settings, basecall=dict(settings["basecall"])), {"balance": "yes"})
    return tmp_path


def basecall_partitions(project: Path, configfile: str) -> dict[str, str]:
    out = project / "plan.tsv"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "plan",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(project),
            "--configfile",
            configfile,
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        cwd=project,
        timeout=600,
    )
    plan = pd.read_csv(out, sep="\t", keep_default_na=False)
    rows = plan[plan["rule"] == "basecall"]
    return dict(zip(rows["wildcards"], rows["partition"], strict=True))


def test_plan_spreads_basecall_shards_over_gpu_types(pod5_project):
    from gpubio.gpu import BUILTIN_CATALOGUE

    # The shipped site: 8 x T4 (speed 1), 4 x A100-40 (speed 4), 2 x H100 (speed 7).
    assert [BUILTIN_CATALOGUE[m].speed for m in ("t4", "a100-40", "h100")] == [1, 4, 7]
    # Six equal shards of w T4-hours. A shard on a T4 alone takes w: never soonest. On the
    # A100s any shard takes w/4, so a plan using them ends at >= w/4; the H100s alone need
    # 6w/(2*7) = 0.43w. Soonest: k shards on the H100s with k*w/14 <= w/4 (k <= 3) and the
    # rest on the A100s within w/4 ((6-k)/4 <= 1, k >= 2): 2 or 3 on H100, the rest on A100.
    placed = basecall_partitions(pod5_project, "config/balance.yaml")
    assert len(placed) == SHARDS
    counts = pd.Series(placed).value_counts().to_dict()
    assert set(counts) == {"gpu-a100", "gpu-h100"} and counts["gpu-h100"] in (2, 3), counts


def test_plan_without_balance_sends_every_shard_to_the_fastest_gpu(pod5_project):
    placed = basecall_partitions(pod5_project, "config/no_balance.yaml")
    assert len(placed) == SHARDS and set(placed.values()) == {"gpu-h100"}


def test_balance_setting_is_validated(pod5_project):
    proc = run_snakemake(pod5_project, "-n", "--configfile", "config/bad_balance.yaml", check=False)
    assert proc.returncode != 0
    assert re.search(r"gpu\.balance.*boolean|balance.*'yes'", proc.stdout + proc.stderr), proc.stderr[-2000:]

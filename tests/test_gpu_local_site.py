"""A local run is judged by this machine's GPUs, not by the cluster's partitions file: a need
above the largest cluster GPU refuses a cluster dry-run but runs a CPU-only local run, and
`gpu.require: true` refuses it at start-up only where no local GPU can hold it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from conftest import BIN, GPU_WORKFLOW, REPO, TEST_PARTITIONS
from gpubio.gpu import build_site, check_declared_needs, gpu_resources
from gpubio.gpu.catalogue import BUILTIN_CATALOGUE
from gpubio.gpu.local_site import LocalGpu, LocalGpus, parse_nvidia_smi, site_is_local
from gpubio.gpu.placement import GpuNeed, PlacementError, Site

PROFILE_LOCAL = REPO / "profiles" / "local"


def fake_nvidia_smi(directory, gpus: list[tuple[str, int]]):
    """An nvidia-smi answering the name/memory query (MiB) and -L for `gpus`."""
    directory.mkdir(exist_ok=True)
    query = "\\n".join(f"{name}, {mib}" for name, mib in gpus)
    listing = "\\n".join(f"GPU {i}: {name} (UUID: GPU-{i})" for i, (name, _) in enumerate(gpus))
    smi = directory / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --query-gpu=*) printf "{query}\\n" ;; -L) printf "{listing}\\n" ;; *) exit 2 ;; esac\n'
    )
    smi.chmod(0o755)
    return directory


def run_gpu_workflow(tmp_path, *args, require=False, num_gpus=None, smi_dir=None, large_vram_gb=300):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(TEST_PARTITIONS), "require": require}}))
    env = {k: v for k, v in os.environ.items() if k not in ("GPUBIO_NUM_GPUS", "SLURM_JOB_ID")}
    env["GPUBIO_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    if num_gpus is not None:
        env["GPUBIO_NUM_GPUS"] = str(num_gpus)
    if smi_dir is not None:
        env["PATH"] = f"{smi_dir}{os.pathsep}{env['PATH']}"
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(GPU_WORKFLOW),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
        "--config",
        f"large_vram_gb={large_vram_gb}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)


def test_cluster_dry_run_refuses_a_need_above_the_largest_cluster_gpu(tmp_path):
    proc = run_gpu_workflow(tmp_path, "-n", "--profile", str(REPO / "profiles" / "slurm-gpu"), num_gpus=0)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rule 'large': no partition in" in output and "Largest GPU available: H100" in output
    assert "Building DAG" not in output


def test_local_cpu_only_run_takes_a_need_the_cluster_cannot_hold(tmp_path):
    proc = run_gpu_workflow(tmp_path, "--profile", str(PROFILE_LOCAL), "--cores", "1", "where/large.json", num_gpus=0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "where" / "large.json").read_text())
    assert info["backend"] == "cpu" and info["devices"] == [] and info["cuda_visible_devices"] is None
    assert "no GPU found: running on the CPU" in proc.stderr


def test_local_dry_run_places_what_the_cluster_cannot_hold_on_this_machine(tmp_path):
    from gpubio.gpu.plan import parse_dry_run

    proc = run_gpu_workflow(tmp_path, "-n", num_gpus=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {j.rule: j.resources for j in parse_dry_run(proc.stdout)}
    assert (jobs["large"]["slurm_partition"], jobs["large"]["gpu"], jobs["large"]["vram_gb"]) == ("local", "2", "300")
    # what the cluster can hold keeps the partition the plan and usage records name
    assert (jobs["medium"]["slurm_partition"], jobs["medium"]["gpu_model"]) == ("gpu-a100", "a100")


def refusals(output: str) -> list[str]:
    return [line for line in output.splitlines() if "gpu.require is true" in line]


def test_local_require_refuses_before_the_first_job_naming_the_rule_and_the_local_gpus(tmp_path):
    smi = fake_nvidia_smi(tmp_path / "bin", [("NVIDIA A100-SXM4-80GB", 81920)] * 2)
    dry = run_gpu_workflow(tmp_path, "-n", require=True, smi_dir=smi)
    assert dry.returncode == 0, dry.stderr[-3000:]
    # the dry-run says it once, for the one rule the local GPUs cannot hold
    [said] = refusals(dry.stdout + dry.stderr)  # small (8 GB) and medium (30 GB) fit an A100-80
    assert said.startswith("gpubio: rule 'large': gpu.require is true")
    assert "2 GPUs with >= 300 GB VRAM each" in said and "it has 2 x A100-80 (80 GB, cc 8) (nvidia-smi)" in said

    run = run_gpu_workflow(tmp_path, "--cores", "1", require=True, smi_dir=smi)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    [refused] = refusals(output)
    assert refused.strip().startswith("rule 'large': gpu.require is true") and refused.endswith("(1 job of this run)")
    assert "Traceback" not in output and not (tmp_path / "where").exists()
    # a need the local GPUs hold passes the same check
    fits = run_gpu_workflow(tmp_path, "-n", require=True, smi_dir=smi, large_vram_gb=60)
    assert fits.returncode == 0 and not refusals(fits.stdout + fits.stderr), fits.stderr[-3000:]


def test_local_require_without_any_gpu_names_every_gpu_rule_with_jobs_and_only_those(tmp_path):
    proc = run_gpu_workflow(tmp_path, "--cores", "1", require=True, num_gpus=0, large_vram_gb=30)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and not (tmp_path / "where").exists()
    named = {line.split("'")[1]: line for line in refusals(output)}
    assert set(named) == {"small", "medium", "large", "oom", "flaky", "spread", "shard"}, output[-3000:]
    assert named["shard"].endswith("(6 jobs of this run)")
    assert all("it has no GPU ($GPUBIO_NUM_GPUS=0)" in line for line in named.values())
    # asked for one output, the run names only the rule that makes it; the CPU rule runs
    only = run_gpu_workflow(tmp_path, "--cores", "1", "where/cpu.json", require=True, num_gpus=0)
    assert only.returncode == 0 and not refusals(only.stdout + only.stderr), only.stderr[-3000:]
    assert (tmp_path / "where" / "cpu.json").exists()


@pytest.mark.parametrize(
    ("setting", "jobs", "environ", "local"),
    [
        ("auto", None, {}, True),
        ("auto", 100, {}, False),  # --profile profiles/slurm-gpu: executor slurm, jobs 100
        ("auto", None, {"SLURM_JOB_ID": "42"}, False),  # a cluster job re-reading the Snakefile
        ("local", 100, {"SLURM_JOB_ID": "42"}, True),
        ("cluster", None, {}, False),
    ],
)
def test_site_kind_from_setting_executor_and_slurm_job(setting, jobs, environ, local):
    assert site_is_local(setting, jobs, environ) is local


def test_site_kind_rejects_an_unknown_setting():
    with pytest.raises(ValueError, match="gpu.site must be one of auto, cluster, local, got 'laptop'"):
        site_is_local("laptop", None, {})


def test_nvidia_smi_names_resolve_in_the_catalogue_or_keep_the_measured_vram():
    text = (
        "Tesla T4, 15360\nNVIDIA A100-PCIE-40GB, 40960\nNVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce RTX 3050, 6144\n"
    )
    gpus = parse_nvidia_smi(text, BUILTIN_CATALOGUE)
    assert gpus == (
        LocalGpu("T4", 16, 7.5),
        LocalGpu("A100-40", 40, 8.0),
        LocalGpu("H100", 80, 9.0),
        LocalGpu("NVIDIA GeForce RTX 3050", 6.0, None),  # not catalogued: measured VRAM, cc unknown
    )


def test_local_gpus_of_unknown_vram_count_as_fitting():
    gpus = LocalGpus((LocalGpu("GPU 0"), LocalGpu("small", 6.0, None), LocalGpu("old", 24.0, 6.1)), "test")
    assert gpus.summary().endswith(
        "GPUs: 1 x GPU 0 (VRAM unknown), 1 x small (6 GB), 1 x old (24 GB, cc 6.1) (test); "
        "VRAM unknown, so every need is taken to fit"
    )
    assert [g.name for g in gpus.fitting(vram_gb=12, min_compute_capability=7.0)] == ["GPU 0"]
    assert [g.name for g in gpus.fitting(vram_gb=4, min_compute_capability=0)] == ["GPU 0", "small", "old"]


def test_local_site_keeps_cluster_placement_where_it_fits_and_memoises_it():
    from gpubio.gpu.inventory import BUILTIN_INVENTORY

    one_l4 = LocalGpus((LocalGpu("L4", 24, 8.9),), "test")
    site = Site(BUILTIN_INVENTORY, BUILTIN_CATALOGUE, local=one_l4)
    cluster = Site(BUILTIN_INVENTORY, BUILTIN_CATALOGUE)
    fits = GpuNeed(vram_gb=20, rule="r")
    assert site.place(fits) == cluster.place(fits) and site.place(fits).partition != "local"
    assert site.place(fits) is site.place(fits)
    huge = GpuNeed(vram_gb=500, rule="r")
    with pytest.raises(PlacementError):
        cluster.place(huge)
    placed = site.place(huge, attempt=2)
    assert (placed.partition, placed.gpus, placed.gpu_model, placed.attempt) == ("local", 1, "local", 2)
    strict = Site(BUILTIN_INVENTORY, BUILTIN_CATALOGUE, local=one_l4, require=True)
    assert strict.place(huge).partition == "local"  # placing never refuses: the run's check does
    assert strict.require_problem(huge).startswith("rule 'r': gpu.require is true")
    assert "it has 1 x L4 (24 GB, cc 8.9)" in strict.require_problem(huge)
    sized = GpuNeed(vram_gb=lambda mb: mb / 10, rule="s")
    assert strict.place(sized, input_size_mb=100).partition != "local"  # 10 GB: the cluster holds it
    assert strict.require_problem(sized, 100) is None and strict.require_problem(sized) is None
    assert strict.require_problem(sized, 5000).startswith("rule 's': gpu.require is true")  # 500 GB


def test_require_names_only_the_rules_of_jobs_the_run_will_run(monkeypatch):
    from types import SimpleNamespace

    from gpubio.gpu import planned_job_problems

    monkeypatch.setenv("GPUBIO_NUM_GPUS", "0")
    site = build_site(kind="local", require=True)
    gpu_resources(site, "giant", vram_gb=500)
    gpu_resources(site, "unplanned", vram_gb=8)  # declared: no refusal before a job is planned

    def job(rule):
        return SimpleNamespace(rule=SimpleNamespace(name=rule), threads=1, input=[])

    [line] = planned_job_problems([job("giant"), job("giant"), job("other")], site)
    assert line.startswith("rule 'giant': gpu.require is true") and "no GPU ($GPUBIO_NUM_GPUS=0)" in line
    assert line.endswith("(2 jobs of this run)")
    assert planned_job_problems([], site) == []
    relaxed = build_site(kind="local")
    gpu_resources(relaxed, "giant", vram_gb=500)
    assert planned_job_problems([job("giant")], relaxed) == []  # CPU path allowed
    cluster = build_site(kind="cluster")
    gpu_resources(cluster, "giant", vram_gb=500)
    with pytest.raises(PlacementError, match="rule 'giant': no partition in"):
        check_declared_needs(cluster)


class _Inputs(list):
    """A job's input as resource callables see it: paths, and Snakemake's own size_mb."""

    asked = 0

    @property
    def size_mb(self):
        self.asked += 1
        raise LookupError("Snakemake's size_mb")


def test_input_size_is_read_by_plain_stats_and_a_missing_file_is_named(tmp_path):
    from gpubio.gpu import input_files_mb

    (tmp_path / "a.bin").write_bytes(b"x" * 3 * 1024 * 1024)
    (tmp_path / "b.bin").write_bytes(b"y" * 512 * 1024)
    inputs = _Inputs([str(tmp_path / "a.bin"), str(tmp_path / "b.bin")])
    assert input_files_mb(inputs) == 3.5 and inputs.asked == 0
    missing = _Inputs([str(tmp_path / "a.bin"), str(tmp_path / "not-yet.bin")])
    # the size is not known yet: the error names the input, which Snakemake reads as such
    # (tests/test_gpu_placement.py evaluates it through Snakemake), without its slow size_mb
    with pytest.raises(FileNotFoundError) as raised:
        input_files_mb(missing)
    assert raised.value.filename == str(tmp_path / "not-yet.bin") and missing.asked == 0

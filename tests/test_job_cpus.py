"""One number for CPUs: every job asks SLURM for as many CPUs as it runs threads."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from conftest import run_snakemake


def dry_run_jobs(output: str) -> list[dict]:
    """rule, threads (Snakemake prints the line only above 1) and resources of each job that
    runs a command (not the target rule `all`)."""
    jobs = []
    # jobs of a group (short per-sample steps) are printed indented inside their group job
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:\n)", output):
        head = re.match(r"\s*(?:local)?rule (\w+):\n", block)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not head or head.group(1) == "all":
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        jobs.append(
            {
                "rule": head.group(1),
                "threads": int(threads.group(1)) if threads else 1,
                "resources": dict(item.split("=", 1) for item in resources.group(1).split(", ")),
            }
        )
    return jobs


@pytest.mark.parametrize("cores", [64, 2])
def test_every_job_asks_for_as_many_cpus_as_it_runs_threads(workdir, cores):
    proc = run_snakemake(workdir, "-n", "--cores", str(cores))
    jobs = dry_run_jobs(proc.stdout)
    rules = {job["rule"] for job in jobs}
    assert {"variant_effects", "annotate_scanvi", "integrate_cells", "segment_cells", "read_qc"} <= rules
    # what the SLURM plugin puts on each job's sbatch line, from the resources the DAG gives it
    get_cpu_setting = pytest.importorskip("snakemake_executor_plugin_slurm_jobstep").get_cpu_setting
    for job in jobs:
        resources = {k: int(v) if v.isdigit() else v for k, v in job["resources"].items()}
        plugin_job = SimpleNamespace(threads=job["threads"], resources=SimpleNamespace(**resources, get=resources.get))
        gpu = int(resources.get("gpu", 0)) > 0
        assert get_cpu_setting(plugin_job, gpu) == f"--cpus-per-task={job['threads']}", job
        assert job["threads"] <= cores, job
    by_rule = {job["rule"]: job for job in jobs}
    # the demo config scores variant effects on 1 thread; scANVI's rule runs 2
    assert by_rule["variant_effects"]["threads"] == 1 and by_rule["annotate_scanvi"]["threads"] == 2
    # with fewer cores than a rule asks for, the job gets (and asks SLURM for) what fits
    assert by_rule["integrate_cells"]["threads"] == min(8, cores)

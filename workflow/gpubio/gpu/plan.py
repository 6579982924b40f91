"""`gpubio plan`: where every job of the DAG goes, read from Snakemake's own dry-run.

The dry-run is the source of truth (it evaluates each job's resources exactly as a real
run submits them); this module turns its job list into one row per job, with the GPU
model, partition, allocation GPU-hours and relative cost, plus totals per partition.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# grouped jobs (cluster runs) are listed indented under their group
_RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^\s+(wildcards|resources|jobid): (.*)$")

COLUMNS = [
    "rule",
    "sample",
    "wildcards",
    "gpus",
    "vram_gb",
    "gpu_model",
    "model",
    "partition",
    "runtime_min",
    "gpu_hours",
    "relative_cost",
]


@dataclass
class DryRunJob:
    rule: str
    wildcards: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)


def _pairs(text: str) -> dict:
    pairs = {}
    for item in re.split(r", (?=[\w.-]+=)", text.strip()):
        if "=" in item:
            key, value = item.split("=", 1)
            pairs[key.strip()] = value.strip()
    return pairs


def parse_dry_run(output: str) -> list[DryRunJob]:
    """Jobs of a `snakemake -n` listing (default, non-quiet output)."""
    jobs: list[DryRunJob] = []
    current = None
    for line in output.splitlines():
        match = _RULE.match(line)
        if match:
            current = DryRunJob(match.group(1))
            jobs.append(current)
            continue
        match = _FIELD.match(line)
        if current is not None and match:
            if match.group(1) == "wildcards":
                current.wildcards = _pairs(match.group(2))
            elif match.group(1) == "resources":
                current.resources = _pairs(match.group(2))
    return jobs


# Snakemake options that change where or how big a job is; the plan repeats them.
# Option -> how many values it takes: 0 (a flag), 1, or None (all up to the next option).
PLAN_OPTIONS = {
    "--profile": 1,
    "--workflow-profile": 1,
    "--snakefile": 1,
    "-s": 1,
    "--directory": 1,
    "-d": 1,
    "--configfile": None,
    "--configfiles": None,
    "--config": None,
    "-C": None,
    "--replace-workflow-config": 0,
    "--set-resources": None,
    "--default-resources": None,
    "--default-res": None,
    "--set-threads": None,
    "--max-threads": 1,
    "--set-resource-scopes": None,
}


def plan_arguments(argv: list[str]) -> list[str]:
    """The options of a Snakemake command line that decide placement (profile, config,
    resource and thread overrides), in order; targets, the dry-run flag, cores and the like
    are left out, so the plan of `snakemake -n ...` equals the plan of the real run."""
    kept: list[str] = []
    values_left = 0  # values the current option still takes (-1: any number)
    for arg in argv:
        if arg.startswith("-") and not _negative_number(arg):
            name, inline = arg.split("=", 1)[0], "=" in arg
            arity = PLAN_OPTIONS.get(name, 0)
            values_left = 0 if inline or arity == 0 else (-1 if arity is None else arity)
            if name in PLAN_OPTIONS:
                kept.append(arg)
        elif values_left:
            kept.append(arg)
            values_left -= 1 if values_left > 0 else 0
    return kept


def _negative_number(arg: str) -> bool:
    try:
        float(arg)
        return True
    except ValueError:
        return False


def dry_run(
    snakefile: str, workdir: str, extra_args: list[str], cwd: str | None = None, declared_needs: bool = False
) -> str:
    """Snakemake's dry-run of every job; extra_args come last, so they override ours.
    ``declared_needs``: place by the rules' declared needs, ignoring calibrated ones."""
    import os

    from gpubio.gpu.placement import ENV_DECLARED_NEEDS

    env = dict(os.environ)
    if declared_needs:
        env[ENV_DECLARED_NEEDS] = "1"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        snakefile,
        "--directory",
        workdir,
        "-n",
        "--forceall",
        "--nolock",
        "--ignore-incomplete",
        "--cores",
        "1",
        *extra_args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"the dry-run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def _number(value, default=0.0) -> float:
    """A resource value from the dry-run; `<TBD>` (depends on files not made yet) counts as unknown."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def plan_table(jobs: list[DryRunJob], site):
    """One row per job (rule `all` left out); cost = GPU-hours x the model's relative hourly cost."""
    import pandas as pd

    from gpubio.gpu.placement import gpu_pools

    pools = {(p.partition.name, p.gres_type): p.model for p in gpu_pools(site.inventory, site.catalogue)}
    rows = []
    for job in jobs:
        if job.rule == "all":
            continue
        res = job.resources
        gpus = int(_number(res.get("gpu")))
        partition = res.get("slurm_partition", "")
        gres = res.get("gpu_model", "") if gpus else ""
        model = pools.get((partition, gres))
        runtime = _number(res.get("runtime"))
        gpu_hours = gpus * runtime / 60
        rows.append(
            {
                "rule": job.rule,
                "sample": job.wildcards.get("sample", ""),
                "wildcards": ",".join(f"{k}={v}" for k, v in job.wildcards.items()),
                "gpus": gpus,
                "vram_gb": int(_number(res.get("vram_gb"))) if gpus else 0,
                "gpu_model": gres,
                "model": model.name if model else "",
                "partition": partition,
                "runtime_min": runtime,
                "gpu_hours": round(gpu_hours, 4),
                "relative_cost": round(gpu_hours * model.cost, 4) if model else 0.0,
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["rule", "wildcards"], kind="stable", ignore_index=True)


def partition_totals(table, site=None):
    """Jobs, GPU jobs, GPU-hours and cost per partition; ``note`` says why a GPU partition of
    ``site`` takes CPU jobs (the site has no partition without GPUs)."""
    totals = table.groupby("partition", sort=True).agg(
        jobs=("rule", "size"),
        gpu_jobs=("gpus", lambda g: int((g > 0).sum())),
        gpu_hours=("gpu_hours", "sum"),
        relative_cost=("relative_cost", "sum"),
    )
    totals = totals.reset_index()
    gpu_partitions = {p.name for p in site.inventory.partitions if p.has_gpus} if site is not None else set()
    takes_cpu_jobs = totals["partition"].isin(gpu_partitions) & (totals["jobs"] > totals["gpu_jobs"])
    totals["note"] = takes_cpu_jobs.map(
        {True: "takes CPU jobs: the site has no partition without GPUs (cheapest GPUs that fit first)", False: ""}
    )
    return totals


DECLARED_COLUMNS = ["gpu_model", "vram_gb", "gpu_hours", "relative_cost"]


def with_declared(calibrated, declared):
    """The calibrated plan with the declared plan's model, VRAM, GPU-hours and cost beside it."""
    keys = ["rule", "wildcards"]
    side = declared[keys + DECLARED_COLUMNS].rename(columns={c: f"declared_{c}" for c in DECLARED_COLUMNS})
    return calibrated.merge(side, on=keys, how="left")


def compare_totals(table) -> str:
    """GPU-hours and relative cost of the whole plan, declared needs against calibrated."""
    lines = ["declared needs against calibrated (gpubio calibrate):"]
    for label, hours, cost in (
        ("declared", "declared_gpu_hours", "declared_relative_cost"),
        ("calibrated", "gpu_hours", "relative_cost"),
    ):
        lines.append(f"  {label:>10}: {table[hours].sum():.2f} GPU-hours, relative cost {table[cost].sum():.2f}")
    moved = table[(table["gpus"] > 0) & (table["gpu_model"] != table["declared_gpu_model"])]
    for _, row in moved.iterrows():
        job = " ".join(filter(None, (row["rule"], row["wildcards"])))
        lines.append(
            f"  {job}: {row['declared_gpu_model']} ({row['declared_vram_gb']} GB declared)"
            f" -> {row['gpu_model']} ({row['vram_gb']} GB calibrated)"
        )
    return "\n".join(lines)


def format_plan(table, totals, site=None) -> str:
    lines = [table.to_string(index=False), "", "per partition:", totals.to_string(index=False)]
    note = site.cpu_jobs_note() if site is not None else None
    if note:
        lines += ["", note]
    lines.append(
        "\ngpu_hours: GPUs x runtime limit (an upper bound); relative_cost: gpu_hours x the "
        "model's relative hourly cost (T4 = 1)."
    )
    return "\n".join(lines)


def write_plan(table, out: str, site=None) -> None:
    from gpubio.atomic import atomic_path

    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    totals = partition_totals(table, site)
    with atomic_path(Path(out).with_suffix(".partitions.tsv")) as tmp:
        totals.to_csv(tmp, sep="\t", index=False)

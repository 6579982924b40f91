"""`gpubio plan`: where every job of the DAG goes, read from Snakemake's own dry-run.

The dry-run is the source of truth (it evaluates each job's resources exactly as a real
run submits them); this module turns its job list into one row per job: GPU model and
partition, why it went there, and two figures of GPU time. Reserved: GPUs x the runtime
limit, what the cluster holds for the job (an upper bound). Expected: GPUs x the time the
job should take (:mod:`gpubio.gpu.estimates`: the lab's calibrated runs, else the rule's
estimate at the job's input size). Both are costed by ``gpu.prices`` (else the catalogue's
relative costs) and totalled per partition, per sample and for the run.

A job whose inputs are not made yet (most jobs of a fresh run) is sized by the existing
files it is made from, traced through the dry-run's inputs and outputs; jobs of one rule made
from the same files (the shards of one run) share their size.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# grouped jobs (cluster runs) are listed indented under their group
_RULE = re.compile(r"^\s*(?:local)?rule (\w+):$")
_FIELD = re.compile(r"^\s+(input|output|wildcards|resources|jobid): (.*)$")

COLUMNS = [
    "rule",
    "sample",
    "wildcards",
    "gpus",
    "vram_gb",
    "gpu_model",
    "model",
    "partition",
    "input_mb",
    "expected_min",
    "reserved_min",
    "expected_gpu_hours",
    "reserved_gpu_hours",
    "expected_from",
    "cost_per_gpu_hour",
    "expected_cost",
    "reserved_cost",
    "why",
]
TOTALS = ["expected_gpu_hours", "reserved_gpu_hours", "expected_cost", "reserved_cost"]


@dataclass
class DryRunJob:
    rule: str
    wildcards: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    input: list = field(default_factory=list)
    output: list = field(default_factory=list)


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
            name, value = match.groups()
            if name == "wildcards":
                current.wildcards = _pairs(value)
            elif name == "resources":
                current.resources = _pairs(value)
            elif name in ("input", "output"):
                setattr(current, name, [f for f in value.split(", ") if f])
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


def configfiles(argv: list[str]) -> list[str]:
    """The files of every ``--configfile``/``--configfiles`` in a Snakemake command line, in order."""
    files, taking = [], False
    for arg in argv:
        name, inline, value = arg.partition("=")
        if name in ("--configfile", "--configfiles"):
            taking = not inline
            if inline:
                files.append(value)
        elif arg.startswith("-") and not _negative_number(arg):
            taking = False
        elif taking:
            files.append(arg)
    return files


def merged_config(base: str | os.PathLike | None, overlays: list[str]) -> dict:
    """The config a Snakefile with ``configfile: base`` sees under ``--configfile overlays``:
    each file updates the one before, key by key (as Snakemake merges them)."""
    import yaml
    from snakemake.utils import update_config

    config: dict = {}
    for path in ([base] if base is not None and Path(base).is_file() else []) + overlays:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def _negative_number(arg: str) -> bool:
    try:
        float(arg)
        return True
    except ValueError:
        return False


def dry_run(
    snakefile: str, workdir: str, extra_args: list[str], cwd: str | None = None, declared_needs: bool = False
) -> str:
    """Snakemake's dry-run of every job; extra_args come last, so they override ours. GPU jobs
    carry resource gpu_why in it. ``declared_needs``: place by the rules' declared needs,
    ignoring calibrated ones."""
    from gpubio.gpu.placement import ENV_DECLARED_NEEDS, ENV_EXPLAIN

    env = dict(os.environ, **{ENV_EXPLAIN: "1"})
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


class SourceSizes:
    """Each job's input size in MB: its existing input files, and for an input not made yet
    the existing files it is made from (traced through the jobs' outputs). A directory counts
    the files in it. Jobs of one rule made from the same files share them."""

    def __init__(self, jobs: list[DryRunJob], directory: str | os.PathLike = "."):
        self.directory = Path(directory)
        self.jobs = jobs
        self.producer = {path: i for i, job in enumerate(jobs) for path in job.output}
        self._sources: dict[int, frozenset[str]] = {}
        self._bytes: dict[str, int | None] = {}
        sharers: dict[tuple[str, frozenset[str]], int] = {}
        self._shares: dict[int, tuple[str, frozenset[str]]] = {}
        for i, job in enumerate(jobs):
            if _number(job.resources.get("gpu")) > 0:
                key = (job.rule, self.sources(i))
                sharers[key] = sharers.get(key, 0) + 1
                self._shares[i] = key
        self._sharers = sharers

    def _size(self, path: str) -> int | None:
        if path not in self._bytes:
            full = self.directory / path
            try:
                if full.is_dir():
                    self._bytes[path] = sum(f.stat().st_size for f in full.rglob("*") if f.is_file())
                else:
                    self._bytes[path] = full.stat().st_size
            except OSError:
                self._bytes[path] = None
        return self._bytes[path]

    def sources(self, index: int) -> frozenset[str]:
        found = self._sources.get(index)
        if found is None:
            self._sources[index] = frozenset()  # a cycle cannot happen in a DAG; this guards it
            paths: set[str] = set()
            for path in self.jobs[index].input:
                if self._size(path) is not None:
                    paths.add(path)
                elif path in self.producer:
                    paths |= self.sources(self.producer[path])
            found = self._sources[index] = frozenset(paths)
        return found

    def mb(self, index: int) -> float:
        paths = self.sources(index)
        total = sum(self._size(p) or 0 for p in paths) / 1024 / 1024
        key = self._shares.get(index)
        return total / self._sharers[key] if key is not None else total


def plan_table(jobs: list[DryRunJob], site, directory: str | os.PathLike = "."):
    """One row per job (rule `all` left out): placement, expected and reserved GPU time, cost."""
    import pandas as pd

    from gpubio.gpu.estimates import expected_time
    from gpubio.gpu.placement import gpu_pools

    pools = {(p.partition.name, p.gres_type): p.model for p in gpu_pools(site.inventory, site.catalogue)}
    first_model = {}  # partition -> its first GPU model, for a spread (untyped) request
    for (name, _), model in pools.items():
        first_model.setdefault(name, model)
    sizes = SourceSizes(jobs, directory)
    economics = site.economics
    rows = []
    for i, job in enumerate(jobs):
        if job.rule == "all":
            continue
        res = job.resources
        gpus = int(_number(res.get("gpu")))
        partition = res.get("slurm_partition", "")
        gres = res.get("gpu_model", "") if gpus else ""
        first = partition.split(",")[0]
        model = (pools.get((first, gres)) or (first_model.get(first) if not gres else None)) if gpus else None
        reserved_min = _number(res.get("runtime"))
        size = sizes.mb(i) if gpus else None
        expected = (
            expected_time(job.rule, gpus, model.speed, size, site.needs.get(job.rule)) if model is not None else None
        )
        hourly = economics.hourly(model) if model is not None else None
        reserved_hours = gpus * reserved_min / 60
        expected_hours = expected.gpu_hours(gpus) if expected is not None else None
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
                "input_mb": round(size, 3) if size is not None else None,
                "expected_min": round(expected.minutes, 2) if expected is not None else None,
                "reserved_min": reserved_min,
                "expected_gpu_hours": round(expected_hours, 4) if expected_hours is not None else 0.0,
                "reserved_gpu_hours": round(reserved_hours, 4),
                "expected_from": expected.source if expected is not None else "",
                "cost_per_gpu_hour": hourly,
                "expected_cost": round(expected_hours * hourly, 4) if hourly is not None else 0.0,
                "reserved_cost": round(reserved_hours * hourly, 4) if hourly is not None else 0.0,
                "why": res.get("gpu_why", "") if gpus else "",
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["rule", "wildcards"], kind="stable", ignore_index=True)


def partition_totals(table, site=None):
    """Jobs, GPU jobs, expected and reserved GPU-hours and cost per partition, and a last row
    ``(total)``; ``note`` says why a GPU partition of ``site`` takes CPU jobs (the site has
    no partition without GPUs)."""
    import pandas as pd

    totals = table.groupby("partition", sort=True).agg(
        jobs=("rule", "size"),
        gpu_jobs=("gpus", lambda g: int((g > 0).sum())),
        **{column: (column, "sum") for column in TOTALS},
    )
    totals = totals.reset_index()
    gpu_partitions = {p.name for p in site.inventory.partitions if p.has_gpus} if site is not None else set()
    takes_cpu_jobs = totals["partition"].isin(gpu_partitions) & (totals["jobs"] > totals["gpu_jobs"])
    totals["note"] = takes_cpu_jobs.map(
        {True: "takes CPU jobs: the site has no partition without GPUs (cheapest GPUs that fit first)", False: ""}
    )
    total = {"partition": "(total)", "jobs": len(table), "gpu_jobs": int((table["gpus"] > 0).sum()), "note": ""}
    total |= {column: table[column].sum() for column in TOTALS}
    totals = pd.concat([totals, pd.DataFrame([total])], ignore_index=True)
    totals[TOTALS] = totals[TOTALS].astype(float).round(4)
    return totals


def sample_totals(table):
    """GPU jobs, expected and reserved GPU-hours and cost per sample; jobs over several samples
    (an atlas, a training, a run's basecalling) in ``(shared)``, then ``(total)``."""
    import pandas as pd

    gpu = table[table["gpus"] > 0].assign(sample=lambda t: t["sample"].replace("", "(shared)"))
    totals = gpu.groupby("sample", sort=True).agg(gpu_jobs=("rule", "size"), **{c: (c, "sum") for c in TOTALS})
    totals = totals.reset_index()
    total = {"sample": "(total)", "gpu_jobs": len(gpu)} | {c: gpu[c].sum() for c in TOTALS}
    totals = pd.concat([totals, pd.DataFrame([total])], ignore_index=True)
    totals[TOTALS] = totals[TOTALS].astype(float).round(4)
    return totals


DECLARED_COLUMNS = [
    "gpu_model",
    "vram_gb",
    "expected_gpu_hours",
    "reserved_gpu_hours",
    "expected_cost",
    "reserved_cost",
]


def with_declared(calibrated, declared):
    """The calibrated plan with the declared plan's model, VRAM, GPU-hours and cost beside it."""
    keys = ["rule", "wildcards"]
    side = declared[keys + DECLARED_COLUMNS].rename(columns={c: f"declared_{c}" for c in DECLARED_COLUMNS})
    return calibrated.merge(side, on=keys, how="left")


def compare_totals(table, cost_unit: str = "relative cost") -> str:
    """Expected and reserved GPU-hours and cost of the whole plan, declared needs against calibrated."""
    lines = ["declared needs against calibrated (gpubio calibrate):"]
    for label, prefix in (("declared", "declared_"), ("calibrated", "")):
        lines.append(
            f"  {label:>10}: expected {table[prefix + 'expected_gpu_hours'].sum():.2f} GPU-hours"
            f" ({cost_unit} {table[prefix + 'expected_cost'].sum():.2f}),"
            f" reserved {table[prefix + 'reserved_gpu_hours'].sum():.2f}"
            f" ({cost_unit} {table[prefix + 'reserved_cost'].sum():.2f})"
        )
    moved = table[(table["gpus"] > 0) & (table["gpu_model"] != table["declared_gpu_model"])]
    for _, row in moved.iterrows():
        job = " ".join(filter(None, (row["rule"], row["wildcards"])))
        lines.append(
            f"  {job}: {row['declared_gpu_model']} ({row['declared_vram_gb']} GB declared)"
            f" -> {row['gpu_model']} ({row['vram_gb']} GB calibrated)"
        )
    return "\n".join(lines)


SHOWN = ["rule", "wildcards", "gpus", "model", "partition", "expected_min", "reserved_min", "expected_from"]


def format_plan(table, totals, site=None) -> str:
    """What `gpubio plan` prints: each GPU job, totals per partition and per sample (both
    expected and reserved GPU-hours and cost), why each GPU rule went where it did."""
    gpu = table[table["gpus"] > 0]
    cpu_jobs = len(table) - len(gpu)
    priced = site is not None and bool(site.economics.prices)
    unit = "cost (gpu.prices)" if priced else "relative cost (T4 = 1 per GPU-hour)"
    lines = [
        f"GPU jobs ({len(gpu)}; {cpu_jobs} CPU job{'s' if cpu_jobs != 1 else ''} not shown):",
        gpu[SHOWN].to_string(index=False) if len(gpu) else "  none",
        "",
        "per partition, expected against reserved:",
        totals.to_string(index=False),
    ]
    if len(gpu):
        lines += ["", "per sample:", sample_totals(table).to_string(index=False)]
        why = gpu.drop_duplicates(["rule", "partition", "why"])
        lines += ["", "why each GPU rule went where it did:"]
        lines += [
            f"  {r.rule} -> {r.partition}: {r.why or 'not known until its inputs exist'}" for r in why.itertuples()
        ]
    note = site.cpu_jobs_note() if site is not None else None
    if note:
        lines += ["", note]
    lines.append(
        "\nreserved: GPUs x the runtime limit (what the cluster holds for a job, an upper bound); "
        "expected: GPUs x the time it should take (expected_from: calibrated = this lab's runs, "
        "`gpubio calibrate`; estimate = the rule's rough figure at its input size, README: GPUs). "
        f"Costs: GPU-hours x {unit}."
    )
    return "\n".join(lines)


def write_plan(table, out: str, site=None) -> None:
    from gpubio.atomic import atomic_path

    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    with atomic_path(Path(out).with_suffix(".partitions.tsv")) as tmp:
        partition_totals(table, site).to_csv(tmp, sep="\t", index=False)
    with atomic_path(Path(out).with_suffix(".samples.tsv")) as tmp:
        sample_totals(table).to_csv(tmp, sep="\t", index=False)

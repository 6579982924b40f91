"""Dry-run cost of the gpubio workflow against bare Snakefiles with the same jobs.

All get 1,000 samples per domain built from the demo files. Two baselines, both with exactly
as many jobs per rule as the gpubio DAG:
- same structure: every bare job depends on the bare twins of its gpubio job's parents (read
  from `snakemake --dag`), so Snakemake does the same DAG work (resolving one job's output as
  another's input) and only gpubio's own machinery differs;
- flat: each job has one input file and no dependencies (cheaper for Snakemake itself).
Each is dry-run REPEATS times in this one run, alternating, and the fastest time is kept.
The ratio gpubio / same-structure is what the target (<= 1.3x, best of two) is about: the
price of config and sheet validation, input functions and the GPU/resource machinery.

    python bench/dag_overhead.py [--samples 1000] [--repeats 2] [--write bench/results/dag_overhead.md]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

BARE_RULE = """
rule bare_{name}:
    input: "{input}"
    output: "bare/{name}/{{i}}.out"
    shell: "touch {{output}}"
"""


def bare_snakefile(counts: dict[str, int], input_file: str) -> str:
    """A flat Snakefile with exactly `counts[rule]` jobs per rule of the gpubio DAG."""
    rules = {name: n for name, n in counts.items() if name not in ("all", "total")}
    targets = [f'expand("bare/{name}/{{i}}.out", i=range({n}))' for name, n in rules.items()]
    text = "rule all:\n    input: " + ", ".join(targets) + "\n"
    return text + "".join(BARE_RULE.format(name=name, input=input_file) for name in rules)


CHAINED_RULE = """
rule chain_{name}:
    input: lambda wc: [f"chain/{{rule}}/{{j}}.out" for rule, j in PARENTS["{name}"][int(wc.i)]] or ["{input}"]
    output: "chain/{name}/{{i}}.out"
    shell: "touch {{output}}"
"""


def dag_structure(dot: str) -> dict[str, list[list[tuple[str, int]]]]:
    """From `snakemake --dag`: per rule, for each of its jobs, the (rule, index) of its parents."""
    labels = dict(re.findall(r"^\s*(\d+)\[label = \"([^\"\\]+)", dot, re.MULTILINE))
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE)
    index: dict[str, tuple[str, int]] = {}
    counts: dict[str, int] = {}
    for node, rule in labels.items():
        if rule == "all":
            continue
        index[node] = (rule, counts.get(rule, 0))
        counts[rule] = counts.get(rule, 0) + 1
    parents: dict[str, list[list[tuple[str, int]]]] = {rule: [[] for _ in range(n)] for rule, n in counts.items()}
    for parent, child in edges:
        if parent in index and child in index:
            rule, i = index[child]
            parents[rule][i].append(index[parent])
    return parents


def chained_snakefile(parents: dict[str, list[list[tuple[str, int]]]], input_file: str) -> str:
    """A bare Snakefile with the gpubio DAG's jobs and dependencies, one touch per job."""
    targets = [f'expand("chain/{name}/{{i}}.out", i=range({len(jobs)}))' for name, jobs in parents.items()]
    text = f"PARENTS = {parents!r}\n\nrule all:\n    input: " + ", ".join(targets) + "\n"
    return text + "".join(CHAINED_RULE.format(name=name, input=input_file) for name in parents)


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:") :].splitlines()[3:]
    counts = {}
    for line in table:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        counts[parts[0]] = int(parts[1])
    return counts


def make_project(root: Path, n: int) -> None:
    from gpubio.demo import demo_as_project, make_demo, sheet_text

    os.chdir(root)
    rows = make_demo("resources/demo", seed=1)
    demo_as_project(REPO, root)  # the demo's settings; its sheets are replaced below
    for domain, domain_rows in rows.items():
        template = next(iter(domain_rows.values()))
        many = {f"s{i:05d}": template for i in range(n)}
        (root / "config" / f"{domain}.tsv").write_text(sheet_text(domain, many))


def dry_run(root: Path, snakefile: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[float, str]:
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-s", str(snakefile), "-n", "--cores", "1", *extra],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dry-run of {snakefile} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def dry_run_seconds(root: Path, snakefile: Path, env: dict[str, str] | None = None) -> tuple[float, dict[str, int]]:
    elapsed, stdout = dry_run(root, snakefile, env=env)
    return elapsed, job_counts(stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="samples per domain")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--write", help="also write the result table (markdown) here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.samples)
        _, counts = dry_run_seconds(root, REPO / "Snakefile")  # warm-up; gives the job counts
        _, dot = dry_run(root, REPO / "Snakefile", "--dag")
        seed = "resources/demo/genomics/reference.fa"
        (root / "Snakefile.flat").write_text(bare_snakefile(counts, seed))
        (root / "Snakefile.chained").write_text(chained_snakefile(dag_structure(dot), seed))
        # gpubio also with Python's own garbage-collector settings (gpubio/dag_memory.py)
        snakefiles = {
            "gpubio": (REPO / "Snakefile", None),
            "gpubio, GC defaults": (REPO / "Snakefile", {"GPUBIO_GC": "default"}),
            "same structure": (root / "Snakefile.chained", None),
            "flat": (root / "Snakefile.flat", None),
        }
        times: dict[str, list[float]] = {name: [] for name in snakefiles}
        jobs = {}
        for _ in range(args.repeats):
            for name, (snakefile, env) in snakefiles.items():
                seconds, stats = dry_run_seconds(root, snakefile, env)
                jobs[name] = stats["total"]
                times[name].append(seconds)
        if len(set(jobs.values())) != 1:
            raise SystemExit(f"job counts differ: {jobs}")
        best = {k: min(v) for k, v in times.items()}
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        lines = [
            f"samples per domain: {args.samples}; jobs in each DAG: {jobs['gpubio']}; load average at the end: {load}"
        ]
        for name in snakefiles:
            lines.append(f"{name:>19}: best {best[name]:.2f} s of {', '.join(f'{t:.2f}' for t in times[name])}")
        for base in ("same structure", "flat"):
            lines.append(f"ratio gpubio / {base}: {best['gpubio'] / best[base]:.2f}x")
        lines.append(
            f"ratio gpubio with GC defaults / same structure: {best['gpubio, GC defaults'] / best['same structure']:.2f}x"
        )
        print("\n".join(lines))
        if args.write:
            write_table(Path(args.write), args, jobs["gpubio"], best, load)


def write_table(path: Path, args, jobs: int, best: dict[str, float], load: str) -> None:
    rows = [
        f"| {base} | {jobs:,} | {best[base]:.2f} s | {best['gpubio']:.2f} s | **{best['gpubio'] / best[base]:.2f}x** |"
        for base in ("same structure", "flat")
    ]
    default_gc = best["gpubio, GC defaults"]
    rows.append(
        f"| same structure, gpubio with Python's GC defaults (`GPUBIO_GC=default`) | {jobs:,} |"
        f" {best['same structure']:.2f} s | {default_gc:.2f} s | {default_gc / best['same structure']:.2f}x |"
    )
    path.write_text(
        f"# DAG overhead: dry-run of {args.samples:,} samples per domain\n\n"
        f"Command: `.venv/bin/python bench/dag_overhead.py --samples {args.samples} --repeats {args.repeats}"
        f" --write {path}` ({os.cpu_count()}-core CPU machine; best of {args.repeats}, baselines and gpubio"
        f" alternating in one run; load average 1/5/15 min at the end: {load}, on a machine shared with other work).\n\n"
        "| baseline | jobs | baseline | gpubio | ratio (target <= 1.3x against the same structure) |\n"
        "| --- | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n\n"
        "Same structure: every bare job depends on the bare twins of its gpubio job's parents (from"
        " `snakemake --dag`), so Snakemake does the same DAG work and the ratio is the price of gpubio's"
        " own machinery (config and sheet validation, input functions, GPU placement resources), less"
        " what gpubio saves by collecting cyclic garbage less often while the DAG is built (the last row"
        " runs gpubio without that)."
        " Flat: the same job counts without dependencies.\n"
    )


if __name__ == "__main__":
    main()

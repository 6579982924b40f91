"""Dry-run cost of the gpubio workflow against a bare Snakefile with the same jobs.

Both get 1,000 samples per domain built from the demo files; the bare Snakefile has exactly as
many jobs per rule as the gpubio DAG (flat, one input file each). Each is dry-run
REPEATS times in this one run, alternating, and the fastest time is kept.
The ratio gpubio / bare is what the target (<= 1.5x) is about: it is the price of config
and sheet validation, input functions and the GPU/resource machinery.

    python bench/dag_overhead.py [--samples 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
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
    from gpubio.demo import make_demo, sheet_text

    os.chdir(root)
    rows = make_demo("resources/demo", seed=1)
    (root / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", root / "config" / "config.yaml")
    for domain, domain_rows in rows.items():
        template = next(iter(domain_rows.values()))
        many = {f"s{i:05d}": template for i in range(n)}
        (root / "config" / f"{domain}.tsv").write_text(sheet_text(domain, many))


def dry_run_seconds(root: Path, snakefile: Path) -> tuple[float, dict[str, int]]:
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-s", str(snakefile), "-n", "--cores", "1"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dry-run of {snakefile} failed:\n{proc.stdout}\n{proc.stderr}")
    return elapsed, job_counts(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="samples per domain")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.samples)
        _, counts = dry_run_seconds(root, REPO / "Snakefile")  # warm-up; gives the job counts
        (root / "Snakefile.bare").write_text(bare_snakefile(counts, "resources/demo/genomics/reference.fa"))
        times = {"gpubio": [], "bare": []}
        jobs = {}
        for _ in range(args.repeats):
            for name, snakefile in (("gpubio", REPO / "Snakefile"), ("bare", root / "Snakefile.bare")):
                seconds, stats = dry_run_seconds(root, snakefile)
                jobs[name] = stats["total"]
                times[name].append(seconds)
        if jobs["gpubio"] != jobs["bare"]:
            raise SystemExit(f"job counts differ: {jobs}")
        best = {k: min(v) for k, v in times.items()}
        print(f"samples per domain: {args.samples}; jobs in each DAG: {jobs['gpubio']}")
        for name in ("bare", "gpubio"):
            print(f"{name:>7}: best {best[name]:.2f} s of {', '.join(f'{t:.2f}' for t in times[name])}")
        print(f"ratio gpubio / bare: {best['gpubio'] / best['bare']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()

"""Dry-run cost of the gpubio workflow against a bare Snakefile with the same jobs.

Both get 1,000 samples per domain (3,000 QC jobs, 3 summaries, `all`) built from the
demo files; each is dry-run REPEATS times in this one run and the fastest time is kept.
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

BARE_SNAKEFILE = '''
configfile: "bare.yaml"
N = config["n"]
SAMPLES = [f"s{i:05d}" for i in range(N)]
DOMAINS = {"genomics": "resources/demo/genomics/ont.fastq.gz",
           "transcriptomics": "resources/demo/transcriptomics/pbmc1.h5",
           "imaging": "resources/demo/imaging/nuclei1.tif"}

rule all:
    input: expand("results/{domain}/summary.tsv", domain=DOMAINS)

rule qc:
    input: lambda wc: DOMAINS[wc.domain]
    output: "results/{domain}/{sample}/qc.json"
    shell: "touch {output}"

rule summary:
    input: lambda wc: expand("results/{domain}/{sample}/qc.json", domain=wc.domain, sample=SAMPLES)
    output: "results/{domain}/summary.tsv"
    shell: "touch {output}"
'''


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
    (root / "Snakefile.bare").write_text(BARE_SNAKEFILE)
    (root / "bare.yaml").write_text(f"n: {n}\n")


def dry_run_seconds(root: Path, snakefile: Path) -> tuple[float, int]:
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-s", str(snakefile), "-n", "--quiet", "all", "--cores", "1"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dry-run of {snakefile} failed:\n{proc.stdout}\n{proc.stderr}")
    total = [line for line in proc.stdout.splitlines() if line.startswith("total")]
    return elapsed, int(total[0].split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="samples per domain")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, args.samples)
        times = {"gpubio": [], "bare": []}
        jobs = {}
        for _ in range(args.repeats):
            for name, snakefile in (("gpubio", REPO / "Snakefile"), ("bare", root / "Snakefile.bare")):
                seconds, jobs[name] = dry_run_seconds(root, snakefile)
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

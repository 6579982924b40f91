"""Genomics on the independent data set: precision and recall per sample and variant class.

The data set (tests/independent/genomics.py, no gpubio code) is three assembly-style contigs
with soft-masked stretches and an N run, a paired-end FASTQ sample with short inserts (both
mates clipped) and an aligned-BAM sample with a foreign read-group sample, each with its own
planted SNPs and indels. The genomics module runs on it through Snakemake; PASS calls are
scored against the truth.

    python bench/genomics_independent.py [--coverage 30] [--seed 7] [--cores 2] [--repo DIR]

--repo runs another checkout's Snakefile on the same data (e.g. an older commit exported with
`git archive`), for before/after figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from independent.genomics import make_genomics_set, precision_recall  # noqa: E402

SAMPLES = {
    "pairs": "pairs\tillumina\tdata/pairs_R1.fq.gz\tdata/pairs_R2.fq.gz\t\n",
    "aligned": "aligned\tillumina\t\t\tdata/aligned_input.bam\n",
}


def environment(repo: Path) -> dict:
    """Jobs run `python -m gpubio`: this interpreter, with the checkout's package first."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "workflow"), env.get("PYTHONPATH", "")])
    return env


def run(repo: Path, workdir: Path, coverage: float, seed: int, cores: int) -> tuple[dict, float, float]:
    start = time.perf_counter()
    data = make_genomics_set(workdir / "data", seed=seed, coverage=coverage)
    generated = time.perf_counter() - start
    shutil.copytree(repo / "config", workdir / "config")
    for sheet in ("transcriptomics", "imaging"):
        (workdir / "config" / f"{sheet}.tsv").write_text("")
    (workdir / "config" / "genomics.tsv").write_text(
        "sample\tplatform\tfastq_1\tfastq_2\tbam\n" + "".join(SAMPLES.values())
    )
    settings = {"genomics": {"reference": "data/genome.fa", "variant_effects": {"enabled": False}}}
    (workdir / "config" / "independent.yaml").write_text(json.dumps(settings))
    targets = [f"results/genomics/{s}/variants.vcf.gz" for s in SAMPLES]
    snakemake = Path(sys.executable).parent / "snakemake"
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(snakemake),
            "-s",
            str(repo / "Snakefile"),
            "--directory",
            str(workdir),
            "--configfile",
            "config/config.yaml",
            "config/independent.yaml",
            "--cores",
            str(cores),
            *targets,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=environment(repo),
    )
    if proc.returncode:
        sys.exit(f"the workflow failed:\n{proc.stderr[-3000:]}")
    workflow = time.perf_counter() - start
    scores = {
        s: precision_recall(workdir / "results" / "genomics" / s / "variants.vcf.gz", data["truth"][s]) for s in SAMPLES
    }
    return scores, generated, workflow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coverage", type=float, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose Snakefile runs (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genomics-independent-") as tmp:
        scores, generated, workflow = run(args.repo.resolve(), Path(tmp), args.coverage, args.seed, args.cores)
    print(f"data set: {generated:.1f} s; workflow ({args.cores} cores): {workflow:.1f} s")
    print("| sample | class | TP | FP | FN | precision | recall |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for sample, classes in scores.items():
        for kind, r in classes.items():
            print(
                f"| {sample} | {kind} | {r['tp']} | {r['fp']} | {r['fn']} | {r['precision']:.3f} | {r['recall']:.3f} |"
            )


if __name__ == "__main__":
    main()

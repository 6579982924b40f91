"""Genomics benchmarks: variant-effect throughput against batch size, and the CPU chain as a
workflow against the same steps run by hand in one process.

1. Variant effects: variants/s of the Enformer scorer (ref + alt window per variant) for
   batch sizes 1..32, on the demo's tiny Enformer (512-bp windows) and a mid-size random one
   (dim 384, 2 transformer layers, 8,192-bp windows). On a GPU machine ``--full`` adds the
   published size (dim 1536, depth 11, 196,608-bp windows; random weights, timing only).
2. CPU chain: the genomics demo (2 samples, FASTQ -> mappy -> sort -> QC -> bcftools ->
   normalise + filter -> Enformer effects) through Snakemake on all cores, against one Python
   process calling the same gpubio functions one after another.

    python bench/genomics.py [--batches 1 2 4 8 16 32] [--full] [--skip-chain]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

MID_SIZE = dict(
    dim=384,
    depth=2,
    heads=8,
    attn_dim_key=64,
    num_downsamples=7,
    dim_divisible_by=128,
    output_heads={"human": 5313},
    target_length=-1,
)
FULL_SIZE = dict(dim=1536, depth=11, heads=8, output_heads={"human": 5313, "mouse": 1643}, target_length=896)


def effect_throughput(weights: Path, window: int, reference: str, variants, batches, device, repeats=2) -> dict:
    import torch

    from gpubio.genomics.effects import load_effect_model, score_variants

    model = load_effect_model("enformer", weights, window, device)
    score_variants(model, reference, variants[:2], 2)  # warm-up (allocations, kernels)
    rates = {}
    for batch in batches:
        best = float("inf")
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            score_variants(model, reference, variants, batch)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        rates[batch] = len(variants) / best
        print(f"  batch {batch:>3}: {rates[batch]:8.2f} variants/s", flush=True)
    return rates


def variants_for(reference: str, n: int, window: int):
    """n SNPs spread over the reference, away from the ends."""
    import pysam

    from gpubio.genomics.effects import Variant

    with pysam.FastaFile(reference) as fasta:
        contig, length = fasta.references[0], fasta.lengths[0]
        step = max(1, (length - window) // n)
        out = []
        for k in range(n):
            pos = min(length - 2, window // 2 + k * step)
            ref = fasta.fetch(contig, pos, pos + 1).upper()
            out.append(Variant(contig, pos + 1, ref, "A" if ref != "A" else "C"))
    return out


def long_reference(path: Path, length: int = 400_000) -> str:
    import numpy as np
    import pysam

    seq = "".join(np.random.default_rng(0).choice(list("ACGT"), size=length))
    path.write_text(">bench\n" + "\n".join(seq[i : i + 80] for i in range(0, length, 80)) + "\n")
    pysam.faidx(str(path))
    return str(path)


def chain_by_hand(root: Path, threads: int) -> float:
    """The demo's genomics steps in one process, in order (what the rules run, minus Snakemake)."""
    import pysam
    import torch

    from gpubio.demo import demo_config
    from gpubio.genomics.align import align_reads, sort_and_index
    from gpubio.genomics.alignment_qc import write_alignment_qc
    from gpubio.genomics.effects import load_effect_model, read_variants, score_variants, write_effects
    from gpubio.genomics.plots import plot_coverage, plot_read_qc, plot_variants
    from gpubio.genomics.read_qc import write_read_qc
    from gpubio.genomics.variants import call_bcftools, finish_calls

    start = time.perf_counter()
    demo = root / "resources" / "demo" / "genomics"
    ref = str(demo / "reference.fa")
    pysam.faidx(ref)
    settings = demo_config(REPO)["genomics"]["variant_effects"]
    torch.set_num_threads(settings["threads"])  # as the workflow's scoring jobs
    out = root / "byhand"
    inputs = {
        "illu1": ("illumina", [demo / "illumina_R1.fastq.gz", demo / "illumina_R2.fastq.gz"]),
        "ont1": ("ont", [demo / "ont.fastq.gz"]),
    }
    model = None
    for sample, (platform, reads) in inputs.items():
        d = out / sample
        reads = [str(r) for r in reads]
        write_read_qc(reads, str(d / "read_qc.json"))
        align_reads(reads, ref, platform, sample, str(d / "unsorted.bam"), threads)
        sort_and_index(str(d / "unsorted.bam"), str(d / "aligned.bam"), sample, platform, threads)
        write_alignment_qc(str(d / "aligned.bam"), str(d / "read_qc.json"), str(d / "qc.json"), str(d / "coverage.tsv"))
        call_bcftools(str(d / "aligned.bam"), ref, platform, str(d / "calls.vcf.gz"), threads)
        finish_calls(str(d / "calls.vcf.gz"), ref, sample, 10, str(d / "variants.vcf.gz"), threads)
        model = model or load_effect_model("enformer", demo / "enformer_tiny", 512, "cpu")
        rows = score_variants(model, ref, list(read_variants(str(d / "variants.vcf.gz"))), 8)
        write_effects(rows, str(d / "variant_effects.tsv"))
    samples = list(inputs)
    plot_read_qc([str(out / s / "qc.json") for s in samples], str(out / "read_qc.png"))
    plot_coverage([str(out / s / "coverage.tsv") for s in samples], str(out / "coverage.png"))
    plot_variants(
        [str(out / s / "variants.vcf.gz") for s in samples],
        10,
        [str(out / s / "variant_effects.tsv") for s in samples],
        str(out / "variants.png"),
        str(out / "variant_summary.tsv"),
    )
    return time.perf_counter() - start


def chain_workflow(root: Path, cores: int) -> tuple[float, int]:
    snakemake = Path(sys.executable).parent / "snakemake"
    targets = [
        f"results/genomics/{s}/{f}"
        for s in ("illu1", "ont1")
        for f in ("qc.json", "variants.vcf.gz", "variant_effects.tsv")
    ]
    targets += ["results/genomics/read_qc.png", "results/genomics/variants.png"]
    env = dict(os.environ, PATH=f"{snakemake.parent}{os.pathsep}{os.environ['PATH']}")  # the rules run `python`
    start = time.perf_counter()
    proc = subprocess.run(
        [str(snakemake), "-s", str(REPO / "Snakefile"), "--cores", str(cores), *targets],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"workflow failed:\n{proc.stdout}\n{proc.stderr}")
    jobs = sum(1 for line in proc.stderr.splitlines() if line.startswith("Finished jobid"))
    return elapsed, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--full", action="store_true", help="also the published Enformer size (GPU machines)")
    parser.add_argument("--skip-chain", action="store_true")
    parser.add_argument("--skip-effects", action="store_true")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from gpubio.demo import demo_as_project, make_demo
    from gpubio.genomics.effects import pick_device

    device = pick_device()
    torch.set_num_threads(args.cores)
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU, {args.cores} threads"
    print(f"device: {name}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cwd = os.getcwd()
        os.chdir(root)
        make_demo("resources/demo", seed=1)
        os.chdir(cwd)
        demo = root / "resources" / "demo" / "genomics"
        if not args.skip_effects:
            effect_benchmarks(root, demo, args, device)
        if args.skip_chain:
            return
        demo_as_project(REPO, root)
        for sheet in ("transcriptomics", "imaging"):
            (root / "config" / f"{sheet}.tsv").write_text("")
        workflow_s, jobs = chain_workflow(root, args.cores)
        hand_s = chain_by_hand(root, args.cores)
        print(
            f"CPU chain, 2 demo samples: workflow {workflow_s:.1f} s ({jobs} jobs, {args.cores} cores), "
            f"by hand in one process {hand_s:.1f} s; ratio {workflow_s / hand_s:.2f}x"
        )


def effect_benchmarks(root: Path, demo: Path, args, device: str) -> None:
    from gpubio.demo.genomics import write_tiny_enformer

    print("variant effects, tiny Enformer (demo weights, 512-bp windows), 64 variants:")
    variants = variants_for(str(demo / "reference.fa"), 64, 512)
    effect_throughput(demo / "enformer_tiny", 512, str(demo / "reference.fa"), variants, args.batches, device)
    reference = long_reference(root / "long.fa")
    mid = write_tiny_enformer(root / "enformer_mid", seed=0, **MID_SIZE)
    print("variant effects, mid-size Enformer (dim 384, depth 2, 5313 tracks, 8192-bp windows), 16 variants:")
    effect_throughput(
        mid, 8192, reference, variants_for(reference, 16, 8192), [b for b in args.batches if b <= 16], device, repeats=1
    )
    if args.full:
        full = write_tiny_enformer(root / "enformer_full", seed=0, **FULL_SIZE)
        print("variant effects, published-size Enformer (random weights, 196608-bp windows), 16 variants:")
        effect_throughput(
            full,
            196_608,
            reference,
            variants_for(reference, 16, 196_608),
            [b for b in args.batches if b <= 8],
            device,
            repeats=1,
        )


if __name__ == "__main__":
    main()

"""Synthetic genome, planted variants and reads (Illumina pairs, ONT long reads).

Truth: `truth.vcf` (every planted SNP and indel with its genotype) and, per sample,
`<sample>.truth.json` with the numbers read QC must report for the FASTQ files written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gpubio.demo import gzip_text
from gpubio.genomics.read_qc import n50

BASES = np.array(list("ACGT"))
COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
CONTIGS = {"chr1": 30_000, "chr2": 20_000}


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


def random_genome(rng: np.random.Generator) -> dict[str, str]:
    return {
        name: "".join(BASES[rng.choice(4, size=length, p=[0.28, 0.22, 0.22, 0.28])]) for name, length in CONTIGS.items()
    }


def plant_variants(rng: np.random.Generator, genome: dict[str, str]) -> list[dict]:
    """SNPs and 1-4 bp indels, >= 300 bp apart and 1 kb from contig ends; 2/3 homozygous."""
    variants = []
    for contig, seq in genome.items():
        positions = np.arange(1000, len(seq) - 1000, 700)
        positions = positions + rng.integers(-150, 150, size=len(positions))
        for k, pos in enumerate(positions):  # 0-based position of REF's first base
            kind = "indel" if k % 5 == 4 else "snp"
            ref_base = seq[pos]
            if kind == "snp":
                ref, alt = ref_base, str(rng.choice([b for b in "ACGT" if b != ref_base]))
            elif rng.random() < 0.5:  # insertion after the anchor base
                ins = "".join(BASES[rng.integers(0, 4, size=int(rng.integers(1, 5)))])
                ref, alt = ref_base, ref_base + ins
            else:  # deletion of 1-4 bases after the anchor base
                length = int(rng.integers(1, 5))
                ref, alt = seq[pos : pos + 1 + length], ref_base
            genotype = "1/1" if rng.random() < 2 / 3 else "0/1"
            variants.append({"contig": contig, "pos": int(pos) + 1, "ref": ref, "alt": alt, "gt": genotype})
    return _left_align_safe(variants, genome)


def _left_align_safe(variants: list[dict], genome: dict[str, str]) -> list[dict]:
    """Drop indels in repeats (their normalised position would differ from the planted one)."""
    kept = []
    for v in variants:
        seq, i = genome[v["contig"]], v["pos"] - 1
        if len(v["ref"]) != len(v["alt"]):
            indel = v["alt"][1:] if len(v["alt"]) > len(v["ref"]) else v["ref"][1:]
            before = seq[i + 1 - len(indel) : i + 1]
            after = seq[i + 1 + (len(v["ref"]) - 1) : i + 1 + (len(v["ref"]) - 1) + len(indel)]
            if indel in (before, after) or indel[0] == seq[i] or indel[-1] == seq[i]:
                continue
        kept.append(v)
    return kept


def haplotypes(genome: dict[str, str], variants: list[dict]) -> list[dict[str, str]]:
    """Two haplotype genomes: hap 0 carries every variant, hap 1 only the homozygous ones."""
    haps = []
    for hap in range(2):
        out = {}
        for contig, seq in genome.items():
            pieces, cursor = [], 0
            for v in sorted((v for v in variants if v["contig"] == contig), key=lambda v: v["pos"]):
                if hap == 1 and v["gt"] == "0/1":
                    continue
                i = v["pos"] - 1
                pieces += [seq[cursor:i], v["alt"]]
                cursor = i + len(v["ref"])
            pieces.append(seq[cursor:])
            out[contig] = "".join(pieces)
        haps.append(out)
    return haps


def _mutate(rng: np.random.Generator, seq: str, error_rate: float) -> str:
    arr = np.array(list(seq))
    hits = np.flatnonzero(rng.random(len(arr)) < error_rate)
    for i in hits:
        arr[i] = rng.choice([b for b in "ACGT" if b != arr[i]])
    return "".join(arr)


def _quals(rng: np.random.Generator, n: int, lo: int, hi: int) -> np.ndarray:
    return rng.integers(lo, hi + 1, size=n)


def _sample_fragment(rng, haps, length):
    hap = haps[int(rng.integers(0, 2))]
    contig = str(rng.choice(list(CONTIGS), p=np.array(list(CONTIGS.values())) / sum(CONTIGS.values())))
    seq = hap[contig]
    start = int(rng.integers(0, len(seq) - length))
    return seq[start : start + length]


def _fastq_record(name: str, seq: str, quals: np.ndarray) -> str:
    return f"@{name}\n{seq}\n+\n{''.join(chr(q + 33) for q in quals)}\n"


def simulate_illumina(rng, haps, depth: float, read_len=150, insert=350, error_rate=0.002):
    total = sum(CONTIGS.values())
    n_pairs = int(depth * total / (2 * read_len))
    r1, r2 = [], []
    for k in range(n_pairs):
        frag = _sample_fragment(rng, haps, insert + int(rng.integers(-30, 31)))
        if rng.random() < 0.5:
            frag = revcomp(frag)
        a, b = frag[:read_len], revcomp(frag)[:read_len]
        r1.append((f"pair{k}/1", _mutate(rng, a, error_rate), _quals(rng, read_len, 30, 40)))
        r2.append((f"pair{k}/2", _mutate(rng, b, error_rate), _quals(rng, read_len, 30, 40)))
    return r1, r2


def simulate_ont(rng, haps, depth: float, mean_len=3000, error_rate=0.005):
    total = sum(CONTIGS.values())
    reads, bases = [], 0
    while bases < depth * total:
        length = int(np.clip(rng.lognormal(np.log(mean_len), 0.5), 300, 15_000))
        frag = _sample_fragment(rng, haps, length)
        if rng.random() < 0.5:
            frag = revcomp(frag)
        reads.append((f"read{len(reads)}", _mutate(rng, frag, error_rate), _quals(rng, length, 12, 30)))
        bases += length
    return reads


def write_fastq(path: Path, records) -> None:
    with gzip_text(path) as fh:
        for name, seq, quals in records:
            fh.write(_fastq_record(name, seq, quals))


def read_qc_truth(files: list[list]) -> dict:
    lengths = np.array([len(seq) for records in files for _, seq, _ in records])
    quals = np.concatenate([q for records in files for _, _, q in records])
    return {
        "reads": int(len(lengths)),
        "bases": int(lengths.sum()),
        "n50": int(n50(lengths)),
        "mean_length": float(lengths.mean()),
        "mean_quality": float(quals.mean()),
    }


def write_vcf(path: Path, variants: list[dict], sample: str = "truth") -> None:
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={c},length={n}>" for c, n in CONTIGS.items()]
    lines += [
        '##INFO=<ID=TYPE,Number=1,Type=String,Description="snp or indel">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", sample]),
    ]
    for v in sorted(variants, key=lambda v: (list(CONTIGS).index(v["contig"]), v["pos"])):
        kind = "snp" if len(v["ref"]) == len(v["alt"]) else "indel"
        lines.append(
            "\t".join([v["contig"], str(v["pos"]), ".", v["ref"], v["alt"], ".", "PASS", f"TYPE={kind}", "GT", v["gt"]])
        )
    path.write_text("\n".join(lines) + "\n")


# A randomly initialised Enformer small enough for the CPU: same code path as the published
# model (from_pretrained on a local directory), 512-bp windows, 8 output tracks.
TINY_ENFORMER = dict(
    dim=48,
    depth=1,
    heads=2,
    attn_dim_key=8,
    num_downsamples=4,
    dim_divisible_by=8,
    output_heads={"human": 8},
    target_length=-1,
    dropout_rate=0.0,
    attn_dropout=0.0,
    pos_dropout=0.0,
)
TINY_ENFORMER_WINDOW = 512


def write_tiny_enformer(path: Path, seed: int, **hparams) -> Path:
    """Save a random Enformer (deterministic for a seed) where a real one would be staged."""
    import torch
    from enformer_pytorch import Enformer

    torch.manual_seed(seed)
    model = Enformer.from_hparams(**{**TINY_ENFORMER, **hparams})
    model.save_pretrained(str(path), safe_serialization=False)
    return path


def make_genomics(outdir: Path, rng: np.random.Generator, depth: float = 30) -> dict:
    """Write reference.fa, truth.vcf, two samples' FASTQs and a tiny Enformer; return the sheet rows."""
    outdir.mkdir(parents=True, exist_ok=True)
    genome = random_genome(rng)
    with open(outdir / "reference.fa", "w") as fh:
        for name, seq in genome.items():
            fh.write(f">{name}\n")
            fh.writelines(seq[i : i + 80] + "\n" for i in range(0, len(seq), 80))
    variants = plant_variants(rng, genome)
    write_vcf(outdir / "truth.vcf", variants)
    haps = haplotypes(genome, variants)

    r1, r2 = simulate_illumina(rng, haps, depth)
    write_fastq(outdir / "illumina_R1.fastq.gz", r1)
    write_fastq(outdir / "illumina_R2.fastq.gz", r2)
    ont = simulate_ont(rng, haps, depth)
    write_fastq(outdir / "ont.fastq.gz", ont)

    truths = {"illu1": read_qc_truth([r1, r2]), "ont1": read_qc_truth([ont])}
    for sample, truth in truths.items():
        truth["variants"] = len(variants)
        (outdir / f"{sample}.truth.json").write_text(json.dumps(truth, indent=2) + "\n")
    write_tiny_enformer(outdir / "enformer_tiny", seed=int(rng.integers(2**31)))
    return {
        "illu1": {"platform": "illumina", "fastq_1": "illumina_R1.fastq.gz", "fastq_2": "illumina_R2.fastq.gz"},
        "ont1": {"platform": "ont", "fastq_1": "ont.fastq.gz"},
    }

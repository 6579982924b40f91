"""An independent genomics data set with known truth, shaped unlike the demo.

A multi-contig reference with assembly-style names, soft-masked (lower-case) stretches and an
N run; per sample two haplotypes with planted SNPs and indels (some inside soft-masked
sequence); paired-end Illumina-like reads from short inserts, so both mates read through into
the adapter and carry soft clips; and an aligned BAM written from each read's true origin
(its true CIGAR) with a foreign read-group sample name. Built from numpy and pysam only:
nothing here calls gpubio, so the truth does not share its mistakes.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONTIGS = (("chr2_KI270767v1_alt", 60_000), ("NC_000913.3", 50_000), ("scaffold_12", 40_000))
N_RUN = ("NC_000913.3", 20_000, 20_800)  # [start, end) of the N run
# TruSeq adapters as read 1 and read 2 see them after the insert
ADAPTER_1 = "AGATCGGAAGAGCACACGTCTGAACTCCAGTCACATCACGATCTCGTATGCCGTCTTCTGCTTG"
ADAPTER_2 = "AGATCGGAAGAGCGTCGTGTAGGGAAAGAGTGTAGATCTCGGTGGTCGCCGTATCATTAAAAAA"
READ_LENGTH = 150
FOREIGN_SAMPLE = "donorX"
COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


@dataclass(frozen=True)
class PlantedVariant:
    chrom: str
    pos: int  # 1-based, VCF style (indels anchored on the base before)
    ref: str  # upper case, as a VCF has it
    alt: str
    homozygous: bool
    soft_masked: bool

    @property
    def kind(self) -> str:
        return "snp" if len(self.ref) == len(self.alt) == 1 else "indel"


# --------------------------------------------------------------------------- reference


def make_reference(rng: np.random.Generator) -> dict[str, str]:
    """Random contigs, each with soft-masked stretches; one holds an N run."""
    contigs = {}
    for name, length in CONTIGS:
        seq = np.array(list("ACGT"))[rng.integers(0, 4, length)]
        for _ in range(4):
            start, size = int(rng.integers(1_000, length - 4_000)), int(rng.integers(1_000, 3_000))
            seq[start : start + size] = np.char.lower(seq[start : start + size])
        if name == N_RUN[0]:
            seq[N_RUN[1] : N_RUN[2]] = "N"
        contigs[name] = "".join(seq)
    return contigs


def write_fasta(contigs: dict[str, str], path: Path, width: int = 60) -> Path:
    with open(path, "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name} independent test contig\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    return path


# --------------------------------------------------------------------------- variants


def _left_aligned(seq: str, anchor: int, changed: str) -> bool:
    """An indel after `anchor` (0-based) changing `changed` cannot shift left when the anchor
    base differs from the last changed base."""
    return seq[anchor].upper() != changed[-1].upper()


def plant_variants(rng: np.random.Generator, contigs: dict[str, str], snps: int, indels: int) -> list[PlantedVariant]:
    """SNPs and indels 1-6 bp, >= 80 bp apart, away from contig ends and the N run, a share of
    them inside soft-masked sequence; a third homozygous."""
    taken: list[tuple[str, int]] = []
    planted = []
    kinds = ["snp"] * snps + ["indel"] * indels
    for i, kind in enumerate(kinds):
        want_masked = i % 3 == 0
        while True:
            chrom = str(rng.choice([c for c, _ in CONTIGS]))
            seq = contigs[chrom]
            p0 = int(rng.integers(400, len(seq) - 400))  # 0-based anchor / SNP base
            if chrom == N_RUN[0] and N_RUN[1] - 300 < p0 < N_RUN[2] + 300:
                continue
            if seq[p0].islower() != want_masked or seq[p0 - 10 : p0 + 15].islower() != want_masked:
                continue
            if any(c == chrom and abs(p - p0) < 80 for c, p in taken):
                continue
            ref_base = seq[p0].upper()
            if kind == "snp":
                alt = str(rng.choice([b for b in "ACGT" if b != ref_base]))
                variant = (p0 + 1, ref_base, alt)
            elif rng.random() < 0.5:  # deletion of seq[p0+1 : p0+1+n]
                n = int(rng.integers(1, 7))
                deleted = seq[p0 + 1 : p0 + 1 + n].upper()
                if not _left_aligned(seq, p0, deleted) or seq[p0 + 1 + n].upper() == deleted[0]:
                    continue  # keep it unambiguous on both sides
                variant = (p0 + 1, ref_base + deleted, ref_base)
            else:
                n = int(rng.integers(1, 7))
                inserted = "".join(rng.choice(list("ACGT"), n))
                if not _left_aligned(seq, p0, inserted) or seq[p0 + 1].upper() == inserted[0]:
                    continue
                variant = (p0 + 1, ref_base, ref_base + inserted)
            break
        taken.append((chrom, p0))
        planted.append(PlantedVariant(chrom, *variant, homozygous=rng.random() < 1 / 3, soft_masked=want_masked))
    return sorted(planted, key=lambda v: ([c for c, _ in CONTIGS].index(v.chrom), v.pos))


def write_truth_vcf(variants: list[PlantedVariant], contigs: dict[str, str], sample: str, path: Path) -> Path:
    lines = ["##fileformat=VCFv4.2"]
    lines += [f"##contig=<ID={name},length={len(seq)}>" for name, seq in contigs.items()]
    lines += ['##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">']
    lines += ["\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", sample])]
    for v in variants:
        gt = "1/1" if v.homozygous else "0/1"
        lines.append(f"{v.chrom}\t{v.pos}\t.\t{v.ref}\t{v.alt}\t.\tPASS\t.\tGT\t{gt}")
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- haplotypes


def haplotypes(contigs: dict[str, str], variants: list[PlantedVariant], rng: np.random.Generator):
    """{contig: [(sequence, reference position of each base or -1 for inserted bases)] * 2}."""
    on_hap = {v: ({0, 1} if v.homozygous else {int(rng.integers(0, 2))}) for v in variants}
    result = {}
    for name, seq in contigs.items():
        pair = []
        for hap in (0, 1):
            parts, origin, cursor = [], [], 0
            for v in (v for v in variants if v.chrom == name and hap in on_hap[v]):
                p0 = v.pos - 1
                parts.append(seq[cursor:p0])
                origin.append(np.arange(cursor, p0))
                # the anchor (or SNP) base, then what the ALT adds
                parts.append(v.alt[0] if v.kind == "snp" else seq[p0])
                origin.append(np.array([p0]))
                if len(v.alt) > 1:
                    parts.append(v.alt[1:])
                    origin.append(np.full(len(v.alt) - 1, -1))
                cursor = p0 + len(v.ref)
            parts.append(seq[cursor:])
            origin.append(np.arange(cursor, len(seq)))
            pair.append(("".join(parts).upper(), np.concatenate(origin).astype(np.int64)))
        result[name] = pair
    return result


def true_cigar(origin: np.ndarray) -> tuple[int, str]:
    """Reference start and CIGAR of a read covering these haplotype bases (inserted bases at an
    end become soft clips)."""
    ops: list[list] = []
    previous = None
    for ref_pos in origin.tolist():
        if ref_pos < 0:
            op = "I"
        else:
            if previous is not None and ref_pos > previous + 1:
                ops.append(["D", ref_pos - previous - 1])
            previous, op = ref_pos, "M"
        if ops and ops[-1][0] == op:
            ops[-1][1] += 1
        else:
            ops.append([op, 1])
    if ops[0][0] == "I":
        ops[0][0] = "S"
    if ops[-1][0] == "I":
        ops[-1][0] = "S"
    start = int(origin[origin >= 0][0])
    return start, "".join(f"{n}{op}" for op, n in ops)


# --------------------------------------------------------------------------- reads


def _with_errors(seq: str, rng: np.random.Generator, rate: float) -> str:
    hit = np.flatnonzero(rng.random(len(seq)) < rate)
    if not hit.size:
        return seq
    bases = np.array(list(seq))
    for i in hit:
        bases[i] = rng.choice([b for b in "ACGT" if b != bases[i]])
    return "".join(bases)


def _quality(rng: np.random.Generator, length: int) -> str:
    return "".join(chr(33 + q) for q in rng.integers(30, 41, length))


def fragment_lengths(rng: np.random.Generator, count: int) -> np.ndarray:
    """A third short inserts (both mates read into the adapter), the rest 200-450 bp."""
    short = rng.random(count) < 1 / 3
    return np.where(short, rng.integers(90, 146, count), rng.integers(200, 451, count))


def write_pairs(haps, coverage: float, rng: np.random.Generator, out_1: Path, out_2: Path, error_rate=0.001) -> int:
    """Paired FASTQ (gzipped) at about `coverage` over the reference; returns the pair count."""
    total = sum(len(h[0][0]) for h in haps.values())
    count = int(coverage * total / (2 * READ_LENGTH))
    names = list(haps)
    weights = np.array([len(haps[n][0][0]) for n in names], dtype=float)
    chroms = rng.choice(len(names), count, p=weights / weights.sum())
    lengths = fragment_lengths(rng, count)
    with gzip.open(out_1, "wt", compresslevel=1) as f1, gzip.open(out_2, "wt", compresslevel=1) as f2:
        for i in range(count):
            seq, _ = haps[names[chroms[i]]][int(rng.integers(0, 2))]
            length = int(lengths[i])
            start = int(rng.integers(0, len(seq) - length))
            fragment = seq[start : start + length]
            if rng.random() < 0.5:
                fragment = revcomp(fragment)
            r1 = (fragment + ADAPTER_1 + "A" * READ_LENGTH)[:READ_LENGTH]
            r2 = (revcomp(fragment) + ADAPTER_2 + "A" * READ_LENGTH)[:READ_LENGTH]
            name = f"pair{i:06d}"
            f1.write(f"@{name}/1\n{_with_errors(r1, rng, error_rate)}\n+\n{_quality(rng, READ_LENGTH)}\n")
            f2.write(f"@{name}/2\n{_with_errors(r2, rng, error_rate)}\n+\n{_quality(rng, READ_LENGTH)}\n")
    return count


def write_aligned_bam(
    haps, contigs: dict[str, str], coverage: float, rng: np.random.Generator, out: Path, error_rate=0.001
) -> int:
    """Single-end reads placed where they came from (true CIGAR), sorted and indexed, with a
    read group whose SM is not the sheet's sample name."""
    import pysam

    names = list(contigs)
    header = {
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": n, "LN": len(s)} for n, s in contigs.items()],
        "RG": [{"ID": "lane1", "SM": FOREIGN_SAMPLE, "PL": "ILLUMINA", "LB": "lib1"}],
    }
    total = sum(len(s) for s in contigs.values())
    count = int(coverage * total / READ_LENGTH)
    records = []
    for i in range(count):
        tid = int(rng.choice(len(names), p=np.array([len(contigs[n]) for n in names]) / total))
        seq, origin = haps[names[tid]][int(rng.integers(0, 2))]
        start = int(rng.integers(0, len(seq) - READ_LENGTH))
        start_pos, cigar = true_cigar(origin[start : start + READ_LENGTH])
        records.append(
            (
                tid,
                start_pos,
                f"read{i:06d}",
                _with_errors(seq[start : start + READ_LENGTH], rng, error_rate),
                cigar,
                bool(rng.random() < 0.5),
            )
        )
    records.sort(key=lambda r: (r[0], r[1]))
    with pysam.AlignmentFile(str(out), "wb", header=header) as bam:
        for tid, pos, name, seq, cigar, reverse in records:
            rec = pysam.AlignedSegment(bam.header)
            rec.query_name, rec.reference_id, rec.reference_start = name, tid, pos
            rec.cigarstring, rec.mapping_quality, rec.flag = cigar, 60, 16 if reverse else 0
            rec.query_sequence = seq
            rec.query_qualities = pysam.qualitystring_to_array(_quality(rng, READ_LENGTH))
            rec.set_tag("RG", "lane1")
            bam.write(rec)
    pysam.index(str(out))
    return count


# --------------------------------------------------------------------------- the set


def make_genomics_set(out: Path, seed: int = 7, coverage: float = 30.0, snps: int = 40, indels: int = 20) -> dict:
    """Reference, a paired FASTQ sample and an aligned-BAM sample, each with its own truth VCF."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    contigs = make_reference(rng)
    write_fasta(contigs, out / "genome.fa")
    result = {"reference": out / "genome.fa", "contigs": contigs, "truth": {}}
    for sample in ("pairs", "aligned"):
        variants = plant_variants(rng, contigs, snps, indels)
        haps = haplotypes(contigs, variants, rng)
        write_truth_vcf(variants, contigs, sample, out / f"{sample}.truth.vcf")
        result["truth"][sample] = variants
        if sample == "pairs":
            write_pairs(haps, coverage, rng, out / "pairs_R1.fq.gz", out / "pairs_R2.fq.gz")
        else:
            write_aligned_bam(haps, contigs, coverage, rng, out / "aligned_input.bam")
    return result


def write_clipped_pairs(contigs: dict[str, str], count: int, rng: np.random.Generator, out_1: Path, out_2: Path) -> int:
    """Pairs whose mates both carry a clip at each end: a few non-genomic bases before the insert
    (5' clip) and the adapter after a short insert (3' clip), from both strands."""
    names = [n for n, _ in CONTIGS]
    with open(out_1, "w") as f1, open(out_2, "w") as f2:
        for i in range(count):
            seq = contigs[names[i % len(names)]].upper()
            length = int(rng.integers(80, 121))
            while True:
                start = int(rng.integers(0, len(seq) - length))
                fragment = seq[start : start + length]
                if "N" not in fragment:
                    break
            if i % 2:
                fragment = revcomp(fragment)
            mates = []
            for insert, adapter in ((fragment, ADAPTER_1), (revcomp(fragment), ADAPTER_2)):
                junk = "".join(rng.choice(list("ACGT"), int(rng.integers(10, 21))))
                mates.append((junk + insert + adapter + "A" * READ_LENGTH)[:READ_LENGTH])
            for fh, mate in zip((f1, f2), mates):
                fh.write(f"@clip{i:05d}\n{mate}\n+\n{_quality(rng, READ_LENGTH)}\n")
    return count


def precision_recall(vcf: Path, truth: list[PlantedVariant]) -> dict[str, dict]:
    """Per class (snp, indel): true/false positives, false negatives, precision and recall of the
    PASS calls of a VCF against the planted variants (alleles compared exactly)."""
    import pysam

    with pysam.VariantFile(str(vcf)) as fh:
        calls = {(r.chrom, r.pos, r.ref, a) for r in fh if list(r.filter) in ([], ["PASS"]) for a in r.alts}
    result = {}
    for kind in ("snp", "indel"):
        true = {(v.chrom, v.pos, v.ref, v.alt) for v in truth if v.kind == kind}
        called = {c for c in calls if (len(c[2]) == len(c[3]) == 1) == (kind == "snp")}
        tp = len(true & called)
        result[kind] = {
            "tp": tp,
            "fp": len(called - true),
            "fn": len(true - called),
            "precision": tp / len(called) if called else 0.0,
            "recall": tp / len(true),
        }
    return result

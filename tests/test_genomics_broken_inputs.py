"""Inputs labs send every week that used to give a silent wrong result or a traceback: a BAM
aligned to other contig names than the reference, reads that map nowhere (all N, or another
genome), a truncated .fastq.gz, a read-2 file shorter than read 1, a FASTA named .fastq.gz,
and htslib's index noise in the variant-calling logs. Each file is written here, by the test."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path

import numpy as np
import pysam
import pytest

from conftest import gpubio, run_snakemake

READ_LENGTH = 100


def random_bases(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(list("ACGT"), length))


def write_reference(path: Path, contigs: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for name, seq in contigs.items():
            fh.write(f">{name}\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60)))
    return path


def fastq_text(reads: list[tuple[str, str]]) -> str:
    return "".join(f"@{name}\n{seq}\n+\n{'I' * len(seq)}\n" for name, seq in reads)


def sampled_reads(rng: np.random.Generator, genome: str, count: int, prefix: str = "read") -> list[tuple[str, str]]:
    starts = rng.integers(0, len(genome) - READ_LENGTH, count)
    return [(f"{prefix}{i}", genome[s : s + READ_LENGTH]) for i, s in enumerate(starts)]


def the_one_line(proc: subprocess.CompletedProcess, command: str) -> str:
    """The step failed with one line of its own: no traceback, no htslib lines around it."""
    lines = [line for line in proc.stderr.strip().splitlines() if " gpubio INFO " not in line]
    assert proc.returncode != 0, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr and "[E::" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"gpubio: {command}: "), lines[0]
    return lines[0]


@pytest.fixture
def genome(tmp_path) -> tuple[Path, str]:
    seq = random_bases(np.random.default_rng(18), 6000)
    reference = write_reference(tmp_path / "ref" / "genome.fa", {"chr1": seq[:4000], "chr2": seq[4000:]})
    pysam.faidx(str(reference))
    return reference, seq[:4000]


# --------------------------------------------------------------------------- refused at start-up


def write_aligned_bam(path: Path, contigs: dict[str, int], reads: list[tuple[str, str]]) -> Path:
    """A coordinate-sorted BAM whose reads all sit on its first contig."""
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": n, "LN": ln} for n, ln in contigs.items()]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as bam:
        for k, (name, seq) in enumerate(reads):
            rec = pysam.AlignedSegment(bam.header)
            rec.query_name, rec.query_sequence, rec.flag = name, seq, 0
            rec.reference_id, rec.reference_start, rec.cigarstring = 0, 10 * k, f"{len(seq)}M"
            rec.query_qualities = pysam.qualitystring_to_array("I" * len(seq))
            rec.mapping_quality = 60
            bam.write(rec)
    return path


def test_bam_on_other_contig_names_and_fasta_named_fastq_are_refused_at_start_up(tmp_path, genome):
    reference, chr1 = genome
    reads = sampled_reads(np.random.default_rng(1), chr1, 20)
    data = tmp_path / "data"
    data.mkdir()
    # aligned elsewhere to Ensembl-style names (1, 2, MT), to an assembly with an extra contig, and here
    write_aligned_bam(data / "ensembl.bam", {"1": 4000, "2": 2000, "MT": 16569}, reads)
    write_aligned_bam(data / "decoy.bam", {"chr1": 4000, "chr2": 2000, "chrUn_KI270302v1": 2274}, reads)
    write_aligned_bam(data / "same.bam", {"chr1": 4000, "chr2": 2000}, reads)
    with gzip.open(data / "fasta.fastq.gz", "wt") as fh:  # sequences only, no qualities
        fh.writelines(f">{name}\n{seq}\n" for name, seq in reads)
    with gzip.open(data / "good_R1.fastq.gz", "wt") as fh:
        fh.write(fastq_text(reads))
    (tmp_path / "dna.tsv").write_text(
        "sample\tplatform\tfastq_1\tfastq_2\tbam\n"
        "ens\tillumina\t\t\tdata/ensembl.bam\n"
        "decoy\tillumina\t\t\tdata/decoy.bam\n"
        "same\tillumina\t\t\tdata/same.bam\n"
        "fa\tillumina\tdata/good_R1.fastq.gz\tdata/fasta.fastq.gz\t\n"
    )
    config = {
        "gpu": {"needs": ""},
        "genomics": {"samples": "dna.tsv", "reference": "ref/genome.fa", "variant_effects": {"enabled": False}},
        "transcriptomics": {"samples": "none.tsv"},
        "imaging": {"samples": "none.tsv"},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(json.dumps(config))

    proc = run_snakemake(tmp_path, "-n", check=False)

    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in output and "Traceback" not in output, output
    lines = [line.strip() for line in output.splitlines() if line.startswith("  dna.tsv row ")]
    assert len(lines) == 3, output
    ens, decoy, fasta = lines
    assert ens.startswith("dna.tsv row 1 (line 2, sample 'ens'): bam 'data/ensembl.bam' names contigs 1, 2, MT")
    assert "genomics.reference 'ref/genome.fa' does not have (none of the BAM's 3 contigs is in it" in ens
    assert "the reference has chr1, chr2)" in ens and "differ by a 'chr' prefix ('1' vs 'chr1')" in ens
    assert ens.endswith(
        "give the reference the BAM was aligned to, or rename the BAM's contigs to the reference's (samtools reheader)"
    )
    assert decoy.startswith(
        "dna.tsv row 2 (line 3, sample 'decoy'): bam 'data/decoy.bam' names contig chrUn_KI270302v1"
    )
    assert "(1 of the BAM's 3 contigs missing there" in decoy and "'chr' prefix" not in decoy
    assert fasta == (
        "dna.tsv row 4 (line 5, sample 'fa'): fastq_2 'data/fasta.fastq.gz' is FASTA (reads without base "
        "qualities), not FASTQ; give the reads as FASTQ, with their qualities"
    )


def test_contig_check_reads_only_the_bam_header(tmp_path):
    from gpubio.genomics.inputs import bam_contigs

    names = {f"HLA-A*01:01:01:{k:02d}": 3000 + k for k in range(40)} | {"chrEBV": 171823}
    bam = write_aligned_bam(tmp_path / "many.bam", names, [("r", "ACGT" * 25)])
    assert bam_contigs(bam) == list(names)
    data = bam.read_bytes()
    (tmp_path / "cut.bam").write_bytes(data[:60])  # inside the header's first block
    with pytest.raises(EOFError):
        bam_contigs(tmp_path / "cut.bam")


# --------------------------------------------------------------------------- failed in the job


def test_truncated_fastq_gz_fails_with_one_line(tmp_path, genome):
    reference, chr1 = genome
    whole = tmp_path / "whole_R1.fastq.gz"
    with gzip.open(whole, "wt") as fh:
        fh.write(fastq_text(sampled_reads(np.random.default_rng(2), chr1, 3000)))
    cut = tmp_path / "cut_R1.fastq.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])  # a transfer stopped part-way

    line = the_one_line(gpubio("read-qc", str(cut), "--out", str(tmp_path / "qc.json")), "read-qc")
    assert line == (
        f"gpubio: read-qc: {cut} is cut short: its gzip stream ends before its end marker; "
        "transfer it again from the source (and compare its checksum)"
    )
    proc = gpubio(
        "align-reads", str(cut), "--reference", str(reference), "--platform", "illumina", "--sample", "s",
        "--out", str(tmp_path / "a.bam"),
    )  # fmt: skip
    assert the_one_line(proc, "align-reads") == line.replace("read-qc", "align-reads")
    assert not (tmp_path / "qc.json").exists() and not (tmp_path / "a.bam").exists()


def test_read_2_with_fewer_reads_than_read_1_says_so(tmp_path, genome):
    reference, chr1 = genome
    pairs = sampled_reads(np.random.default_rng(3), chr1, 10)
    r1, r2 = tmp_path / "s_R1.fq", tmp_path / "s_R2.fq"
    r1.write_text(fastq_text(pairs))
    r2.write_text(fastq_text(pairs[:7]))  # the same names in the same order, three reads short
    for first, second, short, full, mate in ((r1, r2, r2, r1, "read 2"), (r2, r1, r2, r1, "read 1")):
        proc = gpubio(
            "align-reads", str(first), str(second), "--reference", str(reference), "--platform", "illumina",
            "--sample", "s", "--out", str(tmp_path / "p.bam"),
        )  # fmt: skip
        line = the_one_line(proc, "align-reads")
        assert line == (
            f"gpubio: align-reads: {short} ({mate}) has fewer reads than its mate file {full}: it ends after 7 reads; "
            "it is cut short or not this sample's mate file: transfer it again or give the matching mates"
        )
        assert "same order" not in line and not (tmp_path / "p.bam").exists()


def test_fasta_named_fastq_is_refused_not_scored_as_quality_zero(tmp_path):
    fasta = tmp_path / "reads.fastq.gz"
    with gzip.open(fasta, "wt") as fh:
        fh.write(">r1 sample=x\nACGTACGTAA\n>r2\nTTGCA\n")
    line = the_one_line(gpubio("read-qc", str(fasta), "--out", str(tmp_path / "qc.json")), "read-qc")
    assert line == (
        f"gpubio: read-qc: {fasta} is FASTA, not FASTQ: read 'r1' has no base qualities; "
        "give the reads as FASTQ, with their qualities"
    )
    assert not (tmp_path / "qc.json").exists()


@pytest.mark.parametrize("kind", ["all N", "another genome"])
def test_reads_that_map_nowhere_fail_the_samples_sort_job(tmp_path, genome, kind):
    reference, _ = genome
    rng = np.random.default_rng(4)
    if kind == "all N":  # a failed run: no base called
        reads = [(f"n{i}", "N" * READ_LENGTH) for i in range(60)]
    else:  # the right file format, another organism's reads
        reads = sampled_reads(rng, random_bases(rng, 5000), 60, prefix="other")
    fq = tmp_path / "x.fastq"
    fq.write_text(fastq_text(reads))
    unsorted, out = tmp_path / "x.unsorted.bam", tmp_path / "aligned.bam"
    align = gpubio(
        "align-reads", str(fq), "--reference", str(reference), "--platform", "illumina", "--sample", "x",
        "--out", str(unsorted),
    )  # fmt: skip
    assert align.returncode == 0, align.stderr

    line = the_one_line(
        gpubio("sort-bam", str(unsorted), "--sample", "x", "--platform", "illumina", "--out", str(out)), "sort-bam"
    )

    if kind == "all N":
        assert line == (
            f"gpubio: sort-bam: sample 'x': none of its reads maps to the reference, and all 60 reads in {unsorted} "
            "are N only: no base was called; the sequencing or basecalling of this sample failed: redo it or remove the sample"
        )
    else:
        assert line == (
            f"gpubio: sort-bam: sample 'x': none of its 60 reads maps to the reference ({unsorted}; reference contigs "
            "chr1, chr2); check that genomics.reference is this organism's genome and the reads are this sample's"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "x.fastq", "x.unsorted.bam"]


def test_variant_calling_logs_have_no_index_lookup_noise(tmp_path, genome):
    reference, chr1 = genome
    rng = np.random.default_rng(5)
    alt = chr1[:2000] + ("A" if chr1[2000] != "A" else "C") + chr1[2001:]  # one homozygous SNP at 2001
    fq = tmp_path / "snp.fastq"
    fq.write_text(fastq_text(sampled_reads(rng, alt, 600)))
    calls, final = tmp_path / "calls.vcf.gz", tmp_path / "variants.vcf.gz"
    steps = [
        ("align-reads", str(fq), "--reference", str(reference), "--platform", "illumina", "--sample", "snp",
         "--out", str(tmp_path / "u.bam")),
        ("sort-bam", str(tmp_path / "u.bam"), "--sample", "snp", "--platform", "illumina", "--out", str(tmp_path / "s.bam")),
        ("call-bcftools", str(tmp_path / "s.bam"), "--reference", str(reference), "--platform", "illumina",
         "--out", str(calls)),
        # a sample name other than the sheet's: the renaming path opens a file without index too
        ("finish-variants", str(calls), "--reference", str(reference), "--sample", "renamed", "--min-qual", "20",
         "--out", str(final)),
    ]  # fmt: skip
    for step in steps:
        proc = gpubio(*step)
        assert proc.returncode == 0, proc.stderr
        assert "[E::" not in proc.stderr and "idx_find_and_load" not in proc.stderr, (step[0], proc.stderr)
    with pysam.VariantFile(str(final)) as vcf:
        records = [(r.chrom, r.pos, r.alts, r.filter.keys()) for r in vcf]
        assert list(vcf.header.samples) == ["renamed"]
    assert records == [("chr1", 2001, (alt[2000],), ["PASS"])]


# --------------------------------------------------------------------------- QC


def test_qc_summary_shows_each_samples_mapped_fraction(tmp_path):
    from gpubio.qc_summary import write_qc_summary

    files = []
    for sample, fraction in (("good", 0.987), ("poor", 0.031)):
        qc = {"reads": 1000, "n50": 150, "mean_quality": 35.0, "mapped_fraction": fraction}
        path = tmp_path / sample / "qc.json"
        path.parent.mkdir()
        path.write_text(json.dumps(qc))
        files.append(str(path))
    write_qc_summary("genomics", files, str(tmp_path / "qc_summary.tsv"), str(tmp_path / "qc_summary.png"))
    header, *rows = (tmp_path / "qc_summary.tsv").read_text().splitlines()
    assert header.split("\t") == ["sample", "reads", "n50", "mean_quality", "mapped_fraction"]
    assert [row.split("\t")[::4] for row in rows] == [["good", "0.987"], ["poor", "0.031"]]

"""Genomics on inputs shaped unlike the demo: paired mates with clips at both ends, references
that must be refused, soft-masked sequence, empty inputs and foreign read groups. Test data
comes from tests/independent/genomics.py, never from gpubio."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pysam
import pytest

from independent.genomics import (
    CONTIGS,
    FOREIGN_SAMPLE,
    make_reference,
    write_clipped_pairs,
    write_fasta,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("independent-reference")
    contigs = make_reference(np.random.default_rng(11))
    return write_fasta(contigs, out / "genome.fa"), contigs


# --------------------------------------------------------------------------- 1. paired mates


def solo_records(aligner, seq: str) -> list[tuple]:
    """(contig, start, reverse, CIGAR) of a mate aligned on its own: single-end mappy reports query
    coordinates on the read as given, so the clips are q_st and len - q_en, swapped on the - strand."""
    out = []
    for hit in aligner.map(seq):
        if not hit.is_primary:
            continue
        head, tail = hit.q_st, len(seq) - hit.q_en
        if hit.strand < 0:
            head, tail = tail, head
        cigar = (f"{head}S" if head else "") + hit.cigar_str + (f"{tail}S" if tail else "")
        out.append((hit.ctg, hit.r_st, hit.strand < 0, cigar))
    return out


def test_paired_mates_keep_their_clips_where_each_mate_aligns_alone(reference, tmp_path):
    import mappy

    from gpubio.genomics.align import align_reads

    fasta, contigs = reference
    fq1, fq2 = tmp_path / "clip_R1.fastq", tmp_path / "clip_R2.fastq"
    write_clipped_pairs(contigs, 300, np.random.default_rng(5), fq1, fq2)
    out = tmp_path / "pairs.bam"
    align_reads([str(fq1), str(fq2)], str(fasta), "illumina", "clipped", str(out), threads=1)

    aligner = mappy.Aligner(str(fasta), preset="sr")
    mates = {
        1: {r.name: r.sequence for r in pysam.FastxFile(str(fq1))},
        2: {r.name: r.sequence for r in pysam.FastxFile(str(fq2))},
    }
    compared, both_ends = 0, {(1, False): 0, (1, True): 0, (2, False): 0, (2, True): 0}
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as bam:
        for rec in bam.fetch(until_eof=True):
            if rec.is_unmapped or rec.is_supplementary:
                continue
            mate = 1 if rec.is_read1 else 2
            expected = solo_records(aligner, mates[mate][rec.query_name])
            assert expected, rec.query_name
            assert (rec.reference_name, rec.reference_start, rec.is_reverse, rec.cigarstring) == expected[0], (
                rec.query_name,
                mate,
            )
            compared += 1
            if re.fullmatch(r"\d+S.*\d+S", rec.cigarstring):
                both_ends[(mate, rec.is_reverse)] += 1
    assert compared >= 590  # nearly every mate of 300 pairs
    assert min(both_ends.values()) >= 50, both_ends  # clips at both ends, each mate, both strands


# --------------------------------------------------------------------------- 2. the reference


def small_contigs() -> dict[str, str]:
    rng = np.random.default_rng(3)
    return {name: "".join(rng.choice(list("ACGTacgt"), 500 + 37 * k)) for k, (name, _) in enumerate(CONTIGS)}


def fasta_text(records: list[tuple[str, str]], width: int = 60) -> str:
    return "".join(
        f">{n} some description\n" + "".join(s[i : i + width] + "\n" for i in range(0, len(s), width))
        for n, s in records
    )


def test_reference_with_a_contig_named_twice_is_refused_even_with_an_index(tmp_path):
    from gpubio.genomics.inputs import reference_problems

    contigs = small_contigs()
    names = list(contigs)
    records = [(names[0], contigs[names[0]]), (names[1], contigs[names[1]]), (names[1], contigs[names[2]])]
    fasta = tmp_path / "dup.fa"
    fasta.write_text(fasta_text(records))
    (problem,) = reference_problems(str(fasta), "config/x.yaml")
    assert problem.startswith(f"config/x.yaml: genomics.reference '{fasta}' names contig 'NC_000913.3' 2 times")
    # htslib's index silently keeps the first copy only: it must not hide the second
    pysam.faidx(str(fasta))
    assert [line.split("\t")[0] for line in Path(f"{fasta}.fai").read_text().splitlines()] == names[:2]
    assert reference_problems(str(fasta), "c.yaml") == [problem.replace("config/x.yaml", "c.yaml")]
    # the same, bgzip-compressed and indexed (.fai + .gzi)
    pysam.tabix_compress(str(fasta), f"{fasta}.gz")
    pysam.faidx(f"{fasta}.gz")
    assert "names contig 'NC_000913.3' 2 times" in reference_problems(f"{fasta}.gz", "c.yaml")[0]


def test_a_current_index_that_matches_the_file_answers_without_scanning(tmp_path, monkeypatch):
    from gpubio.genomics import inputs

    contigs = small_contigs()
    for name, compress in (("plain.fa", False), ("packed.fa", True)):
        fasta = tmp_path / name
        write_fasta(contigs, fasta, width=70)
        if compress:
            pysam.tabix_compress(str(fasta), f"{fasta}.gz")
            fasta = Path(f"{fasta}.gz")
        pysam.faidx(str(fasta))
        assert inputs.indexed_names(str(fasta), inputs.compression(fasta)) == list(contigs)
        with monkeypatch.context() as mp:
            mp.setattr(inputs, "scan_names", lambda *a: pytest.fail("scanned although the index is valid"))
            assert inputs.reference_problems(str(fasta), "c.yaml") == []
    # an index older than its FASTA is not trusted
    fasta = tmp_path / "plain.fa"
    later = Path(f"{fasta}.fai").stat().st_mtime + 10
    import os

    os.utime(fasta, (later, later))
    assert inputs.indexed_names(str(fasta), "plain") is None


def test_streaming_scan_finds_headers_across_chunk_boundaries(tmp_path, monkeypatch):
    from gpubio.genomics import inputs

    contigs = small_contigs()
    fasta = write_fasta(contigs, tmp_path / "g.fa", width=50)
    with gzip.open(tmp_path / "g.fa.gz", "wt") as fh:
        fh.write(fasta.read_text())
    for chunk in (3, 7, 64, 1 << 20):
        monkeypatch.setattr(inputs, "CHUNK", chunk)
        assert list(inputs.scan_names(fasta)) == list(contigs), chunk
        assert list(inputs.scan_names(tmp_path / "g.fa.gz", "gzip")) == list(contigs), chunk


@pytest.mark.parametrize(
    "case, expected",
    [
        ("plain_gzip", "is compressed with plain gzip, which htslib cannot index; recompress it with bgzip"),
        ("empty", "is empty (no '>' contig)"),
        ("blank_lines", "is empty (no '>' contig)"),
        ("fastq", "is not a FASTA file (it does not start with a '>' header line)"),
        ("binary", "is not a FASTA file"),
    ],
)
def test_unusable_references_are_refused_with_the_fix(tmp_path, case, expected):
    from gpubio.genomics.inputs import reference_problems

    path = tmp_path / ("genome.fa.gz" if case == "plain_gzip" else "genome.fa")
    if case == "plain_gzip":
        with gzip.open(path, "wt") as fh:
            fh.write(fasta_text(list(small_contigs().items())))
    elif case == "empty":
        path.write_text("")
    elif case == "blank_lines":
        path.write_text("\n\n  \n")
    elif case == "fastq":
        path.write_text("@read1\nACGT\n+\nIIII\n")
    else:
        path.write_bytes(bytes(range(256)) * 4)
    (problem,) = reference_problems(str(path), "config/config.yaml")
    assert problem.startswith(f"config/config.yaml: genomics.reference '{path}' {expected}")
    assert "\n" not in problem


def test_bgzip_reference_without_index_is_accepted(tmp_path):
    from gpubio.genomics.inputs import reference_problems

    fasta = write_fasta(small_contigs(), tmp_path / "g.fa")
    pysam.tabix_compress(str(fasta), f"{fasta}.gz")
    assert reference_problems(f"{fasta}.gz", "c.yaml") == []


# --------------------------------------------------------------------------- 4. inputs without reads


def empty_bam(path: Path, aligned: bool) -> Path:
    header = {"HD": {"VN": "1.6"}}
    if aligned:
        header["SQ"] = [{"SN": "scaffold_12", "LN": 1000}]
    with pysam.AlignmentFile(str(path), "wb", header=header):
        pass
    return path


def test_files_without_reads_fail_with_one_line_naming_them(tmp_path):
    plain = tmp_path / "none.fastq"
    plain.write_text("")
    packed = tmp_path / "none.fq.gz"
    with gzip.open(packed, "wt"):
        pass
    empty_bam(tmp_path / "none.bam", aligned=True)
    reference = write_fasta({"scaffold_12": "ACGT" * 250}, tmp_path / "ref.fa")
    pysam.faidx(str(reference))
    runs = [
        ("read-qc", str(plain), "--out", str(tmp_path / "qc.json")),
        ("read-qc", str(tmp_path / "none.bam"), "--out", str(tmp_path / "qc.json")),
        (
            "align-reads",
            str(packed),
            str(packed),
            "--reference",
            str(reference),
            "--platform",
            "illumina",
            "--sample",
            "s",
            "--out",
            str(tmp_path / "a.bam"),
        ),
        (
            "sort-bam",
            str(tmp_path / "none.bam"),
            "--sample",
            "s",
            "--platform",
            "illumina",
            "--out",
            str(tmp_path / "sorted.bam"),
        ),
    ]
    for args in runs:
        proc = subprocess.run([sys.executable, "-m", "gpubio", *args], capture_output=True, text=True)
        assert proc.returncode != 0, args
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"gpubio: {args[0]}: {args[1]} holds no reads;"), lines[0]
    assert not list(tmp_path.glob("qc.json")) and not (tmp_path / "a.bam").exists()
    assert not (tmp_path / "sorted.bam").exists()


def test_mates_out_of_order_and_unaligned_bam_to_sort_fail_with_one_line(tmp_path):
    reference = write_fasta({"scaffold_12": "ACGT" * 250}, tmp_path / "ref.fa")
    pysam.faidx(str(reference))
    (tmp_path / "a_R1.fq").write_text("@x\nACGTACGT\n+\nIIIIIIII\n@y\nACGTACGT\n+\nIIIIIIII\n")
    (tmp_path / "a_R2.fq").write_text("@y\nACGTACGT\n+\nIIIIIIII\n@x\nACGTACGT\n+\nIIIIIIII\n")
    unaligned = tmp_path / "unaligned.bam"
    with pysam.AlignmentFile(str(unaligned), "wb", header={"HD": {"VN": "1.6"}}) as bam:
        rec = pysam.AlignedSegment(bam.header)
        rec.query_name, rec.flag, rec.query_sequence = "r", 4, "ACGTACGT"
        bam.write(rec)
    runs = [
        (
            [
                "align-reads",
                str(tmp_path / "a_R1.fq"),
                str(tmp_path / "a_R2.fq"),
                "--reference",
                str(reference),
                "--platform",
                "illumina",
                "--sample",
                "s",
                "--out",
                str(tmp_path / "a.bam"),
            ],
            f"gpubio: align-reads: {tmp_path / 'a_R1.fq'} and {tmp_path / 'a_R2.fq'} are not in the same order",
        ),
        (
            ["sort-bam", str(unaligned), "--sample", "s", "--platform", "illumina", "--out", str(tmp_path / "s.bam")],
            f"gpubio: sort-bam: {unaligned} has no @SQ lines: it is not aligned",
        ),
    ]
    for args, expected in runs:
        proc = subprocess.run([sys.executable, "-m", "gpubio", *args], capture_output=True, text=True)
        problems = [line for line in proc.stderr.strip().splitlines() if " gpubio INFO " not in line]
        assert proc.returncode != 0 and len(problems) == 1 and problems[0].startswith(expected), proc.stderr


def test_a_text_file_named_bam_is_not_a_bam(tmp_path):
    from gpubio.genomics.inputs import bam_problem

    text = tmp_path / "reads.bam"
    text.write_text("read1\tACGT\n")
    assert bam_problem(text) == "is not a BAM file (not BGZF-compressed)"
    bgzf_text = tmp_path / "table.bam"
    pysam.tabix_compress(str(text), str(bgzf_text))
    assert bam_problem(bgzf_text) == "is not a BAM file (BGZF, but no BAM header inside)"
    assert bam_problem(empty_bam(tmp_path / "ok.bam", aligned=False)) is None


# --------------------------------------------------------------------------- 3. soft-masked sequence


def test_lower_case_alleles_from_soft_masked_sequence_are_written_upper_case(tmp_path):
    from gpubio.genomics.effects import read_variants
    from gpubio.genomics.variants import finish_calls

    seq = "ACGTTGCA" * 10 + "acgttgcatgcaaggt" * 5 + "GATTACA" * 10
    reference = write_fasta({"chr2_KI270767v1_alt": seq}, tmp_path / "ref.fa")
    pysam.faidx(str(reference))
    raw = tmp_path / "raw.vcf"
    # a SNP and a deletion inside the lower-case stretch, as a caller copies them from the FASTA
    raw.write_text(
        "##fileformat=VCFv4.2\n##contig=<ID=chr2_KI270767v1_alt,length=230>\n"
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tdonorX\n"
        f"chr2_KI270767v1_alt\t83\t.\t{seq[82]}\tt\t50\t.\t.\tGT\t0/1\n"
        f"chr2_KI270767v1_alt\t101\t.\t{seq[100:103]}\t{seq[100]}\t60\t.\t.\tGT\t1/1\n"
    )
    assert seq[82] == "g" and seq[100:103] == "tgc"
    out = tmp_path / "variants.vcf.gz"
    finish_calls(str(raw), str(reference), "pairs", 10, str(out))
    with pysam.VariantFile(str(out)) as fh:
        assert list(fh.header.samples) == ["pairs"]
        assert [(r.pos, r.ref, r.alts) for r in fh] == [(83, "G", ("T",)), (101, "TGC", ("T",))]
    # the effects table reads alleles from VCFs that may come from elsewhere: upper case there too
    pysam.tabix_compress(str(raw), str(tmp_path / "raw.vcf.gz"))
    assert [(v.ref, v.alt) for v in read_variants(str(tmp_path / "raw.vcf.gz"), pass_only=False)] == [
        ("G", "T"),
        ("TGC", "T"),
    ]


# --------------------------------------------------------------------------- 5. read groups


def test_aligned_bam_with_a_foreign_sample_takes_the_sheets_name(tmp_path):
    from gpubio.genomics.align import sort_and_index

    header = {
        "HD": {"VN": "1.6"},
        "SQ": [{"SN": "scaffold_12", "LN": 1000}],
        "RG": [
            {"ID": "lane1", "SM": FOREIGN_SAMPLE, "PL": "ILLUMINA"},
            {"ID": "lane2", "SM": FOREIGN_SAMPLE, "DS": "second lane", "PL": "ILLUMINA"},
        ],
    }
    source = tmp_path / "in.bam"
    with pysam.AlignmentFile(str(source), "wb", header=header) as bam:
        for i, pos in enumerate((500, 100, 300)):
            rec = pysam.AlignedSegment(bam.header)
            rec.query_name, rec.reference_id, rec.reference_start = f"r{i}", 0, pos
            rec.cigarstring, rec.query_sequence, rec.mapping_quality = "20M", "ACGT" * 5, 60
            rec.set_tag("RG", "lane1" if i else "lane2")
            bam.write(rec)
    out = tmp_path / "aligned.bam"
    sort_and_index(str(source), str(out), "aligned", "illumina")
    with pysam.AlignmentFile(str(out), "rb") as bam:
        groups = bam.header.to_dict()["RG"]
        reads = [(r.reference_start, r.get_tag("RG")) for r in bam.fetch()]
    assert [(g["ID"], g["SM"], g["DS"]) for g in groups] == [
        ("lane1", "aligned", f"original SM: {FOREIGN_SAMPLE}"),
        ("lane2", "aligned", f"second lane; original SM: {FOREIGN_SAMPLE}"),
    ]
    assert reads == [(100, "lane1"), (300, "lane1"), (500, "lane2")]
    assert Path(f"{out}.bai").exists()

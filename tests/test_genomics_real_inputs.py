"""Genomics on inputs shaped unlike the demo: paired mates with clips at both ends, references
that must be refused, soft-masked sequence, empty inputs and foreign read groups. Test data
comes from tests/independent/genomics.py, never from gpubio."""

from __future__ import annotations

import gzip
import re
import shutil
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
    mates = {1: {r.name: r.sequence for r in pysam.FastxFile(str(fq1))},
             2: {r.name: r.sequence for r in pysam.FastxFile(str(fq2))}}  # fmt: skip
    compared, both_ends = 0, {(1, False): 0, (1, True): 0, (2, False): 0, (2, True): 0}
    with pysam.AlignmentFile(str(out), "rb", check_sq=False) as bam:
        for rec in bam.fetch(until_eof=True):
            if rec.is_unmapped or rec.is_supplementary:
                continue
            mate = 1 if rec.is_read1 else 2
            expected = solo_records(aligner, mates[mate][rec.query_name])
            assert expected, rec.query_name
            assert (rec.reference_name, rec.reference_start, rec.is_reverse, rec.cigarstring) == expected[0], (
                rec.query_name, mate)  # fmt: skip
            compared += 1
            if re.fullmatch(r"\d+S.*\d+S", rec.cigarstring):
                both_ends[(mate, rec.is_reverse)] += 1
    assert compared >= 590  # nearly every mate of 300 pairs
    assert min(both_ends.values()) >= 50, both_ends  # clips at both ends, each mate, both strands

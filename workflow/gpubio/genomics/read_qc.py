"""Read QC for FASTQ and BAM: counts, lengths, N50, base quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def n50(lengths) -> int:
    """Length L such that reads of length >= L hold at least half of all bases."""
    lengths = np.sort(np.asarray(lengths, dtype=np.int64))[::-1]
    if lengths.size == 0:
        return 0
    cumulative = np.cumsum(lengths)
    return int(lengths[np.searchsorted(cumulative, cumulative[-1] / 2)])


def _iter_reads(path: str):
    """Yield (length, sum of base qualities) per read of a FASTQ(.gz) or BAM (secondary/supplementary skipped)."""
    import pysam

    from gpubio.genomics.inputs import fastq_records

    if str(path).endswith(".bam"):
        with pysam.AlignmentFile(path, "rb", check_sq=False) as bam:
            for read in bam.fetch(until_eof=True):
                if read.is_secondary or read.is_supplementary:
                    continue
                quals = read.query_qualities
                yield read.query_length, (int(np.sum(quals)) if quals is not None else 0)
    else:
        for record in fastq_records(path):
            yield len(record.sequence), int(sum(record.get_quality_array()))


def histograms(lengths: np.ndarray, read_quals: np.ndarray) -> dict:
    """Read lengths on log10-spaced bins and per-read mean base quality on 1-Phred bins (for plots)."""
    top = max(1, int(lengths.max())) if lengths.size else 1
    length_edges = np.unique(np.round(np.logspace(0, np.log10(top) + 0.05, 41)).astype(int))
    length_counts, _ = np.histogram(lengths, bins=length_edges)
    qual_edges = np.arange(0, 62)
    qual_counts, _ = np.histogram(read_quals, bins=qual_edges)
    return {
        "length_histogram": {"edges": length_edges.tolist(), "counts": length_counts.tolist()},
        "quality_histogram": {"edges": qual_edges.tolist(), "counts": qual_counts.tolist()},
    }


def read_qc(paths: list[str]) -> dict:
    """QC over all reads of the given files (both mates of a pair count as reads)."""
    from gpubio.genomics.inputs import require_reads

    lengths, qual_sums = [], []
    for path in paths:
        require_reads(path)
        for length, qsum in _iter_reads(path):
            lengths.append(length)
            qual_sums.append(qsum)
    lengths = np.asarray(lengths, dtype=np.int64)
    qual_sums = np.asarray(qual_sums, dtype=np.int64)
    bases = int(lengths.sum())
    read_quals = qual_sums / np.maximum(lengths, 1)
    return {
        "files": [Path(p).name for p in paths],
        "reads": int(lengths.size),
        "bases": bases,
        "n50": n50(lengths),
        "mean_length": float(lengths.mean()) if lengths.size else 0.0,
        "max_length": int(lengths.max()) if lengths.size else 0,
        "mean_quality": int(qual_sums.sum()) / bases if bases else 0.0,
        **histograms(lengths, read_quals),
    }


def write_read_qc(paths: list[str], out: str) -> dict:
    from gpubio.atomic import write_text_atomic

    result = read_qc(paths)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    return result

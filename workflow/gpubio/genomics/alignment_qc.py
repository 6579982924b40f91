"""Alignment QC: mapped fraction, depth, and a binned coverage profile from a sorted BAM."""

from __future__ import annotations

import json
import logging

import numpy as np

log = logging.getLogger("gpubio")

TARGET_BINS = 2000  # coverage profile resolution over the whole genome
MIN_BIN = 100


def bin_size_for(genome_length: int) -> int:
    return max(MIN_BIN, int(round(genome_length / TARGET_BINS, -2)) or MIN_BIN)


def binned_depth(starts: np.ndarray, ends: np.ndarray, length: int, bin_size: int) -> np.ndarray:
    """Mean depth per bin of a contig from read intervals [start, end), without a per-base array.

    F(x) = bases covered left of x = sum over reads of clip(x - start, 0, end - start); the
    depth of a bin is the difference of F at its edges over its width.
    """
    edges = np.append(np.arange(0, length, bin_size), length).astype(np.int64)
    starts, ends = np.sort(starts.astype(np.int64)), np.sort(ends.astype(np.int64))

    def covered_left_of(x):
        def part(sorted_pos):
            k = np.searchsorted(sorted_pos, x, side="left")
            csum = np.concatenate([[0], np.cumsum(sorted_pos)])
            return k * x - csum[k]

        return part(starts) - part(ends)

    total = covered_left_of(edges)
    return np.diff(total) / np.diff(edges)


def alignment_qc(bam_path: str, read_qc: dict | None = None) -> tuple[dict, list[dict]]:
    """Per-sample QC and the coverage profile (one row per bin)."""
    import pysam

    with pysam.AlignmentFile(bam_path, "rb") as bam:
        contigs = dict(zip(bam.references, bam.lengths))
        intervals = {c: ([], []) for c in contigs}
        primary = mapped = mapq_sum = aligned_bases = 0
        for rec in bam.fetch(until_eof=True):
            if rec.is_secondary or rec.is_supplementary:
                continue
            primary += 1
            if rec.is_unmapped:
                continue
            mapped += 1
            mapq_sum += rec.mapping_quality
            aligned_bases += rec.reference_length
            starts, ends = intervals[rec.reference_name]
            starts.append(rec.reference_start)
            ends.append(rec.reference_end)
        read_groups = [rg["ID"] for rg in bam.header.to_dict().get("RG", [])]
    genome = sum(contigs.values())
    bin_size = bin_size_for(genome)
    profile, all_depths = [], []
    for contig, length in contigs.items():
        depth = binned_depth(np.array(intervals[contig][0]), np.array(intervals[contig][1]), length, bin_size)
        all_depths.append(depth)
        for i, d in enumerate(depth):
            profile.append(
                {
                    "contig": contig,
                    "start": i * bin_size,
                    "end": min(length, (i + 1) * bin_size),
                    "depth": round(float(d), 3),
                }
            )
    depths = np.concatenate(all_depths) if all_depths else np.zeros(0)
    qc = dict(read_qc or {})
    qc.update(
        {
            "primary_records": primary,
            "mapped_reads": mapped,
            "mapped_fraction": mapped / primary if primary else 0.0,
            "mean_mapq": mapq_sum / mapped if mapped else 0.0,
            "genome_length": genome,
            "mean_depth": aligned_bases / genome if genome else 0.0,
            "median_bin_depth": float(np.median(depths)) if depths.size else 0.0,
            "fraction_bins_ge_10x": float(np.mean(depths >= 10)) if depths.size else 0.0,
            "coverage_bin_size": bin_size,
            "read_groups": read_groups,
        }
    )
    return qc, profile


def write_alignment_qc(bam: str, read_qc_json: str, out_json: str, out_coverage: str) -> dict:
    from gpubio.atomic import atomic_path, write_text_atomic

    read_qc = json.loads(open(read_qc_json).read()) if read_qc_json else None
    qc, profile = alignment_qc(bam, read_qc)
    write_text_atomic(out_json, json.dumps(qc, indent=2) + "\n")
    with atomic_path(out_coverage) as tmp, open(tmp, "w") as fh:
        fh.write("contig\tstart\tend\tdepth\n")
        fh.writelines(f"{r['contig']}\t{r['start']}\t{r['end']}\t{r['depth']}\n" for r in profile)
    log.info(
        "%s: %.1f%% mapped, mean depth %.1fx, read groups %s",
        bam,
        100 * qc["mapped_fraction"],
        qc["mean_depth"],
        qc["read_groups"],
    )
    return qc

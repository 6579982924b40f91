"""Around dorado: POD5 shards, merging shard BAMs, per-sample reads after demultiplexing.

Dorado itself runs as a visible command in the rules; these are the steps between its calls.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

log = logging.getLogger("gpubio")

SHARD_COLUMN = "shard"


def pod5_files(path: str | Path) -> list[Path]:
    """A POD5 file, or every *.pod5 under a directory (sorted)."""
    path = Path(path)
    return sorted(path.rglob("*.pod5")) if path.is_dir() else [path]


def shard_count(path: str | Path, shard_size_mb: float) -> int:
    """How many shards a POD5 input is split into: its size over the shard size, at least 1."""
    size_mb = sum(f.stat().st_size for f in pod5_files(path)) / 1e6
    return max(1, math.ceil(size_mb / shard_size_mb))


def shard_names(count: int) -> list[str]:
    return [f"shard{i:03d}" for i in range(count)]


def shard_work(pod5_by_run: dict[str, str | Path], shard_size_mb: float) -> dict[str, float]:
    """Basecalling work of every shard of every run, keyed ``run/shard``: its POD5 megabytes.

    Shards of a run carry equal signal (see :func:`plan_shards`), so each gets the run's
    size over its shard count. The balanced GPU plan takes these as T4-hours: it compares
    jobs only with each other, so the unit does not change where they go.
    """
    work = {}
    for run, pod5 in pod5_by_run.items():
        size_mb = sum(f.stat().st_size for f in pod5_files(pod5)) / 1e6
        names = shard_names(shard_count(pod5, shard_size_mb))
        for name in names:
            work[f"{run}/{name}"] = max(size_mb, 1e-6) / len(names)
    return work


def plan_shards(read_table: str, count: int, out: str) -> dict[str, int]:
    """Assign every read of a `pod5 view` table (read_id, num_samples) to one of ``count`` shards.

    Longest reads first, each to the shard with the least signal so far, so shards carry
    about the same basecalling work. Writes the table `pod5 subset --table ... --columns shard`
    reads; returns reads per shard.
    """
    import heapq

    import pandas as pd

    from gpubio.atomic import atomic_path

    reads = pd.read_csv(read_table, sep="\t", usecols=["read_id", "num_samples"])
    if reads["read_id"].duplicated().any():
        dup = reads.loc[reads["read_id"].duplicated(), "read_id"].iloc[0]
        raise ValueError(f"{read_table}: read {dup} occurs twice in the POD5 input; remove the duplicate file")
    if len(reads) < count:
        raise ValueError(
            f"{read_table}: {len(reads)} reads cannot fill {count} shards; "
            "raise genomics.basecall.shard_size_mb in config.yaml"
        )
    names = shard_names(count)
    heap = [(0, i) for i in range(count)]
    assignment = {}
    order = reads.sort_values(["num_samples", "read_id"], ascending=[False, True])
    for read_id, samples in zip(order["read_id"], order["num_samples"]):
        load, i = heapq.heappop(heap)
        assignment[read_id] = names[i]
        heapq.heappush(heap, (load + int(samples), i))
    reads[SHARD_COLUMN] = reads["read_id"].map(assignment)
    with atomic_path(out) as tmp:
        reads[["read_id", SHARD_COLUMN]].to_csv(tmp, sep="\t", index=False)
    counts = reads[SHARD_COLUMN].value_counts().reindex(names).astype(int).to_dict()
    log.info("%d reads in %d shards: %s", len(reads), count, counts)
    return counts


# --------------------------------------------------------------------------- BAMs


def merge_read_groups(headers: list[dict]) -> list[dict]:
    """Union of @RG lines by ID; the same ID with different fields is an error (two runs mixed up)."""
    groups: dict[str, dict] = {}
    for header in headers:
        for rg in header.get("RG", []):
            seen = groups.setdefault(rg["ID"], rg)
            if seen != rg:
                raise ValueError(f"read group {rg['ID']} differs between inputs: {seen} vs {rg}")
    return list(groups.values())


def merge_unaligned_bams(inputs: list[str], out: str, threads: int = 1) -> int:
    """Concatenate unaligned BAMs (basecalled shards) into one; @RG lines and per-read tags kept.

    Returns the number of records written.
    """
    import pysam

    from gpubio.atomic import atomic_path

    headers = []
    for path in inputs:
        with pysam.AlignmentFile(path, "rb", check_sq=False) as bam:
            headers.append(bam.header.to_dict())
    header = dict(headers[0])
    header["RG"] = merge_read_groups(headers)
    records = 0
    with atomic_path(out) as tmp:
        with pysam.AlignmentFile(str(tmp), "wb", header=header, threads=threads) as dest:
            for path in inputs:
                with pysam.AlignmentFile(path, "rb", check_sq=False) as src:
                    for rec in src.fetch(until_eof=True):
                        dest.write(rec)  # unaligned: no reference ids to translate
                        records += 1
    log.info(
        "merged %d BAM(s) into %s: %d records, read groups %s",
        len(inputs),
        out,
        records,
        [rg["ID"] for rg in header["RG"]],
    )
    return records


def demux_bams(demux_dir: str | Path, barcode: str) -> list[Path]:
    """The BAMs dorado demux wrote for one barcode (e.g. ``barcode01``).

    Dorado >= 0.8 nests them (``.../bam_pass/barcode01/*.bam``); older versions write
    ``<kit>_barcode01.bam`` at the top. Failed-read folders (``bam_fail``) are left out.
    """
    found = []
    for path in sorted(Path(demux_dir).rglob("*.bam")):
        parts = path.relative_to(demux_dir).parts
        if "bam_fail" in parts:
            continue
        if barcode in parts[:-1] or re.search(rf"(^|_){re.escape(barcode)}\.bam$", path.name):
            found.append(path)
    return found


def label_reads(inputs: list[str], sample: str, out: str, threads: int = 1, barcode: str | None = None) -> int:
    """Write the reads of one sample with SM set to the sample name on every @RG (IDs and tags kept).

    With a barcode, @RG lines of the run's other barcodes (IDs ending in _barcodeNN) are left out.
    """
    import pysam

    from gpubio.atomic import atomic_path

    headers = []
    for path in inputs:
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            headers.append(bam.header.to_dict())
    header = {"HD": {"VN": "1.6", "SO": "unknown"}}
    groups = merge_read_groups(headers)
    if barcode:
        groups = [rg for rg in groups if not re.search(r"_barcode\d+$", rg["ID"]) or rg["ID"].endswith(f"_{barcode}")]
    header["RG"] = [dict(rg, SM=sample) for rg in groups]
    header["PG"] = [pg for h in headers for pg in h.get("PG", [])][:1]
    if not header["PG"]:
        del header["PG"]
    records = 0
    with atomic_path(out) as tmp, pysam.AlignmentFile(str(tmp), "wb", header=header, threads=threads) as dest:
        for path in inputs:
            with pysam.AlignmentFile(str(path), "rb", check_sq=False) as src:
                if src.header.references:
                    raise ValueError(f"{path} is aligned; basecalled reads are expected to be unaligned")
                for rec in src.fetch(until_eof=True):
                    dest.write(rec)
                    records += 1
    log.info(
        "%s: %d reads from %d BAM(s), read groups %s", sample, records, len(inputs), [rg["ID"] for rg in header["RG"]]
    )
    return records


def sample_reads(source: str, sample: str, out: str, barcode: str | None = None, threads: int = 1) -> int:
    """reads.bam of a sample: the run's merged BAM, or (barcoded) its barcode's demux BAMs."""
    if barcode:
        inputs = demux_bams(source, barcode)
        if not inputs:
            raise FileNotFoundError(
                f"{source}: dorado demux wrote no reads for {barcode} (sample {sample}); "
                "check the barcode column of the sample sheet and genomics.basecall.kit_name"
            )
    else:
        inputs = [source]
    return label_reads([str(p) for p in inputs], sample, out, threads, barcode)

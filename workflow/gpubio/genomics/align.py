"""Alignment on the CPU path: minimap2 through mappy, written as proper SAM records.

mappy returns hits, not SAM records: this module adds what a BAM needs (soft clips, the
reverse complement of reverse-strand reads, mate fields for pairs, supplementary flags and
SA tags, NM, read groups) and keeps the per-read tags of an unaligned input BAM (dorado's
qs/ch/MM/ML ...). Secondary hits are dropped. Output is unsorted; ``sort_and_index``
finishes it.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gpubio.genomics.inputs import InputError, fastq_records, few, require_reads

log = logging.getLogger("gpubio")

# minimap2 preset per platform of the sample sheet
PRESETS = {"illumina": "sr", "ont": "map-ont"}
PLATFORM_TAG = {"illumina": "ILLUMINA", "ont": "ONT"}
# pairs on one contig, facing each other and at most this far apart are "proper"
MAX_PROPER_INSERT = 2000
COMPLEMENT = str.maketrans("ACGTNacgtn", "TGCANtgcan")
CHUNK = 2000  # reads per mapping batch


def revcomp(seq: str) -> str:
    return seq.translate(COMPLEMENT)[::-1]


@dataclass
class Read:
    """One read as sequenced: name, sequence, qualities (Phred string or None), tags to keep."""

    name: str
    seq: str
    qual: str | None
    tags: list = field(default_factory=list)  # [(tag, value, type)] from an unaligned BAM


# --------------------------------------------------------------------------- input


def _strip_mate_suffix(name: str) -> str:
    return name[:-2] if name.endswith(("/1", "/2")) else name


def _fastq(path: str) -> Iterator[Read]:
    for rec in fastq_records(path):
        yield Read(_strip_mate_suffix(rec.name), rec.sequence, rec.quality)


def _unaligned_bam(path: str) -> Iterator[Read]:
    import pysam

    with pysam.AlignmentFile(path, "rb", check_sq=False) as bam:
        for rec in bam.fetch(until_eof=True):
            if rec.is_secondary or rec.is_supplementary:
                continue
            seq, qual = rec.query_sequence or "", rec.qual
            if rec.is_reverse:  # an aligned input: back to the read as sequenced
                seq, qual = revcomp(seq), (qual[::-1] if qual else qual)
            yield Read(rec.query_name, seq, qual, _tags(rec))


def _tags(rec) -> list[tuple]:
    """Tags with their SAM types; arrays (B) keep their element type through the array itself."""
    return [(t, v) if ty == "B" else (t, v, ty) for t, v, ty in rec.get_tags(with_value_type=True)]


def read_groups_of(paths: list[str]) -> list[dict]:
    """@RG lines of input BAMs (empty for FASTQ)."""
    import pysam

    groups: dict[str, dict] = {}
    for path in paths:
        if str(path).endswith(".bam"):
            with pysam.AlignmentFile(path, "rb", check_sq=False) as bam:
                for rg in bam.header.to_dict().get("RG", []):
                    groups.setdefault(rg["ID"], dict(rg))
    return list(groups.values())


def iter_input(paths: list[str]) -> Iterator[tuple[Read, Read | None]]:
    """(read, mate) from FASTQ mates, a single FASTQ, or unaligned BAM(s)."""
    if len(paths) == 2 and not str(paths[0]).endswith(".bam"):
        for count, (r1, r2) in enumerate(itertools.zip_longest(_fastq(paths[0]), _fastq(paths[1]))):
            if r1 is None or r2 is None:
                short, full, mate = (paths[1], paths[0], "read 2") if r2 is None else (paths[0], paths[1], "read 1")
                raise InputError(
                    f"{short} ({mate}) has fewer reads than its mate file {full}: it ends after {count} reads; "
                    "it is cut short or not this sample's mate file: transfer it again or give the matching mates"
                )
            if r1.name != r2.name:
                raise InputError(
                    f"{paths[0]} and {paths[1]} are not in the same order (read "
                    f"{getattr(r1, 'name', None)!r} vs {getattr(r2, 'name', None)!r}); give mates in matching order"
                )
            yield r1, r2
        return
    for path in paths:
        reader = _unaligned_bam(path) if str(path).endswith(".bam") else _fastq(path)
        for read in reader:
            yield read, None


# --------------------------------------------------------------------------- records


@dataclass
class Placed:
    """A hit turned into SAM fields for one read."""

    contig: str
    start: int
    end: int
    reverse: bool
    cigar: str
    mapq: int
    nm: int
    supplementary: bool = False


def place(hit, read_length: int, supplementary: bool = False, mate_two: bool = False) -> Placed:
    """SAM placement of a mappy hit: soft clips on both ends, in reference orientation.

    ``mate_two``: the hit is read 2 of a pair mapped together, whose query coordinates mappy
    reports on the mate's reverse complement.
    """
    q_st, q_en = (read_length - hit.q_en, read_length - hit.q_st) if mate_two else (hit.q_st, hit.q_en)
    left, right = q_st, read_length - q_en
    if hit.strand < 0:
        left, right = right, left
    cigar = (f"{left}S" if left else "") + hit.cigar_str + (f"{right}S" if right else "")
    return Placed(hit.ctg, hit.r_st, hit.r_en, hit.strand < 0, cigar, hit.mapq, hit.NM, supplementary)


def placements(hits, read_num: int | None, read_length: int) -> list[Placed]:
    """Primary first, then supplementary; secondary hits dropped."""
    chosen = [h for h in hits if h.is_primary and (read_num is None or h.read_num == read_num)]
    return [place(h, read_length, supplementary=k > 0, mate_two=read_num == 2) for k, h in enumerate(chosen)]


def _sa_tag(others: list[Placed]) -> str:
    return "".join(f"{p.contig},{p.start + 1},{'-' if p.reverse else '+'},{p.cigar},{p.mapq},{p.nm};" for p in others)


def make_record(header, read: Read, placed: Placed | None, rg: str, *, others=(), pair=None):
    """One AlignedSegment. ``pair`` = (is_first, mate_placed or None) for paired reads."""
    import pysam

    rec = pysam.AlignedSegment(header)
    rec.query_name = read.name
    flag = 0
    seq, qual = read.seq, read.qual
    if placed is None:
        flag |= 0x4
    else:
        if placed.reverse:
            flag |= 0x10
            seq, qual = revcomp(seq), (qual[::-1] if qual else qual)
        if placed.supplementary:
            flag |= 0x800
        rec.reference_name = placed.contig
        rec.reference_start = placed.start
        rec.cigarstring = placed.cigar
        rec.mapping_quality = placed.mapq
    if pair is not None:
        is_first, mate = pair
        flag |= 0x1 | (0x40 if is_first else 0x80)
        if mate is None:
            flag |= 0x8
        else:
            flag |= 0x20 if mate.reverse else 0
            rec.next_reference_name = mate.contig
            rec.next_reference_start = mate.start
            if placed is None:  # unmapped read sits at its mate's position (SAM convention)
                rec.reference_name, rec.reference_start = mate.contig, mate.start
            elif _proper(placed, mate):
                flag |= 0x2
            if placed is not None and placed.contig == mate.contig:
                rec.template_length = _tlen(placed, mate)
        if placed is not None and mate is None:
            rec.next_reference_name, rec.next_reference_start = placed.contig, placed.start
    rec.flag = flag
    rec.query_sequence = seq
    if qual:
        rec.query_qualities = pysam.qualitystring_to_array(qual)
    tags = [t for t in read.tags if t[0] not in ("RG", "NM", "SA", "MD")]
    tags.append(("RG", rg, "Z"))
    if placed is not None:
        tags.append(("NM", placed.nm, "i"))
        if others:
            tags.append(("SA", _sa_tag(others), "Z"))
    rec.set_tags(tags)
    return rec


def _proper(a: Placed, b: Placed) -> bool:
    if a.contig != b.contig or a.reverse == b.reverse or a.supplementary or b.supplementary:
        return False
    forward, reverse = (a, b) if not a.reverse else (b, a)
    return forward.start <= reverse.end and max(a.end, b.end) - min(a.start, b.start) <= MAX_PROPER_INSERT


def _tlen(a: Placed, b: Placed) -> int:
    span = max(a.end, b.end) - min(a.start, b.start)
    leftmost = a.start < b.start or (a.start == b.start and not a.reverse)
    return span if leftmost else -span


# --------------------------------------------------------------------------- header


def bam_header(reference: str, sample: str, platform: str, read_groups: list[dict], command: str) -> dict:
    """@SQ from the reference index, @RG (input groups relabelled with the sample, or one new), @PG."""
    import pysam

    with pysam.FastaFile(reference) as fasta:
        sq = [{"SN": n, "LN": ln} for n, ln in zip(fasta.references, fasta.lengths)]
    groups = sample_read_groups(read_groups, sample) or [
        {"ID": sample, "SM": sample, "LB": sample, "PL": PLATFORM_TAG[platform]}
    ]
    return {
        "HD": {"VN": "1.6", "SO": "unsorted"},
        "SQ": sq,
        "RG": groups,
        "PG": [{"ID": "gpubio-align", "PN": "gpubio", "VN": _mappy_version(), "CL": command}],
    }


def sample_read_groups(read_groups: list[dict], sample: str) -> list[dict]:
    """Read groups named for the sheet's sample (SM), so the BAM and the VCF agree; a different
    SM the input carried is kept in DS."""
    groups = []
    for rg in read_groups:
        rg = dict(rg)
        original = rg.get("SM")
        if original and original != sample:
            note = f"original SM: {original}"
            rg["DS"] = f"{rg['DS']}; {note}" if rg.get("DS") else note
            log.info("read group %s: SM %s renamed to the sheet's sample %s (kept in DS)", rg["ID"], original, sample)
        rg["SM"] = sample
        groups.append(rg)
    return groups


def _mappy_version() -> str:
    import mappy

    return f"mappy-{mappy.__version__}"


# --------------------------------------------------------------------------- alignment


def align_reads(reads: list[str], reference: str, platform: str, sample: str, out: str, threads: int = 1) -> dict:
    """Map FASTQ (one file or two mates) or unaligned BAM(s) with mappy; write an unsorted BAM.

    Returns counts (reads, records, mapped primary reads).
    """
    import mappy
    import pysam

    from gpubio.atomic import atomic_path

    if platform not in PRESETS:
        raise ValueError(f"platform {platform!r} is not one of {', '.join(PRESETS)}")
    for path in reads:
        require_reads(path)
    aligner = mappy.Aligner(reference, preset=PRESETS[platform], n_threads=max(1, threads))
    if not aligner:
        raise RuntimeError(f"mappy could not load or index the reference {reference}")
    input_groups = read_groups_of(reads)
    header = bam_header(reference, sample, platform, input_groups, f"align {' '.join(map(str, reads))}")
    default_rg = header["RG"][0]["ID"]
    known_rgs = {rg["ID"] for rg in header["RG"]}
    stats = {"reads": 0, "records": 0, "mapped": 0}
    paired = len(reads) == 2 and not str(reads[0]).endswith(".bam")
    log.info(
        "aligning %s (%s, preset %s) to %s with mappy on %d thread(s)",
        "read pairs" if paired else "reads",
        platform,
        PRESETS[platform],
        reference,
        threads,
    )
    with atomic_path(out) as tmp, pysam.AlignmentFile(str(tmp), "wb", header=header, threads=threads) as bam:
        for records in _map_in_threads(aligner, iter_input(reads), threads):
            for read, mate, hits in records:
                rg = _read_group(read, known_rgs, default_rg)
                written = _write_template(bam, read, mate, hits, rg)
                stats["reads"] += 1 + (mate is not None)
                stats["records"] += written[0]
                stats["mapped"] += written[1]
    log.info("%d reads, %d records, %d mapped", stats["reads"], stats["records"], stats["mapped"])
    return stats


def _read_group(read: Read, known: set[str], default: str) -> str:
    for tag, value, *_ in read.tags:
        if tag == "RG" and value in known:
            return value
    return default


def _map_in_threads(aligner, templates, threads: int):
    """Yield chunks of (read, mate, hits); mapping runs on a thread pool (mappy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import mappy

    def map_chunk(chunk):
        buf = mappy.ThreadBuffer()
        return [(r, m, list(aligner.map(r.seq, m.seq if m else None, buf=buf))) for r, m in chunk]

    chunks = iter(lambda: list(itertools.islice(templates, CHUNK)), [])
    if threads <= 1:
        yield from map(map_chunk, chunks)
        return
    with ThreadPoolExecutor(threads) as pool:
        pending = []
        for chunk in chunks:
            pending.append(pool.submit(map_chunk, chunk))
            if len(pending) >= 2 * threads:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _write_template(bam, read: Read, mate: Read | None, hits, rg: str) -> tuple[int, int]:
    """Write the records of one read (or pair); return (records, mapped reads)."""
    header = bam.header
    if mate is None:
        placed = placements(hits, None, len(read.seq))
        if not placed:
            bam.write(make_record(header, read, None, rg))
            return 1, 0
        for k, p in enumerate(placed):
            bam.write(make_record(header, read, p, rg, others=placed[:k] + placed[k + 1 :]))
        return len(placed), 1
    ends = [placements(hits, 1, len(read.seq)), placements(hits, 2, len(mate.seq))]
    primaries = [e[0] if e else None for e in ends]
    count = 0
    for i, (r, placed) in enumerate(((read, ends[0]), (mate, ends[1]))):
        mate_primary = primaries[1 - i]
        if not placed:
            bam.write(make_record(header, r, None, rg, pair=(i == 0, mate_primary)))
            count += 1
            continue
        for k, p in enumerate(placed):
            others = placed[:k] + placed[k + 1 :]
            bam.write(make_record(header, r, p, rg, others=others, pair=(i == 0, mate_primary)))
            count += 1
    return count, sum(p is not None for p in primaries)


# --------------------------------------------------------------------------- sort + index


def sort_and_index(bam_in: str, out: str, sample: str, platform: str, threads: int = 1) -> None:
    """Coordinate-sort and index; a BAM without read groups gets one for the sample."""
    import pysam

    from gpubio.atomic import atomic_path

    require_reads(bam_in)
    with pysam.AlignmentFile(bam_in, "rb", check_sq=False) as bam:
        header = bam.header.to_dict()
        if not bam.header.references:
            raise InputError(f"{bam_in} has no @SQ lines: it is not aligned; align it first")
    has_rg = bool(header.get("RG"))
    foreign = has_rg and any(rg.get("SM") != sample for rg in header["RG"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    source = bam_in
    with atomic_path(out) as tmp:
        if not has_rg:  # e.g. dorado aligner on FASTQ input
            tagged = f"{tmp}.rg.bam"
            rg = f"@RG\\tID:{sample}\\tSM:{sample}\\tLB:{sample}\\tPL:{PLATFORM_TAG[platform]}"
            pysam.samtools.addreplacerg("-r", rg, "-o", tagged, bam_in, catch_stdout=False)
            source = tagged
        elif foreign:  # e.g. an aligned BAM from elsewhere: its SM becomes the sheet's sample
            header["RG"] = sample_read_groups(header["RG"], sample)
            Path(f"{tmp}.header.sam").write_text(str(pysam.AlignmentHeader.from_dict(header)))
            source = f"{tmp}.rg.bam"
            try:
                pysam.samtools.reheader(f"{tmp}.header.sam", bam_in, save_stdout=source)
            finally:
                os.unlink(f"{tmp}.header.sam")
        try:
            pysam.sort("-@", str(max(1, threads)), "-o", str(tmp), source, catch_stdout=False)
        finally:
            if source != bam_in:
                os.unlink(source)
        index_tmp = f"{tmp}.bai"
        pysam.index("-@", str(max(1, threads)), str(tmp), index_tmp, catch_stdout=False)
        try:
            require_mapped_reads(str(tmp), index_tmp, bam_in, sample)
        except InputError:
            os.unlink(index_tmp)
            raise
    os.replace(index_tmp, f"{out}.bai")  # after the BAM, so the index is the newer file
    kept = "renamed to the sample" if foreign else "kept"
    log.info("sorted and indexed %s (read groups %s)", out, kept if has_rg else f"added for {sample}")


def require_mapped_reads(bam_path: str, index: str, source: str, sample: str, peek: int = 1000) -> None:
    """Raise InputError when no read of an indexed BAM maps (counted from its index): its
    variant calls would be an empty VCF. The message says whether the reads are all N."""
    import pysam

    with pysam.AlignmentFile(bam_path, "rb", index_filename=index) as bam:
        if bam.mapped:
            return
        reads, contigs = bam.mapped + bam.unmapped, list(bam.references)
        first = [rec.query_sequence or "" for rec in itertools.islice(bam.fetch(until_eof=True), peek)]
    if not any(set(seq) - set("Nn") for seq in first):
        which = f"all {reads} reads" if len(first) == reads else f"the first {len(first)} of its {reads} reads"
        raise InputError(
            f"sample '{sample}': none of its reads maps to the reference, and {which} in {source} are N only: "
            "no base was called; the sequencing or basecalling of this sample failed: redo it or remove the sample"
        )
    raise InputError(
        f"sample '{sample}': none of its {reads} reads maps to the reference ({source}; reference contigs "
        f"{few(contigs)}); check that genomics.reference is this organism's genome and the reads are this sample's"
    )


def is_aligned_bam(path: str) -> bool:
    """Whether a BAM is aligned (its header lists reference sequences); reads only the header."""
    import pysam

    with pysam.AlignmentFile(path, "rb", check_sq=False) as bam:
        return bool(bam.header.references)

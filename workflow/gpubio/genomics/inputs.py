"""Checks of genomics inputs: the reference FASTA, the sheet's BAMs (their contigs against the
reference's) and the first bytes of its FASTQs at start-up (before any job), and inside the
job that reads them, that read files hold reads and parse to the end (FASTQ with qualities,
a gzip stream not cut short).

The reference check reads only what it needs: a valid .fai (every header where the index
says, nothing after the last contig) answers which contigs there are; otherwise the file is
scanned for header lines as a stream, never loaded whole.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import shlex
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from gpubio.errors import UnusableInput

CHUNK = 1 << 22
MAX_HEADER_BYTES = 1 << 16  # a header line longer than this means the index skips something


class InputError(UnusableInput):
    """An input a job cannot use; its message is the one line the job fails with."""


class NotFasta(ValueError):
    pass


# --------------------------------------------------------------------------- reference


def compression(path: str | os.PathLike) -> str:
    """'plain', 'bgzf' (bgzip: gzip members with a BC extra field) or 'gzip'."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    if head[:2] != b"\x1f\x8b":
        return "plain"
    if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def reference_problems(reference: str, config_file: str) -> list[str]:
    """Why the reference cannot be used (empty, not FASTA, plain gzip, a contig name twice), or []."""
    return read_reference(reference, config_file)[1]


def read_reference(reference: str, config_file: str) -> tuple[list[str] | None, list[str]]:
    """The reference's contig names (None when it cannot be read) and why it cannot be used."""
    where = f"{config_file}: genomics.reference '{reference}'"
    kind = compression(reference)
    if kind == "gzip":
        plain = reference[:-3] if reference.endswith(".gz") else reference
        return None, [
            f"{where} is compressed with plain gzip, which htslib cannot index; "
            f"recompress it with bgzip (gunzip {shlex.quote(plain + '.gz')} && bgzip {shlex.quote(plain)})"
            " or give it uncompressed"
        ]
    try:
        names = indexed_names(reference, kind)
        if names is None:
            names = list(scan_names(reference, kind))
    except NotFasta as error:
        return None, [f"{where} {error}; give the genome as FASTA (plain or bgzip-compressed)"]
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        return None, [f"{where} cannot be read ({error}); check the file"]
    if not names:
        return None, [f"{where} is empty (no '>' contig); give a FASTA file with the genome"]
    problems = []
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(
                f"{where} names contig '{name}' {count} times; every contig needs its own name: "
                "remove or rename the copies"
            )
        if not name:
            problems.append(f"{where} has a '>' header line without a contig name; name that contig")
    return names, problems


def scan_names(path: str | os.PathLike, kind: str | None = None) -> Iterator[str]:
    """Contig names from the header lines, read as a stream in chunks. Raises NotFasta when the
    first thing in the file is not a '>' header."""
    kind = kind or compression(path)
    opener = gzip.open if kind != "plain" else open
    with opener(path, "rb") as fh:
        buffer, started = b"", False
        while chunk := fh.read(CHUNK):
            buffer += chunk
            if not started:
                stripped = buffer.lstrip()
                if not stripped:
                    buffer = b""
                    continue
                if not stripped.startswith(b">"):
                    raise NotFasta("is not a FASTA file (it does not start with a '>' header line)")
                buffer, started = b"\n" + stripped, True
            search, unfinished = 0, None
            while (start := buffer.find(b"\n>", search)) >= 0:
                end = buffer.find(b"\n", start + 1)
                if end < 0:
                    unfinished = start
                    break
                yield _name(buffer[start + 2 : end])
                search = end
            # keep an unfinished header line, or the last byte (a newline a '>' may follow)
            buffer = buffer[unfinished:] if unfinished is not None else buffer[-1:]
        if started and buffer.startswith(b"\n>"):
            yield _name(buffer[2:])


def _name(header: bytes) -> str:
    fields = header.decode("ascii", errors="replace").split(maxsplit=1)
    return fields[0] if fields else ""


def indexed_names(path: str | os.PathLike, kind: str) -> list[str] | None:
    """Contig names from the .fai when it is current and agrees with the file, else None."""
    fai = Path(f"{path}.fai")
    try:
        if not fai.is_file() or fai.stat().st_mtime < Path(path).stat().st_mtime:
            return None
        entries = []
        for line in fai.read_text().splitlines():
            name, length, offset, line_bases, line_width = line.split("\t")[:5]
            entries.append((name, int(length), int(offset), int(line_bases), int(line_width)))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not entries or any(lb <= 0 or lw < lb for _, _, _, lb, lw in entries):
        return None
    reader = _reader_at(path, kind)
    if reader is None:
        return None
    # each header sits right before its contig's sequence, and nothing follows the last contig
    end = 0
    for name, length, offset, line_bases, line_width in entries:
        gap = reader(end, offset - end) if 0 <= offset - end <= MAX_HEADER_BYTES else None
        if gap is None or not gap.lstrip().startswith(b">") or _name(gap.strip()[1:]) != name:
            return None
        end = offset + (length // line_bases) * line_width + length % line_bases
    tail = reader(end, MAX_HEADER_BYTES)
    if tail is None or tail.strip():
        return None
    return [e[0] for e in entries]


def _reader_at(path, kind: str):
    """read(offset, size) on the uncompressed bytes; bgzip needs its .gzi for that (else None)."""
    if kind == "plain":

        def read_plain(offset: int, size: int) -> bytes:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read(size)

        return read_plain
    gzi = Path(f"{path}.gzi")
    if not gzi.is_file():
        return None
    data = gzi.read_bytes()
    (count,) = struct.unpack_from("<Q", data)
    blocks = [(0, 0)] + [struct.unpack_from("<QQ", data, 8 + 16 * i) for i in range(count)]

    def read_bgzf(offset: int, size: int) -> bytes:
        compressed, uncompressed = max((b for b in blocks if b[1] <= offset), key=lambda b: b[1])
        with open(path, "rb") as raw:
            raw.seek(compressed)
            with gzip.GzipFile(fileobj=raw) as fh:
                fh.read(offset - uncompressed)
                return fh.read(size)

    return read_bgzf


# --------------------------------------------------------------------------- BAMs in the sheet


def bam_problem(path: str | os.PathLike) -> str | None:
    """Why a file named .bam is not a readable BAM, or None (reads the first block only)."""
    try:
        if compression(path) != "bgzf":
            return "is not a BAM file (not BGZF-compressed)"
        with gzip.open(path, "rb") as fh:
            magic = fh.read(4)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        return f"cannot be read as a BAM ({error})"
    if magic != b"BAM\x01":
        return "is not a BAM file (BGZF, but no BAM header inside)"
    return None


def bam_contigs(path: str | os.PathLike) -> list[str]:
    """The contig names (@SQ) of a BAM, from the binary header: reads the header only.
    Raises EOFError when the header is cut short."""

    def read(fh, size: int) -> bytes:
        data = fh.read(size)
        if len(data) != size:
            raise EOFError("the BAM header is cut short")
        return data

    def integer(fh) -> int:
        return struct.unpack("<i", read(fh, 4))[0]

    with gzip.open(path, "rb") as fh:
        read(fh, 4)  # magic, checked by bam_problem
        read(fh, integer(fh))  # the SAM text; the binary list below is what htslib uses
        names = []
        for _ in range(integer(fh)):
            names.append(read(fh, integer(fh)).rstrip(b"\0").decode("ascii", errors="replace"))
            integer(fh)  # length
    return names


def few(names: list[str], shown: int = 3) -> str:
    """'a, b, c and 22 more': a few names of a long list, for a one-line message."""
    head = ", ".join(names[:shown])
    return f"{head} and {len(names) - shown} more" if len(names) > shown else head


def contig_mismatch(bam_names: list[str], reference_names: list[str], reference: str) -> str | None:
    """Why an aligned BAM does not fit the reference (contigs the reference does not have), or
    None. Called against another reference's names, such a BAM gives an empty or partial VCF."""
    known = set(reference_names)
    missing = [name for name in bam_names if name not in known]
    if not missing:
        return None
    share = (
        f"none of the BAM's {len(bam_names)} contigs is in it"
        if len(missing) == len(bam_names)
        else f"{len(missing)} of the BAM's {len(bam_names)} contigs missing there"
    )
    flipped = [(name, name[3:] if name.startswith("chr") else f"chr{name}") for name in missing]
    prefixed = next(((ours, theirs) for ours, theirs in flipped if theirs in known), None)
    hint = f"; the names differ by a 'chr' prefix ('{prefixed[0]}' vs '{prefixed[1]}')" if prefixed else ""
    return (
        f"names contig{'s' if len(missing) > 1 else ''} {few(missing)} that genomics.reference '{reference}' does not have ({share}; the "
        f"reference has {few(reference_names)}){hint}; give the reference the BAM was aligned to, or rename "
        "the BAM's contigs to the reference's (samtools reheader)"
    )


# --------------------------------------------------------------------------- FASTQ

PEEK = 1024  # bytes of a FASTQ read at start-up: its first header line
FASTQ_BATCH = 4096  # records parsed per quiet_htslib() section


def fastq_problem(path: str | os.PathLike) -> str | None:
    """Why a file named FASTQ is not one, from its first bytes (the rest is read by the job)."""
    try:
        opener = open if compression(path) == "plain" else gzip.open
        with opener(path, "rb") as fh:
            head = fh.read(PEEK).lstrip()
    except (OSError, EOFError, zlib.error) as error:
        return f"cannot be read ({error}); transfer it again from the source"
    if not head or head.startswith(b"@"):
        return None  # a file without reads fails its job, naming it
    if head.startswith(b">"):
        return "is FASTA (reads without base qualities), not FASTQ; give the reads as FASTQ, with their qualities"
    return "is not FASTQ (it does not start with an '@' read header); give the reads as FASTQ"


def fastq_records(path: str | os.PathLike) -> Iterator:
    """The records of a FASTQ(.gz) (pysam FastxRecord). Raises InputError, one line, for FASTA
    (no qualities), a read whose qualities are cut short, and a truncated or corrupt file."""
    import pysam

    count = 0
    with pysam.FastxFile(str(path)) as fh:
        records = iter(fh)
        while True:
            batch = []
            with quiet_htslib():  # its own lines for a broken file would only repeat ours
                try:
                    batch.extend(itertools.islice(records, FASTQ_BATCH))
                except (OSError, ValueError) as error:
                    raise InputError(_unreadable_fastq(path, count + len(batch), error)) from None
            for record in batch:
                count += 1
                if record.quality is None:
                    raise InputError(
                        f"{path} is FASTA, not FASTQ: read '{record.name}' has no base qualities; "
                        "give the reads as FASTQ, with their qualities"
                    )
                if len(record.quality) != len(record.sequence):
                    raise InputError(
                        f"{path}: read {count} ('{record.name}') has {len(record.sequence)} bases but "
                        f"{len(record.quality)} qualities: the file is cut short or damaged; transfer it again"
                    )
                yield record
            if len(batch) < FASTQ_BATCH:
                return


@contextlib.contextmanager
def quiet_htslib():
    """htslib's messages off for a moment: its '[E::idx_find_and_load]' for an index that a file
    just written never has, or its lines for a broken file that a one-line error replaces.
    Failures still raise."""
    import pysam

    verbosity = pysam.set_verbosity(0)
    try:
        yield
    finally:
        pysam.set_verbosity(verbosity)


def _unreadable_fastq(path: str | os.PathLike, count: int, error: Exception) -> str:
    """The one line for a FASTQ that stopped parsing after ``count`` reads: a gzip stream cut
    short or corrupt (checked now, by reading it through), else a malformed record."""
    if compression(path) != "plain":
        try:
            with gzip.open(path, "rb") as fh:
                while fh.read(CHUNK):
                    pass
        except EOFError:
            return (
                f"{path} is cut short: its gzip stream ends before its end marker; "
                "transfer it again from the source (and compare its checksum)"
            )
        except (OSError, zlib.error) as damage:
            return f"{path} is corrupt ({damage}); transfer it again from the source"
    return f"{path} is not valid FASTQ after {count} reads ({error}); check the file"


# --------------------------------------------------------------------------- reads inside jobs


def require_reads(path: str | os.PathLike) -> None:
    """Raise InputError when a FASTQ(.gz) or BAM holds no reads (reads one record at most)."""
    import pysam

    if str(path).endswith(".bam"):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            empty = next(bam.fetch(until_eof=True), None) is None
    else:
        records = fastq_records(path)
        empty = next(records, None) is None
        records.close()
    if empty:
        raise InputError(
            f"{path} holds no reads; give the sample's real reads (was a transfer or demultiplexing "
            "step cut short?) or remove the sample from the sheet"
        )

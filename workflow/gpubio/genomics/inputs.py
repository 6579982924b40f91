"""Checks of genomics inputs: the reference FASTA and the sheet's BAMs at start-up (before any
job), and that read files hold reads (inside the job that reads them).

The reference check reads only what it needs: a valid .fai (every header where the index
says, nothing after the last contig) answers which contigs there are; otherwise the file is
scanned for header lines as a stream, never loaded whole.
"""

from __future__ import annotations

import gzip
import os
import shlex
import struct
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
    where = f"{config_file}: genomics.reference '{reference}'"
    kind = compression(reference)
    if kind == "gzip":
        plain = reference[:-3] if reference.endswith(".gz") else reference
        return [
            f"{where} is compressed with plain gzip, which htslib cannot index; "
            f"recompress it with bgzip (gunzip {shlex.quote(plain + '.gz')} && bgzip {shlex.quote(plain)})"
            " or give it uncompressed"
        ]
    try:
        names = indexed_names(reference, kind)
        if names is None:
            names = list(scan_names(reference, kind))
    except NotFasta as error:
        return [f"{where} {error}; give the genome as FASTA (plain or bgzip-compressed)"]
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        return [f"{where} cannot be read ({error}); check the file"]
    if not names:
        return [f"{where} is empty (no '>' contig); give a FASTA file with the genome"]
    problems = []
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(
                f"{where} names contig '{name}' {count} times; every contig needs its own name: "
                "remove or rename the copies"
            )
        if not name:
            problems.append(f"{where} has a '>' header line without a contig name; name that contig")
    return problems


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


# --------------------------------------------------------------------------- reads inside jobs


def require_reads(path: str | os.PathLike) -> None:
    """Raise InputError when a FASTQ(.gz) or BAM holds no reads (reads one record at most)."""
    import pysam

    if str(path).endswith(".bam"):
        with pysam.AlignmentFile(str(path), "rb", check_sq=False) as bam:
            empty = next(bam.fetch(until_eof=True), None) is None
    else:
        with pysam.FastxFile(str(path)) as fh:
            empty = next(iter(fh), None) is None
    if empty:
        raise InputError(
            f"{path} holds no reads; give the sample's real reads (was a transfer or demultiplexing "
            "step cut short?) or remove the sample from the sheet"
        )

"""Genomics subcommands of `python -m gpubio`."""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")


def _read_qc(args) -> None:
    from gpubio.genomics.read_qc import write_read_qc

    result = write_read_qc(args.reads, args.out)
    log.info("read QC: %d reads, N50 %d, mean quality %.2f", result["reads"], result["n50"], result["mean_quality"])


def register(sub) -> None:
    p = sub.add_parser("read-qc", help="read count, N50 and base quality of FASTQ/BAM files")
    p.add_argument("reads", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_read_qc)

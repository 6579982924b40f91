"""Transcriptomics subcommands of `python -m gpubio`."""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")


def _cell_qc(args) -> None:
    from gpubio.transcriptomics.qc import sample_qc

    result = sample_qc(
        args.counts, args.sample, args.batch, args.out_json, args.out_h5ad,
        min_genes=args.min_genes, min_counts=args.min_counts, max_mito_pct=args.max_mito_pct,
        min_cells=args.min_cells, mito_prefix=args.mito_prefix,
    )  # fmt: skip
    log.info("cell QC %s: %d of %d cells kept", args.sample, result["cells_after_qc"], result["cells"])


def register(sub) -> None:
    p = sub.add_parser("cell-qc", help="single-cell QC and filtering of one sample")
    p.add_argument("--counts", required=True)
    p.add_argument("--sample", required=True)
    p.add_argument("--batch", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-h5ad", required=True)
    p.add_argument("--min-genes", type=int, default=200)
    p.add_argument("--min-counts", type=int, default=500)
    p.add_argument("--max-mito-pct", type=float, default=20.0)
    p.add_argument("--min-cells", type=int, default=3)
    p.add_argument("--mito-prefix", default="MT-")
    p.set_defaults(func=_cell_qc)

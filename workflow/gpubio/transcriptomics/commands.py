"""Transcriptomics subcommands of `python -m gpubio`."""

from __future__ import annotations

import dataclasses
import logging

log = logging.getLogger("gpubio")


def params_from(args, params_class):
    """A step's typed settings (a :func:`gpubio.steps.settings_class`) from its parsed options."""
    return params_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(params_class)})


# --------------------------------------------------------------------------- commands


def _cell_qc(args) -> None:
    from gpubio.transcriptomics.qc import sample_qc

    result = sample_qc(
        args.counts,
        args.sample,
        args.batch,
        args.out_json,
        args.out_h5ad,
        min_genes=args.min_genes,
        min_counts=args.min_counts,
        max_mito_pct=args.max_mito_pct,
        min_cells=args.min_cells,
        mito_prefix=args.mito_prefix,
        gene_symbol_column=args.gene_symbol_column,
    )
    log.info("cell QC %s: %d of %d cells kept", args.sample, result["cells_after_qc"], result["cells"])


def _detect_doublets(args) -> None:
    from gpubio.transcriptomics.doublets import detect_doublets

    detect_doublets(
        args.filtered,
        args.sample,
        args.out_h5ad,
        args.out_tsv,
        args.out_png,
        expected_rate=args.expected_rate,
        threshold=args.threshold,
        remove=args.remove,
        seed=args.seed,
        backend=args.backend,
        threads=args.threads,
    )


def _integrate(args) -> None:
    from gpubio.transcriptomics.cluster import ClusterParams, integrate_samples

    integrate_samples(
        args.filtered,
        args.out_h5ad,
        args.out_markers,
        params_from(args, ClusterParams),
        backend=args.backend,
        threads=args.threads,
        n_markers=args.n_markers,
    )


def _train_celltypist(args) -> None:
    from gpubio.transcriptomics.annotation import train_celltypist

    train_celltypist(
        args.reference, args.label_key, args.out, args.max_iter, args.threads, args.seed, args.gene_symbol_column
    )


def _annotate_celltypist(args) -> None:
    from gpubio.transcriptomics.annotation import annotate_celltypist

    annotate_celltypist(args.integrated, args.model, args.out, args.majority_voting)


def _annotate_scanvi(args) -> None:
    from gpubio.transcriptomics.annotation import ScanviParams, annotate_scanvi

    annotate_scanvi(
        args.integrated,
        args.reference,
        args.label_key,
        args.out,
        params_from(args, ScanviParams),
        args.threads,
        args.gene_symbol_column,
    )


def _embed(args) -> None:
    from gpubio.transcriptomics.embeddings import EmbeddingParams, run_embeddings
    from gpubio.transcriptomics.scgpt import run_scgpt

    params = params_from(args, EmbeddingParams)
    families = {"geneformer": run_embeddings, "scgpt": run_scgpt}
    if params.family not in families:
        raise SystemExit(f"gpubio: {args.command}: --family {params.family!r}: use one of {', '.join(families)}")
    families[params.family](args.integrated, args.weights, args.out, params, args.threads)


def _build_atlas(args) -> None:
    from gpubio.transcriptomics.atlas import build_atlas

    build_atlas(args.integrated, args.out, args.labels, args.embeddings)


def _plot_atlas(args) -> None:
    from gpubio.transcriptomics.atlas import plot_atlas

    plot_atlas(args.atlas, args.out_umap, args.out_violins, args.out_dotplot, args.dotplot_genes)


def _spatial(args) -> None:
    from gpubio.transcriptomics.spatial import SpatialParams, run_spatial

    run_spatial(
        args.atlas,
        args.sample,
        args.coordinates,
        args.out_tsv,
        args.out_png,
        params_from(args, SpatialParams),
        args.interactions,
        args.threads,
    )


def register(sub) -> None:
    from gpubio.steps import add_step_options

    # every setting's option, default and help come from the schema (gpubio.steps)
    p = sub.add_parser("cell-qc", help="single-cell QC and filtering of one sample")
    p.add_argument("--counts", required=True)
    p.add_argument("--sample", required=True)
    p.add_argument("--batch", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-h5ad", required=True)
    add_step_options(p, "cell-qc")
    p.set_defaults(func=_cell_qc)

    p = sub.add_parser("detect-doublets", help="Scrublet doublet scores of one sample's cells, per batch")
    p.add_argument("filtered", help="the sample's filtered.h5ad from cell-qc")
    p.add_argument("--sample", required=True)
    p.add_argument("--out-h5ad", required=True, help="the cells with obs doublet_score and predicted_doublet")
    p.add_argument("--out-tsv", required=True, help="the sample's doublet counts (one row, for the QC table)")
    p.add_argument("--out-png", required=True, help="histogram of the doublet scores")
    add_step_options(p, "detect-doublets")
    p.set_defaults(func=_detect_doublets)

    p = sub.add_parser("integrate-cells", help="all samples in one object: HVG, PCA, Harmony, UMAP, Leiden, markers")
    p.add_argument("filtered", nargs="+", help="per-sample filtered.h5ad files from cell-qc")
    p.add_argument("--out-h5ad", required=True)
    p.add_argument("--out-markers", required=True)
    add_step_options(p, "integrate-cells")
    p.set_defaults(func=_integrate)

    p = sub.add_parser("train-celltypist", help="train a CellTypist model on a labelled reference .h5ad")
    p.add_argument("--reference", required=True)
    p.add_argument("--out", required=True)
    add_step_options(p, "train-celltypist")
    p.set_defaults(func=_train_celltypist)

    p = sub.add_parser("annotate-celltypist", help="label cells with a CellTypist model file")
    p.add_argument("--integrated", required=True)
    p.add_argument("--model", required=True, help="a .pkl model path")
    p.add_argument("--out", required=True)
    add_step_options(p, "annotate-celltypist")
    p.set_defaults(func=_annotate_celltypist)

    p = sub.add_parser("annotate-scanvi", help="label cells by mapping them onto a reference with scANVI")
    p.add_argument("--integrated", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--out", required=True)
    add_step_options(p, "annotate-scanvi")
    p.set_defaults(func=_annotate_scanvi)

    p = sub.add_parser("embed-cells", help="Geneformer- or scGPT-style cell embeddings from a local model")
    p.add_argument("--integrated", required=True)
    p.add_argument(
        "--weights",
        required=True,
        help="model directory (geneformer: config.json, weights, token_dictionary; "
        "scgpt: args.json, best_model.pt, vocab.json)",
    )
    p.add_argument("--out", required=True)
    add_step_options(p, "embed-cells")
    p.set_defaults(func=_embed)

    p = sub.add_parser("build-atlas", help="join label tables and embeddings into the atlas .h5ad")
    p.add_argument("--integrated", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--labels", nargs="*", default=[], help="per-cell label tables (TSV)")
    p.add_argument("--embeddings")
    p.set_defaults(func=_build_atlas)

    p = sub.add_parser("plot-atlas", help="UMAP, QC violins and marker dot plot of the atlas")
    p.add_argument("--atlas", required=True)
    p.add_argument("--out-umap", required=True)
    p.add_argument("--out-violins", required=True)
    p.add_argument("--out-dotplot", required=True)
    add_step_options(p, "plot-atlas")
    p.set_defaults(func=_plot_atlas)

    p = sub.add_parser("spatial-stats", help="squidpy neighbourhood enrichment and Moran's I of one sample")
    p.add_argument("--atlas", required=True)
    p.add_argument("--sample", required=True)
    p.add_argument("--coordinates", required=True, help="CSV: barcode,x,y")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument("--interactions", help="ligand-receptor pairs (columns source, target) for ligrec")
    add_step_options(p, "spatial-stats")
    p.set_defaults(func=_spatial)

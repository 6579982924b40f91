"""Per-sample cell QC: counts, detected genes, mitochondrial fraction, filtering."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("gpubio")

# fewer cells than this after QC: a sample is analysed, with a warning (its cells can hardly
# form clusters of their own, and Harmony has little to align); the integration refuses to
# cluster fewer than this over all samples (30 principal components, 15-neighbour graph)
FEW_CELLS = 50
# where cell QC keeps the names of every gene a sample measured (its filtered file keeps only
# the genes seen in qc.min_cells cells): the integration joins samples on the genes all measured
MEASURED_GENES = "measured_genes"


def qc_metrics(adata, mito_prefix: str = "MT-") -> None:
    """Add obs total_counts, n_genes, pct_mito and var n_cells, mito (in place)."""
    X = adata.X
    adata.var["mito"] = adata.var_names.str.startswith(mito_prefix)
    total = np.asarray(X.sum(axis=1)).ravel()
    adata.obs["total_counts"] = total
    adata.obs["n_genes"] = np.asarray((X > 0).sum(axis=1)).ravel()
    mito = np.asarray(X[:, adata.var["mito"].to_numpy()].sum(axis=1)).ravel()
    adata.obs["pct_mito"] = 100 * mito / np.maximum(total, 1)
    adata.var["n_cells"] = np.asarray((X > 0).sum(axis=0)).ravel()


def filter_cells(adata, min_genes: int, min_counts: int, max_mito_pct: float, min_cells: int, mito_prefix: str):
    """Return (filtered copy, summary dict). Each removal reason is counted on its own."""
    qc_metrics(adata, mito_prefix)
    obs = adata.obs
    low_counts = obs["total_counts"].to_numpy() < min_counts
    low_genes = obs["n_genes"].to_numpy() < min_genes
    high_mito = obs["pct_mito"].to_numpy() > max_mito_pct
    keep = ~(low_counts | low_genes | high_mito)
    filtered = adata[keep].copy()
    qc_metrics(filtered, mito_prefix)
    gene_keep = filtered.var["n_cells"].to_numpy() >= min_cells
    filtered = filtered[:, gene_keep].copy()
    summary = {
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "total_counts": int(round(float(obs["total_counts"].sum()))),
        "median_counts": float(np.median(obs["total_counts"])),
        "median_genes": float(np.median(obs["n_genes"])),
        "mito_genes": int(adata.var["mito"].sum()),
        "mean_pct_mito": float(obs["pct_mito"].mean()),
        "removed": {
            "low_counts": int(low_counts.sum()),
            "low_genes": int(low_genes.sum()),
            "high_mito": int(high_mito.sum()),
        },
        "cells_after_qc": int(filtered.n_obs),
        "genes_after_qc": int(filtered.n_vars),
        "thresholds": {
            "min_genes": min_genes,
            "min_counts": min_counts,
            "max_mito_pct": max_mito_pct,
            "min_cells": min_cells,
            "mito_prefix": mito_prefix,
        },
    }
    return filtered, summary


# the QC key behind each removal reason, and what the cells fell short of
QC_REASONS = {
    "low_counts": ("min_counts", "fewer than {} counts"),
    "low_genes": ("min_genes", "fewer than {} detected genes"),
    "high_mito": ("max_mito_pct", "more than {}% mitochondrial counts"),
}


def emptied_by_qc(sample: str, counts: str, summary: dict) -> str:
    """One line: which QC thresholds removed every cell of a sample, and what to do."""
    removed, thresholds = summary["removed"], summary["thresholds"]
    reasons = [
        f"{removed[reason]} with {text.format(thresholds[key])} (transcriptomics.qc.{key})"
        for reason, (key, text) in sorted(QC_REASONS.items(), key=lambda item: -removed[item[0]])
        if removed[reason]
    ]
    return (
        f"{counts}: sample {sample}: cell QC removed all {summary['cells']} cells ({'; '.join(reasons)}; "
        f"median {summary['median_counts']:g} counts and {summary['median_genes']:g} genes per cell); "
        "relax those thresholds in config.yaml if these are real cells, or remove the sample's row from the "
        "sample sheet to leave it out"
    )


def few_cells_note(sample: str, n_cells: int, cells_before: int | None = None) -> str:
    """The warning for a sample with fewer than FEW_CELLS cells after QC."""
    of = f" of {cells_before}" if cells_before is not None else ""
    return (
        f"sample {sample}: only {n_cells} cells after QC{of} (fewer than {FEW_CELLS}): it is analysed, but its "
        "cells can hardly form clusters of their own; check the sample, or relax transcriptomics.qc"
    )


def sample_qc(
    counts: str, sample: str, batch: str, out_json: str, out_h5ad: str, gene_symbol_column: str = "", **thresholds
) -> dict:
    """Read one sample, filter it, write the QC JSON and the filtered h5ad (atomically)."""
    import json

    from gpubio.atomic import atomic_path, write_text_atomic
    from gpubio.transcriptomics.io import SampleError, read_counts

    adata = read_counts(counts, sample, gene_symbol_column)
    if adata.n_obs == 0:
        raise SampleError(
            f"{counts}: sample {sample}: contains no cells; give the sample's count matrix, or "
            "remove its row from the sample sheet"
        )
    filtered, summary = filter_cells(adata, **thresholds)
    if filtered.n_obs == 0:
        raise SampleError(emptied_by_qc(sample, counts, summary))
    filtered.obs["sample"] = sample
    filtered.obs["batch"] = batch
    filtered.obs_names = [f"{sample}:{b}" for b in filtered.obs_names]
    filtered.layers["counts"] = filtered.X.copy()
    filtered.uns[MEASURED_GENES] = np.asarray(adata.var_names, dtype=str)
    warnings = []
    if filtered.n_obs < FEW_CELLS:
        warnings.append(few_cells_note(sample, filtered.n_obs, adata.n_obs))
        log.warning("%s: %s", counts, warnings[-1])
    summary = {"sample": sample, "batch": batch} | summary | {"warnings": warnings}
    with atomic_path(out_h5ad) as tmp:
        filtered.write_h5ad(tmp)
    write_text_atomic(out_json, json.dumps(summary, indent=2) + "\n")
    return summary

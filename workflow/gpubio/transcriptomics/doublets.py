"""Doublet detection: Scrublet per batch on a sample's QC-filtered counts.

scanpy (``scanpy.pp.scrublet``) on the CPU and rapids-singlecell (``rapids_singlecell.pp.scrublet``)
on a GPU, under the same name through the backend; both write ``obs["doublet_score"]`` and
``obs["predicted_doublet"]``. Scrublet simulates doublets by adding pairs of observed cells and
scores each cell by how many simulated doublets surround it in PCA space.
"""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")

# 10x Genomics' loading table: about 0.8 % multiplets per 1,000 cells recovered
TENX_RATE_PER_1000_CELLS = 0.008


def expected_rate_for(cells: int, configured: float | None) -> float:
    """The configured expected doublet rate, or (None) the 10x loading-rate rule for this many cells."""
    if configured is not None:
        return configured
    return min(0.5, max(0.001, TENX_RATE_PER_1000_CELLS * cells / 1000))


def score_doublets(adata, backend, expected_rate: float | None, threshold: float | None, seed: int) -> None:
    """Scrublet on ``adata`` (raw counts in ``.X``), batch by batch (``obs["batch"]``), in place."""
    batch_key = "batch" if "batch" in adata.obs and adata.obs["batch"].nunique() > 1 else None
    rate = expected_rate_for(adata.n_obs, expected_rate)
    backend.to_device(adata)
    try:
        backend.pp.scrublet(
            adata,
            batch_key=batch_key,
            expected_doublet_rate=rate,
            threshold=threshold,
            random_state=seed,
        )
    finally:
        backend.to_host(adata)
    predicted = adata.obs["predicted_doublet"]
    adata.obs["predicted_doublet"] = predicted.fillna(False).astype(bool) if predicted.dtype == object else predicted
    log.info(
        "Scrublet: expected doublet rate %.3f, %d of %d cells called doublets", rate, int(predicted.sum()), adata.n_obs
    )


def detect_doublets(
    h5ad: str,
    sample: str,
    out_h5ad: str,
    out_tsv: str,
    out_png: str,
    *,
    expected_rate: float | None,
    threshold: float | None,
    remove: bool,
    seed: int,
    backend: str = "auto",
    threads: int = 1,
) -> dict:
    """Score one sample's cells, write them flagged (or without the doublets when ``remove``),
    the sample's counts as one table row and a histogram of its scores."""
    import anndata as ad
    import pandas as pd

    from gpubio.atomic import atomic_path
    from gpubio.transcriptomics.backend import select_backend
    from gpubio.transcriptomics.io import SampleError

    adata = ad.read_h5ad(h5ad)
    if "counts" in adata.layers:  # Scrublet simulates doublets from raw counts
        adata.X = adata.layers["counts"].copy()
        adata.uns.pop("log1p", None)  # X is no longer log-transformed (scanpy would warn it is)
    if adata.n_obs < 50:
        raise SampleError(
            f"{h5ad}: {adata.n_obs} cells; Scrublet needs at least 50 (or turn transcriptomics.doublets off)"
        )
    chosen = select_backend(backend, threads=threads)
    log.info("doublet detection of %s: %s", sample, chosen.describe())
    score_doublets(adata, chosen, expected_rate, threshold, seed)
    flagged = int(adata.obs["predicted_doublet"].sum())
    kept = adata[~adata.obs["predicted_doublet"].to_numpy()].copy() if remove else adata
    summary = {
        "sample": sample,
        "doublets": flagged,
        "doublet_rate": round(flagged / adata.n_obs, 4),
        "doublet_threshold": _threshold(adata),
        "doublets_removed": flagged if remove else 0,
    }
    write_score_histogram(out_png, adata, sample, summary)
    with atomic_path(out_tsv) as tmp:
        pd.DataFrame([summary]).to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_h5ad) as tmp:
        kept.write_h5ad(tmp)
    return summary


def _threshold(adata) -> float | None:
    scrublet = adata.uns.get("scrublet", {})
    value = scrublet.get("threshold") if isinstance(scrublet, dict) else None
    if value is None and isinstance(scrublet, dict) and "batches" in scrublet:
        values = [b.get("threshold") for b in scrublet["batches"].values() if b.get("threshold") is not None]
        value = sum(values) / len(values) if values else None
    return None if value is None else round(float(value), 4)


def write_score_histogram(path: str, adata, sample: str, summary: dict) -> None:
    """Observed scores beside Scrublet's simulated doublets, and the threshold, for the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gpubio.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.2))
    bins = np.linspace(0, 1, 41)
    ax.hist(adata.obs["doublet_score"], bins=bins, color="#4477aa", label="cells")
    simulated = adata.uns.get("scrublet", {}).get("doublet_scores_sim")
    if simulated is not None:
        ax.hist(
            np.asarray(simulated),
            bins=bins,
            histtype="step",
            color="#cc6677",
            label="simulated doublets",
            density=False,
        )
    if summary["doublet_threshold"] is not None:
        ax.axvline(summary["doublet_threshold"], color="black", linestyle="--", label="threshold")
    ax.set_xlabel("doublet score (Scrublet)")
    ax.set_ylabel("cells")
    ax.set_title(f"{sample}: {summary['doublets']} doublets ({100 * summary['doublet_rate']:.1f} %)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)

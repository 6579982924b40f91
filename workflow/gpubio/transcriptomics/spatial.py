"""Spatial statistics of one sample with squidpy: neighbourhood graph, neighbourhood
enrichment between clusters, Moran's I of the top variable genes, and (optionally)
ligand-receptor permutation tests on an interaction list given by the user.

Everything runs offline: ligrec is only called with ``interactions=`` from a local file
(its default fetches a database online).
"""

from __future__ import annotations

import logging

from gpubio.steps import settings_class

log = logging.getLogger("gpubio")

TABLE_COLUMNS = ["statistic", "first", "second", "value", "pvalue"]


# transcriptomics.spatial in config.yaml; fields, types and defaults from the schema (gpubio.steps)
SpatialParams = settings_class("SpatialParams", "spatial-stats", "spatial")


def read_coordinates(path: str):
    """Cell coordinates (CSV: barcode, x, y) indexed by barcode."""
    import pandas as pd

    table = pd.read_csv(path, dtype={"barcode": str})
    missing = [c for c in ("barcode", "x", "y") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected barcode,x,y")
    if table["barcode"].duplicated().any():
        raise ValueError(f"{path}: barcode {table['barcode'][table['barcode'].duplicated()].iloc[0]!r} appears twice")
    return table.set_index("barcode")[["x", "y"]].astype(float)


def read_interactions(path: str):
    """Ligand-receptor pairs (TSV or CSV with columns source, target: gene names)."""
    import pandas as pd

    table = pd.read_csv(path, sep=None, engine="python", dtype=str)
    if not {"source", "target"} <= set(table.columns):
        raise ValueError(f"{path}: expected columns source and target (gene names), found {', '.join(table.columns)}")
    return table[["source", "target"]].dropna().drop_duplicates()


def sample_with_coordinates(atlas_path: str, sample: str, coordinates: str, cluster_key: str):
    """The sample's cells from the atlas with obsm['spatial']; cells without coordinates are left out."""
    import anndata as ad

    atlas = ad.read_h5ad(atlas_path)
    if cluster_key not in atlas.obs:
        raise ValueError(f"{atlas_path}: obs has no column {cluster_key!r}; set transcriptomics.spatial.cluster_key")
    adata = atlas[atlas.obs["sample"] == sample].copy()
    if adata.n_obs == 0:
        raise ValueError(f"{atlas_path}: no cells of sample {sample!r}")
    barcodes = adata.obs_names.str.removeprefix(f"{sample}:")
    xy = read_coordinates(coordinates).reindex(barcodes)
    found = xy.notna().all(axis=1).to_numpy()
    if not found.any():
        raise ValueError(
            f"{coordinates}: none of the {adata.n_obs} cells of {sample!r} has coordinates; check the barcodes"
        )
    if not found.all():
        log.warning("%s: %d of %d cells have no coordinates and are left out", coordinates, (~found).sum(), adata.n_obs)
    adata = adata[found].copy()
    adata.obsm["spatial"] = xy.to_numpy()[found]
    adata.obs[cluster_key] = adata.obs[cluster_key].astype(str).astype("category")
    return adata


def top_variable_genes(adata, n: int) -> list[str]:
    """The n most variable genes: seurat_v3 ranks where the atlas has them, else variance."""
    import numpy as np

    if "highly_variable_rank" in adata.var:
        ranks = adata.var["highly_variable_rank"].to_numpy(dtype=float)
        order = np.argsort(np.where(np.isnan(ranks), np.inf, ranks), kind="stable")
    else:
        X = adata.X
        mean = np.asarray(X.mean(axis=0)).ravel()
        var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2 if hasattr(X, "multiply") else X.var(axis=0)
        order = np.argsort(-var, kind="stable")
    return list(adata.var_names[order[: min(n, adata.n_vars)]])


def spatial_statistics(adata, params: SpatialParams, interactions=None, threads: int = 1):
    """The statistics of one sample as one long table (TABLE_COLUMNS)."""
    import pandas as pd
    import squidpy as sq

    key = params.cluster_key
    sq.gr.spatial_neighbors_knn(adata, n_neighs=params.n_neighbors)
    rows = []
    if adata.obs[key].nunique() > 1:
        sq.gr.nhood_enrichment(
            adata, cluster_key=key, n_perms=params.n_perms, seed=params.seed, n_jobs=1, show_progress_bar=False
        )
        zscore = adata.uns[f"{key}_nhood_enrichment"]["zscore"]
        clusters = list(adata.obs[key].cat.categories)
        for i, a in enumerate(clusters):
            for j, b in enumerate(clusters):
                rows.append(("nhood_enrichment_z", a, b, float(zscore[i, j]), float("nan")))
    else:
        log.info("neighbourhood enrichment skipped: one %s group", key)
    genes = top_variable_genes(adata, params.n_genes)
    sq.gr.spatial_autocorr(adata, mode="moran", genes=genes, n_perms=None, n_jobs=1, show_progress_bar=False)
    moran = adata.uns["moranI"]
    for gene, row in moran.iterrows():
        rows.append(("morans_i", gene, "", float(row["I"]), float(row["pval_norm_fdr_bh"])))
    if interactions is not None and len(interactions):
        result = sq.gr.ligrec(
            adata,
            cluster_key=key,
            interactions=interactions,
            use_raw=False,
            n_perms=params.n_perms,
            seed=params.seed,
            copy=True,
            n_jobs=1,
            show_progress_bar=False,
            corr_method=None,
        )
        means, pvalues = result["means"], result["pvalues"]
        for (source, target), values in means.iterrows():
            for (a, b), value in values.items():
                rows.append(
                    (
                        "ligrec_mean",
                        f"{source}->{target}",
                        f"{a}|{b}",
                        float(value),
                        float(pvalues.loc[(source, target), (a, b)]),
                    )
                )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def plot_spatial(adata, key: str, path: str, title: str) -> None:
    """Cells at their coordinates, coloured by cluster (or label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    from gpubio.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc.pl.embedding(adata, basis="spatial", color=key, ax=ax, show=False, title=title, size=40)
    ax.set_aspect("equal")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_spatial(
    atlas: str,
    sample: str,
    coordinates: str,
    out_tsv: str,
    out_png: str,
    params: SpatialParams,
    interactions: str | None = None,
    threads: int = 1,
) -> None:
    from gpubio.atomic import atomic_path

    pairs = read_interactions(interactions) if interactions else None
    adata = sample_with_coordinates(atlas, sample, coordinates, params.cluster_key)
    log.info("spatial statistics of %s: %d cells, grouped by %s", sample, adata.n_obs, params.cluster_key)
    table = spatial_statistics(adata, params, pairs, threads)
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_spatial(adata, params.cluster_key, out_png, f"{sample}: {params.cluster_key}")
    same = table[(table["statistic"] == "nhood_enrichment_z") & (table["first"] == table["second"])]
    log.info("same-group neighbourhood enrichment z: %s", dict(zip(same["first"], same["value"].round(2))))

"""The atlas: the integrated object with every label table and embedding joined in, and its figures."""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")


def join_cell_table(adata, path: str) -> list[str]:
    """Add a per-cell table (first column: cell) to obs; every cell of the atlas must be in it."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t", index_col=0, keep_default_na=False)
    missing = adata.obs_names.difference(table.index)
    if len(missing):
        raise ValueError(
            f"{path}: {len(missing)} cells of the atlas are missing (e.g. {missing[0]!r}); rerun that step"
        )
    table = table.loc[adata.obs_names]
    for column in table.columns:
        values = table[column]
        adata.obs[column] = values.astype(str).astype("category") if column.endswith("_label") else values.astype(float)
    return list(table.columns)


def build_atlas(integrated: str, out_h5ad: str, labels: list[str] = (), embeddings: str | None = None) -> None:
    import anndata as ad

    from gpubio.atomic import atomic_path

    adata = ad.read_h5ad(integrated)
    for path in labels:
        log.info("labels from %s: %s", path, ", ".join(join_cell_table(adata, path)))
    if embeddings:
        emb = ad.read_h5ad(embeddings)
        missing = adata.obs_names.difference(emb.obs_names)
        if len(missing):
            raise ValueError(f"{embeddings}: {len(missing)} cells of the atlas have no embedding; rerun that step")
        about = dict(emb.uns.get("embedding", {}))
        family = about.get("family", "geneformer")  # each family its own key: X_geneformer, X_scgpt
        adata.obsm[f"X_{family}"] = emb[adata.obs_names].X
        adata.uns[family] = about
        log.info("embeddings from %s: %d dimensions in obsm['X_%s']", embeddings, emb.n_vars, family)
    with atomic_path(out_h5ad) as tmp:
        adata.write_h5ad(tmp)
    log.info("atlas: %d cells, %d genes, obs %s", adata.n_obs, adata.n_vars, ", ".join(adata.obs.columns))


# --------------------------------------------------------------------------- figures


def _save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_umap(adata, path: str) -> None:
    """UMAP coloured by cluster, by each label column, and by batch."""
    import scanpy as sc

    colors = ["leiden"] + [c for c in ("celltypist_label", "scanvi_label") if c in adata.obs] + ["batch"]
    fig = sc.pl.umap(adata, color=colors, ncols=2, wspace=0.45, show=False, return_fig=True, size=20)
    _save(fig, path)


def plot_qc_violins(adata, path: str) -> None:
    """Counts, detected genes and mitochondrial percentage per sample (cells kept by QC)."""
    import matplotlib.pyplot as plt
    import scanpy as sc

    keys = [k for k in ("total_counts", "n_genes", "pct_mito") if k in adata.obs]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4))
    for ax, key in zip(axes, keys):
        sc.pl.violin(adata, key, groupby="sample", ax=ax, show=False, stripplot=False)
        ax.set_title(key)
    fig.tight_layout()
    _save(fig, path)


def plot_marker_dotplot(adata, path: str, n_genes: int = 3) -> None:
    """The top marker genes of each Leiden cluster."""
    import scanpy as sc

    table = sc.get.rank_genes_groups_df(adata, group=None)
    if "group" not in table:
        table.insert(0, "group", adata.obs["leiden"].cat.categories[0])
    markers = {str(g): list(t["names"].head(n_genes)) for g, t in table.groupby("group", observed=True, sort=False)}
    plot = sc.pl.dotplot(adata, markers, groupby="leiden", show=False, return_fig=True, dendrogram=False)
    plot.make_figure()
    _save(plot.fig, path)


def plot_atlas(atlas: str, out_umap: str, out_violins: str, out_dotplot: str, n_genes: int = 3) -> None:
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    adata = ad.read_h5ad(atlas)
    plot_umap(adata, out_umap)
    plot_qc_violins(adata, out_violins)
    plot_marker_dotplot(adata, out_dotplot, n_genes)

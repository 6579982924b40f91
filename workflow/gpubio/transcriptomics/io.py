"""Read single-cell counts from a 10x .h5, a 10x MTX directory or an .h5ad."""

from __future__ import annotations

from pathlib import Path


def read_counts(path: str):
    """AnnData with raw counts in X (cells x genes), gene symbols as var_names (made unique)."""
    import anndata as ad
    import scanpy as sc

    p = Path(path)
    if p.is_dir():
        adata = sc.read_10x_mtx(p, var_names="gene_symbols", cache=False)
    elif p.suffix == ".h5":
        adata = sc.read_10x_h5(p)
    elif p.suffix == ".h5ad":
        adata = ad.read_h5ad(p)
    else:
        raise ValueError(f"{path}: not a 10x .h5, 10x MTX directory or .h5ad")
    adata.var_names_make_unique()
    return adata

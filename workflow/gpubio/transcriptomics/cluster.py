"""All samples in one object: normalize, HVG, PCA, Harmony, neighbors, UMAP, Leiden, markers.

Written once against scanpy's names; the backend (``gpubio.transcriptomics.backend``)
decides whether that means scanpy on the CPU or rapids-singlecell on a GPU.
"""

from __future__ import annotations

import logging
from dataclasses import asdict

from gpubio.steps import settings_class

log = logging.getLogger("gpubio")

MARKER_COLUMNS = {
    "group": "cluster",
    "names": "gene",
    "scores": "score",
    "logfoldchanges": "logfoldchange",
    "pvals": "pval",
    "pvals_adj": "pval_adj",
}


# transcriptomics.cluster in config.yaml; fields, types and defaults from the schema (gpubio.steps)
ClusterParams = settings_class("ClusterParams", "integrate-cells", "cluster")


def shared_genes(paths: list[str], parts: list) -> list[str]:
    """The genes to analyse: those every sample measured (cell QC's record of each sample's genes)
    and kept somewhere; one warning line when samples measured different genes, a SampleError
    when they share too few to be analysed together."""
    from gpubio.transcriptomics.genes import sample_overlap
    from gpubio.transcriptomics.io import SampleError
    from gpubio.transcriptomics.qc import MEASURED_GENES

    measured = {
        str(part.obs["sample"].iloc[0]): set(map(str, part.uns.get(MEASURED_GENES, part.var_names))) for part in parts
    }
    overlap = sample_overlap(measured)
    if overlap.problem:
        raise SampleError(f"{', '.join(paths)}: {overlap.problem}")
    if overlap.warning:
        log.warning("%s", overlap.warning)
    kept = dict.fromkeys(name for part in parts for name in part.var_names if name in overlap.shared)
    return list(kept)


def combine_samples(paths: list[str]):
    """One AnnData of every sample's filtered cells, on the genes every sample measured; a gene
    that cell QC dropped from a sample (seen in too few of its cells) counts 0 there."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from gpubio.transcriptomics.io import SampleError
    from gpubio.transcriptomics.qc import FEW_CELLS, few_cells_note

    parts = [ad.read_h5ad(p) for p in paths]
    for path, part in zip(paths, parts):
        if "counts" not in part.layers or "batch" not in part.obs or "sample" not in part.obs:
            raise SampleError(f"{path}: expected the output of cell QC (layers['counts'], obs sample and batch)")
        if part.n_obs == 0:  # cell QC refuses to write these; an old or hand-made file
            raise SampleError(
                f"{path}: holds no cells; run cell QC again, or remove the sample's row from the "
                "sample sheet to leave it out"
            )
    n_cells = sum(part.n_obs for part in parts)
    if n_cells < FEW_CELLS:
        per_sample = ", ".join(f"{part.obs['sample'].iloc[0]}: {part.n_obs}" for part in parts)
        raise SampleError(
            f"{', '.join(paths)}: {n_cells} cells after QC in all ({per_sample}), fewer than {FEW_CELLS}: too few "
            "to cluster (principal components, a neighbour graph); relax transcriptomics.qc or add samples"
        )
    for part in parts:
        if part.n_obs < FEW_CELLS:
            log.warning("%s", few_cells_note(str(part.obs["sample"].iloc[0]), part.n_obs))
    genes = shared_genes(paths, parts)
    for i, part in enumerate(parts):  # X is a copy of the raw counts: concatenate one copy, not two
        part.X = part.layers.pop("counts")
        parts[i] = part[:, part.var_names.isin(genes)]
    combined = ad.concat(parts, join="outer", fill_value=0, merge="same")
    for column in {c for part in parts for c in part.var.columns} - set(combined.var.columns):
        # gene annotation (ids, feature type) of genes that only some samples kept
        values = pd.concat([part.var[column] for part in parts if column in part.var])
        combined.var[column] = values[~values.index.duplicated()].reindex(combined.var_names)
    dropped = {str(part.obs["sample"].iloc[0]): len(genes) - part.n_vars for part in parts}
    if any(dropped.values()):
        log.info(
            "genes kept by cell QC in some samples only (seen in too few cells elsewhere; counted as 0 there): %s",
            ", ".join(f"{sample} {n}" for sample, n in dropped.items() if n),
        )
    del parts, part  # free the per-sample copies before the analysis
    combined.X = sp.csr_matrix(combined.X, dtype=np.float32)
    combined.var["n_cells"] = np.bincount(combined.X.indices, minlength=combined.n_vars)  # over all samples now
    combined.layers["counts"] = combined.X.copy()
    for column in ("sample", "batch"):
        combined.obs[column] = combined.obs[column].astype(str).astype("category")
    return combined


def scaled_pca(adata, n_comps: int, params: ClusterParams, pp) -> None:
    """obsm X_pca from the highly variable genes scaled to unit variance and clipped at
    scale_max_value (scanpy's standard recipe), so that a few lowly expressed markers (NK vs T
    cells) weigh as much as highly expressed genes; X itself stays log-normalized for markers."""
    hvg = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    if hasattr(hvg.X, "toarray"):  # centring makes the HVG matrix dense anyway (cells x HVGs)
        hvg.X = hvg.X.toarray()
    pp.scale(hvg, max_value=params.scale_max_value or None)
    pp.pca(hvg, n_comps=n_comps, random_state=params.seed)
    adata.obsm["X_pca"] = hvg.obsm["X_pca"]
    adata.uns["pca"] = hvg.uns["pca"]


def cluster_cells(adata, params: ClusterParams, backend) -> None:
    """The analysis, in place: X becomes log-normalized; obsm X_pca(_harmony), X_umap; obs leiden;
    uns rank_genes_groups. ``layers['counts']`` must hold raw counts."""
    pp, tl = backend.pp, backend.tl
    n_batches = adata.obs["batch"].nunique()
    backend.to_device(adata)
    pp.highly_variable_genes(
        adata,
        flavor="seurat_v3",
        n_top_genes=min(params.n_top_genes, adata.n_vars),
        layer="counts",
        batch_key="batch" if n_batches > 1 else None,
    )
    pp.normalize_total(adata, target_sum=params.target_sum)
    pp.log1p(adata)
    n_comps = min(params.n_pcs, adata.n_obs - 1)
    if params.scale:
        scaled_pca(adata, n_comps, params, pp)
    else:
        pp.pca(adata, n_comps=n_comps, mask_var="highly_variable", random_state=params.seed)
    representation = "X_pca"
    if params.harmony and n_batches > 1:
        pp.harmony_integrate(
            adata,
            "batch",
            max_iter_harmony=params.harmony_max_iter,
            theta=params.harmony_theta,
            random_state=params.seed,
        )
        representation = "X_pca_harmony"
    else:
        log.info("Harmony skipped: %s", "one batch" if n_batches < 2 else "cluster.harmony is false")
    pp.neighbors(adata, n_neighbors=params.n_neighbors, use_rep=representation, random_state=params.seed)
    tl.umap(adata, min_dist=params.umap_min_dist, random_state=params.seed)
    tl.leiden(adata, resolution=params.leiden_resolution, random_state=params.seed, key_added="leiden")
    tl.rank_genes_groups(adata, "leiden", method=params.marker_method)
    backend.to_host(adata)
    adata.uns["gpubio"] = {"backend": backend.name, "device": backend.device, "representation": representation}


def marker_table(adata, n_genes: int):
    """The top ``n_genes`` marker genes per Leiden cluster (from uns rank_genes_groups)."""
    import pandas as pd
    import scanpy as sc

    table = sc.get.rank_genes_groups_df(adata, group=None)
    if "group" not in table:  # a single cluster
        table.insert(0, "group", adata.obs["leiden"].cat.categories[0])
    table = table.groupby("group", observed=True, sort=False).head(n_genes).rename(columns=MARKER_COLUMNS)
    table = table[[c for c in MARKER_COLUMNS.values() if c in table.columns]]
    table.insert(1, "rank", table.groupby("cluster", observed=True).cumcount() + 1)
    return pd.DataFrame(table).reset_index(drop=True)


def integrate_samples(
    filtered: list[str],
    out_h5ad: str,
    out_markers: str,
    params: ClusterParams,
    backend: str = "auto",
    threads: int = 1,
    n_markers: int = 25,
) -> dict:
    """Read every sample's filtered cells, cluster them together, write the object and the markers."""
    from gpubio.atomic import atomic_path
    from gpubio.transcriptomics.backend import select_backend

    chosen = select_backend(backend, threads=threads)
    adata = combine_samples(filtered)
    log.info(
        "integrating %d cells x %d genes from %d samples (%s)",
        adata.n_obs,
        adata.n_vars,
        adata.obs["sample"].nunique(),
        ", ".join(adata.obs["sample"].cat.categories),
    )
    cluster_cells(adata, params, chosen)
    adata.uns["gpubio"]["params"] = asdict(params)
    markers = marker_table(adata, n_markers)
    with atomic_path(out_markers) as tmp:
        markers.to_csv(tmp, sep="\t", index=False)
    with atomic_path(out_h5ad) as tmp:
        adata.write_h5ad(tmp)
    summary = {
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "highly_variable": int(adata.var["highly_variable"].sum()),
        "clusters": int(adata.obs["leiden"].nunique()),
        "backend": chosen.name,
    }
    log.info("integration done: %s", summary)
    return summary

"""Single-cell counts with known cell types, made without any gpubio code.

Seven types of unequal size (the smallest ~3 % of cells). Two of them, T and NK, share their
whole profile except a dozen lowly expressed marker genes, the way NK cells differ from T
cells by GNLY, NKG7 and a few others. Counts are negative binomial (gamma-Poisson) around
each type's profile, with a gene-wise dispersion: some genes are very noisy, and on log
values their noise outweighs the weak markers, so PCA without scaling merges T and NK while
the standard recipe (genes scaled to unit variance) keeps them apart. Ambient RNA (the pooled
profile of all cells) is mixed into every droplet; some genes are mitochondrial. Writers give
a Cell Ranger v3 .h5, an MTX directory and processed .h5ad files (log1p-normalised X, raw
counts in layers["counts"], in .raw or nowhere).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

TYPES = {"T": 0.30, "Mono": 0.20, "B": 0.15, "NK": 0.12, "DC": 0.10, "Plasma": 0.10, "Platelet": 0.03}
CLOSE_PAIR = ("T", "NK")
N_MITO = 13
MARKERS_PER_TYPE = 30


@dataclass
class Cells:
    counts: sp.csr_matrix  # cells x genes, integer counts
    genes: list[str]
    gene_ids: list[str]
    barcodes: list[str]
    cell_types: np.ndarray  # truth, by construction


def simulate(
    seed: int = 7,
    n_cells: int = 1500,
    n_genes: int = 1400,
    ambient: float = 0.08,  # share of each cell's counts that comes from the pooled profile
    dispersion: float = 4.0,  # typical negative-binomial shape (theta) of a gene ...
    dispersion_spread: float = 2.0,  # ... spread over genes (lognormal sigma): some genes are very noisy
    close_markers: int = 12,  # NK-only genes (T cells get half as many of their own)
    close_level: float = 0.3,  # their expression, relative to an average gene (~0.4): low
    library: float = 2500,  # median counts per cell
    mito_fraction: float = 0.04,
) -> Cells:
    """Cells x genes counts with each cell's type; deterministic by seed."""
    rng = np.random.default_rng(seed)
    names = list(TYPES)
    n_nuclear = n_genes - N_MITO
    genes = [f"G{i:04d}" for i in range(n_nuclear)] + [f"MT-X{i}" for i in range(N_MITO)]
    nk_markers = [f"NKM{i + 1}" for i in range(close_markers)]
    close = nk_markers + [f"TM{i + 1}" for i in range(close_markers // 2)]
    genes[: len(close)] = close  # the close pair's markers are the first genes
    base = rng.gamma(0.4, 1.0, size=n_nuclear) + 0.02
    profiles = {t: base.copy() for t in names}
    others = [t for t in names if t not in CLOSE_PAIR]
    start = len(close)
    for t in others + ["T"]:  # T and NK share one set of broad markers (lymphoid), the rest their own
        block = slice(start, start + MARKERS_PER_TYPE)
        profiles[t][block] = base[block] * rng.uniform(6, 15, MARKERS_PER_TYPE) + 1.0
        start += MARKERS_PER_TYPE
    profiles["NK"] = profiles["T"].copy()
    nk = slice(0, close_markers)
    t_only = slice(close_markers, len(close))
    for t in names:
        profiles[t][: len(close)] = 0.02  # nearly absent everywhere ...
    profiles["NK"][nk] = close_level  # ... except a modest level in their own type
    profiles["T"][t_only] = close_level
    mito = rng.gamma(2.0, 1.0, N_MITO)
    shares = {}
    for t in names:
        p = profiles[t] / profiles[t].sum() * (1 - mito_fraction)
        shares[t] = np.concatenate([p, mito / mito.sum() * mito_fraction])
    weights = np.array([TYPES[t] for t in names])
    pooled = sum(w * shares[t] for w, t in zip(weights, names))  # ambient RNA: every cell's soup
    sizes = np.floor(weights * n_cells).astype(int)
    sizes[0] += n_cells - sizes.sum()
    labels = np.repeat(np.array(names), sizes)
    rng.shuffle(labels)
    library_sizes = rng.lognormal(np.log(library), 0.35, size=n_cells)
    mean = np.stack([shares[t] for t in labels]) * (1 - ambient) + pooled * ambient
    mean *= library_sizes[:, None]
    theta = dispersion * rng.lognormal(0.0, dispersion_spread, size=n_genes)
    theta[: len(close)] = dispersion  # the markers' noise is ordinary
    counts = rng.poisson(rng.gamma(theta, mean / theta))
    barcodes = [f"{''.join(rng.choice(list('ACGT'), 16))}-1" for _ in range(n_cells)]
    return Cells(
        counts=sp.csr_matrix(counts.astype(np.int32)),
        genes=genes,
        gene_ids=[f"ENSX{i:011d}" for i in range(n_genes)],
        barcodes=barcodes,
        cell_types=labels,
    )


def to_anndata(cells: Cells):
    import anndata as ad
    import pandas as pd

    return ad.AnnData(
        X=cells.counts.astype(np.float32),
        obs=pd.DataFrame({"cell_type": cells.cell_types}, index=cells.barcodes),
        var=pd.DataFrame({"gene_ids": cells.gene_ids}, index=cells.genes),
    )


def write_10x_h5(path: Path, cells: Cells) -> Path:
    """Cell Ranger v3 filtered_feature_bc_matrix.h5 (genes x cells CSC = cells x genes CSR)."""
    import h5py

    m = cells.counts.tocsr()
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"] = m.data.astype(np.int32)
        g["indices"] = m.indices.astype(np.int64)
        g["indptr"] = m.indptr.astype(np.int64)
        g["shape"] = np.array([m.shape[1], m.shape[0]], dtype=np.int32)
        g["barcodes"] = np.array(cells.barcodes, dtype="S")
        features = g.create_group("features")
        features["name"] = np.array(cells.genes, dtype="S")
        features["id"] = np.array(cells.gene_ids, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(cells.genes), dtype="S")
        features["genome"] = np.array(["GRCh38"] * len(cells.genes), dtype="S")
    return path


def write_mtx(directory: Path, cells: Cells) -> Path:
    """A 10x MTX directory: matrix.mtx.gz (genes x cells), features.tsv.gz, barcodes.tsv.gz."""
    from scipy.io import mmwrite

    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(directory / "matrix.mtx.gz", "wb") as fh:
        mmwrite(fh, sp.coo_matrix(cells.counts.T))
    with gzip.open(directory / "features.tsv.gz", "wt") as fh:
        fh.writelines(f"{i}\t{g}\tGene Expression\n" for i, g in zip(cells.gene_ids, cells.genes))
    with gzip.open(directory / "barcodes.tsv.gz", "wt") as fh:
        fh.writelines(f"{b}\n" for b in cells.barcodes)
    return directory


def log_normalised(counts: sp.csr_matrix, target_sum: float = 1e4) -> sp.csr_matrix:
    """What a processed object holds in X: counts scaled to target_sum per cell, then log1p."""
    totals = np.asarray(counts.sum(axis=1)).ravel()
    scaled = sp.diags(target_sum / np.maximum(totals, 1)) @ counts.astype(np.float64)
    scaled = sp.csr_matrix(scaled)
    scaled.data = np.log1p(scaled.data)
    return scaled.astype(np.float32)


def write_processed_h5ad(path: Path, cells: Cells, keep_counts: str | None = "layers") -> Path:
    """An analysed object as people share them: X log1p-normalised; the raw counts in
    layers["counts"] (keep_counts="layers"), in .raw ("raw"), or nowhere (None)."""
    adata = to_anndata(cells)
    raw = adata.X.copy()
    if keep_counts == "raw":
        adata.raw = adata.copy()
    adata.X = log_normalised(cells.counts)
    if keep_counts == "layers":
        adata.layers["counts"] = raw
    adata.write_h5ad(path)
    return path

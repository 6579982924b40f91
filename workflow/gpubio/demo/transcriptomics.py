"""Synthetic single-cell counts: 4 cell types, marker genes, mitochondrial genes, 2 batches.

Planted truth: each cell's type (`cell_types.tsv`), which cells are low quality (high mito
fraction or very few counts, so QC must drop exactly those), a batch effect on sample 2,
a labelled reference set for annotation, spatial coordinates for sample 1 in which
cells of one type sit together (so neighbourhood enrichment is positive for same types), and
ligand-receptor pairs whose two genes mark two known types.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from gpubio.demo import gzip_text

CELL_TYPES = ["T cell", "B cell", "Monocyte", "NK cell"]
MITO_GENES = [
    "MT-ND1",
    "MT-ND2",
    "MT-CO1",
    "MT-CO2",
    "MT-ATP8",
    "MT-ATP6",
    "MT-CO3",
    "MT-ND3",
    "MT-ND4L",
    "MT-ND4",
    "MT-ND5",
    "MT-ND6",
    "MT-CYB",
]
N_GENES = 1500
MARKERS_PER_TYPE = 20
# QC thresholds the demo config uses; low-quality cells are planted well beyond them
QC = {"min_genes": 200, "min_counts": 500, "max_mito_pct": 20}


def gene_names() -> list[str]:
    return [f"GENE{i:04d}" for i in range(N_GENES - len(MITO_GENES))] + MITO_GENES


def marker_genes() -> dict[str, list[str]]:
    names = gene_names()
    return {t: names[k * MARKERS_PER_TYPE : (k + 1) * MARKERS_PER_TYPE] for k, t in enumerate(CELL_TYPES)}


def expression_profiles(rng: np.random.Generator) -> np.ndarray:
    """Relative expression per type (types x genes), rows sum to 1 before mito genes are added."""
    n_nuclear = N_GENES - len(MITO_GENES)
    base = rng.gamma(shape=0.6, scale=1.0, size=n_nuclear)
    profiles = np.tile(base, (len(CELL_TYPES), 1))
    for k in range(len(CELL_TYPES)):
        markers = slice(k * MARKERS_PER_TYPE, (k + 1) * MARKERS_PER_TYPE)
        profiles[k, markers] = base[markers] * 12 + 2.0
    profiles /= profiles.sum(axis=1, keepdims=True)
    return profiles


def simulate_cells(
    rng: np.random.Generator,
    profiles: np.ndarray,
    n_cells: int,
    batch_scale: np.ndarray | None,
    low_quality_fraction: float = 0.06,
    prefix: str = "",
):
    """Counts (cells x genes, CSR), obs with cell_type and the planted low-quality flags."""
    n_types, n_nuclear = profiles.shape
    types = rng.integers(0, n_types, size=n_cells)
    libsize = rng.lognormal(np.log(3000), 0.35, size=n_cells)
    mito_frac = rng.uniform(0.01, 0.08, size=n_cells)
    flags = np.array(["ok"] * n_cells, dtype=object)
    n_bad = int(round(low_quality_fraction * n_cells))
    bad = rng.choice(n_cells, size=n_bad, replace=False)
    high_mito, low_counts = bad[: n_bad // 2], bad[n_bad // 2 :]
    mito_frac[high_mito] = rng.uniform(0.45, 0.7, size=len(high_mito))
    flags[high_mito] = "high_mito"
    libsize[low_counts] = rng.uniform(60, 200, size=len(low_counts))
    flags[low_counts] = "low_counts"

    mu = profiles[types] * (libsize * (1 - mito_frac))[:, None]
    if batch_scale is not None:
        mu = mu * batch_scale[None, :]
    mito_profile = rng.dirichlet(np.full(len(MITO_GENES), 5.0))
    mu_mito = mito_profile[None, :] * (libsize * mito_frac)[:, None]
    mu = np.hstack([mu, mu_mito])
    dispersion = 5.0  # negative binomial via gamma-Poisson
    counts = rng.poisson(rng.gamma(dispersion, mu / dispersion)).astype(np.int32)
    barcodes = [f"{prefix}{_barcode(rng)}-1" for _ in range(n_cells)]
    while len(set(barcodes)) < n_cells:  # 16-mers collide only in large sets (the benchmark's); redraw those
        seen: set[str] = set()
        for i, b in enumerate(barcodes):
            barcodes[i] = f"{prefix}{_barcode(rng)}-1" if b in seen else b
            seen.add(barcodes[i])
    obs = pd.DataFrame({"cell_type": [CELL_TYPES[t] for t in types], "quality": flags}, index=pd.Index(barcodes))
    return sp.csr_matrix(counts), obs


def _barcode(rng: np.random.Generator) -> str:
    return "".join(rng.choice(list("ACGT"), size=16))


def write_10x_h5(path: Path, counts: sp.csr_matrix, barcodes, genes) -> None:
    """Cell Ranger v3 filtered_feature_bc_matrix.h5 layout."""
    import h5py

    csc = counts.T.tocsc()  # genes x cells, column per cell
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        m.create_dataset("data", data=csc.data.astype(np.int32))
        m.create_dataset("indices", data=csc.indices.astype(np.int64))
        m.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array(csc.shape, dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        feat.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes), dtype="S"))
        feat.create_dataset("genome", data=np.array(["synthetic"] * len(genes), dtype="S"))
        feat.create_dataset("id", data=np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S"))
        feat.create_dataset("name", data=np.array(genes, dtype="S"))


def write_10x_mtx(directory: Path, counts: sp.csr_matrix, barcodes, genes) -> None:
    """Cell Ranger v3 MTX directory: matrix.mtx.gz, features.tsv.gz, barcodes.tsv.gz."""
    from scipy.io import mmwrite

    directory.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(directory / "matrix.mtx.gz", "wb", mtime=0) as fh:
        mmwrite(fh, counts.T.tocoo().astype(np.int32), field="integer")
    with gzip_text(directory / "features.tsv.gz") as fh:
        for i, g in enumerate(genes):
            fh.write(f"ENSG{i:011d}\t{g}\tGene Expression\n")
    with gzip_text(directory / "barcodes.tsv.gz") as fh:
        fh.writelines(f"{b}\n" for b in barcodes)


def spatial_layout(rng: np.random.Generator, cell_types: pd.Series) -> pd.DataFrame:
    """Each type occupies its own quadrant of a 1000 x 1000 field; 10 % of cells are scattered."""
    centres = {t: np.array([250 + 500 * (k % 2), 250 + 500 * (k // 2)]) for k, t in enumerate(CELL_TYPES)}
    xy = np.empty((len(cell_types), 2))
    for i, t in enumerate(cell_types):
        if rng.random() < 0.9:
            xy[i] = centres[t] + rng.uniform(-240, 240, size=2)
        else:
            xy[i] = rng.uniform(0, 1000, size=2)
    return pd.DataFrame({"barcode": cell_types.index, "x": xy[:, 0].round(2), "y": xy[:, 1].round(2)})


def write_interactions(path: Path) -> list[dict]:
    """Ligand-receptor pairs for squidpy ligrec: a marker of one type paired with a marker of another,
    so the pair's mean expression is highest between exactly those two types."""
    markers = marker_genes()
    pairs = [("T cell", "B cell"), ("Monocyte", "NK cell")]
    rows = [{"source": markers[a][0], "target": markers[b][0], "source_type": a, "target_type": b} for a, b in pairs]
    path.write_text("source\ttarget\n" + "".join(f"{r['source']}\t{r['target']}\n" for r in rows))
    return rows


def qc_truth(counts: sp.csr_matrix, obs: pd.DataFrame, genes: list[str]) -> dict:
    """What per-sample QC must report for these cells at the demo thresholds."""
    total = np.asarray(counts.sum(axis=1)).ravel()
    detected = np.asarray((counts > 0).sum(axis=1)).ravel()
    mito = np.asarray(counts[:, [g.startswith("MT-") for g in genes]].sum(axis=1)).ravel()
    pct = 100 * mito / np.maximum(total, 1)
    keep = (total >= QC["min_counts"]) & (detected >= QC["min_genes"]) & (pct <= QC["max_mito_pct"])
    planted_ok = (obs["quality"] == "ok").to_numpy()
    if not np.array_equal(keep, planted_ok):  # the planted flags must be exactly what QC sees
        raise RuntimeError("planted low-quality cells do not match the QC thresholds; change the seed")
    return {
        "cells": int(counts.shape[0]),
        "genes": int(counts.shape[1]),
        "total_counts": int(total.sum()),
        "cells_after_qc": int(keep.sum()),
        "high_mito_cells": int((obs["quality"] == "high_mito").sum()),
        "low_count_cells": int((obs["quality"] == "low_counts").sum()),
        "thresholds": QC,
    }


def make_transcriptomics(outdir: Path, rng: np.random.Generator, cells_per_sample: int = 600) -> dict:
    """Write two samples (10x h5 and MTX), a labelled reference h5ad, spatial CSV and truth."""
    import anndata as ad

    outdir.mkdir(parents=True, exist_ok=True)
    genes = gene_names()
    profiles = expression_profiles(rng)
    batch_scale = rng.lognormal(0.0, 0.35, size=profiles.shape[1])
    rows, truth, labels = {}, {}, []
    for k, (sample, scale) in enumerate([("pbmc1", None), ("pbmc2", batch_scale)]):
        counts, obs = simulate_cells(rng, profiles, cells_per_sample, scale, prefix="")
        if k == 0:
            write_10x_h5(outdir / f"{sample}.h5", counts, list(obs.index), genes)
            rows[sample] = {"counts": f"{sample}.h5", "batch": "batch1", "spatial": f"{sample}_spatial.csv"}
            spatial_layout(rng, obs["cell_type"]).to_csv(outdir / f"{sample}_spatial.csv", index=False)
        else:
            write_10x_mtx(outdir / sample, counts, list(obs.index), genes)
            rows[sample] = {"counts": sample, "batch": "batch2"}
        truth[sample] = qc_truth(counts, obs, genes)
        labels.append(obs.assign(sample=sample))
    cell_types = pd.concat(labels)
    cell_types.index.name = "barcode"
    cell_types.to_csv(outdir / "cell_types.tsv", sep="\t")

    ref_counts, ref_obs = simulate_cells(rng, profiles, 800, None, low_quality_fraction=0.0, prefix="REF_")
    reference = ad.AnnData(X=ref_counts.astype(np.float32), obs=ref_obs[["cell_type"]])
    reference.var_names = genes
    reference.write_h5ad(outdir / "reference.h5ad")

    interactions = write_interactions(outdir / "interactions.tsv")
    summary = {"samples": truth, "markers": marker_genes(), "cell_types": CELL_TYPES, "interactions": interactions}
    (outdir / "truth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows

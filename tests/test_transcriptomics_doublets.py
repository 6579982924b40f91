"""Doublet detection (transcriptomics.doublets): Scrublet per batch, judged on planted doublets.

The data set is written here (not by the demo generator): three cell types with their own
marker programmes, negative-binomial counts and uneven library sizes; each planted doublet is
the sum of two cells of different types, the way two cells in one droplet are counted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import gpubio, run_snakemake

TYPES, GENES, MARKERS = 3, 600, 40


def planted_doublets(seed: int = 3, singlets: int = 900, doublets: int = 60):
    """(counts, is_doublet, batch): singlets of three types and doublets summed from two types."""
    rng = np.random.default_rng(seed)
    background = rng.gamma(0.6, 1.0, GENES)
    profiles = np.tile(background, (TYPES, 1))
    for t in range(TYPES):
        profiles[t, t * MARKERS : (t + 1) * MARKERS] *= 2 + rng.random(MARKERS) * 2
    profiles /= profiles.sum(axis=1, keepdims=True)

    def draw(types: np.ndarray) -> np.ndarray:
        size = rng.lognormal(np.log(2500), 0.35, len(types))  # UMIs per cell
        mean = profiles[types] * size[:, None]
        # negative binomial (dispersion 0.2): gamma-Poisson
        return rng.poisson(rng.gamma(1 / 0.2, mean * 0.2)).astype(np.float32)

    singlet_types = rng.integers(0, TYPES, singlets)
    first = rng.integers(0, TYPES, doublets)
    second = (first + rng.integers(1, TYPES, doublets)) % TYPES  # always another type
    counts = np.vstack([draw(singlet_types), draw(first) + draw(second)])
    is_doublet = np.r_[np.zeros(singlets, bool), np.ones(doublets, bool)]
    order = rng.permutation(len(counts))
    return counts[order], is_doublet[order]


def write_sample(path, counts, batch="run1"):
    import anndata as ad
    from scipy import sparse

    adata = ad.AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({"sample": "s1", "batch": batch}, index=[f"cell{i}" for i in range(len(counts))]),
        var=pd.DataFrame(index=[f"G{i}" for i in range(counts.shape[1])]),
    )
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(path)


def detect(tmp_path, source, *options):
    out = {name: tmp_path / f"doublets.{name}" for name in ("h5ad", "tsv", "png")}
    proc = gpubio(
        "--threads",
        "1",
        "detect-doublets",
        str(source),
        "--sample",
        "s1",
        *options,
        "--out-h5ad",
        str(out["h5ad"]),
        "--out-tsv",
        str(out["tsv"]),
        "--out-png",
        str(out["png"]),
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_planted_doublets_score_high_auroc_at_least_0_85(tmp_path):
    import anndata as ad
    from sklearn.metrics import roc_auc_score

    counts, truth = planted_doublets()
    write_sample(tmp_path / "filtered.h5ad", counts)
    out, proc = detect(tmp_path, tmp_path / "filtered.h5ad")
    cells = ad.read_h5ad(out["h5ad"])
    assert cells.n_obs == len(truth)  # flag only (the default): every cell kept
    auroc = roc_auc_score(truth, cells.obs["doublet_score"].to_numpy())
    assert auroc >= 0.85, auroc
    called = cells.obs["predicted_doublet"].to_numpy()
    assert called.dtype == bool and called.sum() > 0
    assert (truth[called]).mean() > 0.5  # most called cells are planted doublets
    table = pd.read_csv(out["tsv"], sep="\t")
    assert table.loc[0, "sample"] == "s1" and table.loc[0, "doublets"] == called.sum()
    assert table.loc[0, "doublet_rate"] == pytest.approx(called.sum() / len(truth), abs=1e-4)
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "scanpy on cpu" in proc.stderr  # the backend is logged


def test_remove_drops_the_called_doublets_and_a_threshold_is_obeyed(tmp_path):
    import anndata as ad

    counts, truth = planted_doublets(seed=5, singlets=500, doublets=40)
    write_sample(tmp_path / "filtered.h5ad", counts)
    out, _ = detect(tmp_path, tmp_path / "filtered.h5ad", "--remove", "--threshold", "0.3")
    kept = ad.read_h5ad(out["h5ad"])
    table = pd.read_csv(out["tsv"], sep="\t")
    removed = int(table.loc[0, "doublets_removed"])
    assert removed == table.loc[0, "doublets"] and kept.n_obs == len(truth) - removed
    assert not kept.obs["predicted_doublet"].any() and (kept.obs["doublet_score"] <= 0.3).all()


def test_doublet_counts_join_the_qc_table(tmp_path):
    import json

    from gpubio.qc_summary import qc_table

    for sample, cells in (("a", 100), ("b", 200)):
        (tmp_path / sample).mkdir()
        (tmp_path / sample / "qc.json").write_text(
            json.dumps({"cells": cells, "cells_after_qc": cells - 10, "mean_pct_mito": 2.0})
        )
        (tmp_path / f"{sample}.tsv").write_text(f"sample\tdoublets\tdoublet_rate\n{sample}\t{cells // 20}\t0.05\n")
    table = qc_table(
        "transcriptomics", [str(tmp_path / s / "qc.json") for s in "ab"], [str(tmp_path / f"{s}.tsv") for s in "ab"]
    )
    assert table[["sample", "cells", "doublets"]].values.tolist() == [["a", 100, 5], ["b", 200, 10]]


def test_the_workflow_runs_doublet_detection_between_cell_qc_and_integration(workdir):
    proc = run_snakemake(workdir, "-n", "-p", "results/transcriptomics/integrated.h5ad")
    out = proc.stdout
    assert out.count("rule detect_doublets:") == 2  # one job per sample
    assert (
        "integrate-cells results/transcriptomics/pbmc1/doublets.h5ad results/transcriptomics/pbmc2/doublets.h5ad" in out
    )
    assert "--expected-rate 0.06 --no-remove --seed 0" in out
    config_file = workdir / "config" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["transcriptomics"]["doublets"] = {"enabled": False}
    config_file.write_text(yaml.safe_dump(config))
    out = run_snakemake(workdir, "-n", "-p", "results/transcriptomics/integrated.h5ad").stdout
    assert "detect_doublets" not in out
    assert "integrate-cells results/transcriptomics/pbmc1/filtered.h5ad" in out

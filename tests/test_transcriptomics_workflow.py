"""The transcriptomics module in the demo run, against the planted truth: clusters, labels,
markers, spatial statistics, figures in the report, and where the GPU steps were placed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(demo_data) -> Path:
    return demo_data / "resources" / "demo" / "transcriptomics"


@pytest.fixture(scope="module")
def atlas(demo_run):
    import anndata as ad

    return ad.read_h5ad(demo_run / "results/transcriptomics/atlas.h5ad")


@pytest.fixture(scope="module")
def truth(demo, atlas) -> pd.Series:
    table = pd.read_csv(demo / "cell_types.tsv", sep="\t")
    return table.set_index(table["sample"] + ":" + table["barcode"])["cell_type"].loc[atlas.obs_names]


def cluster_types(atlas, truth) -> dict[str, str]:
    """Each Leiden cluster's majority planted type."""
    return pd.crosstab(atlas.obs["leiden"], truth.to_numpy()).idxmax(axis=1).to_dict()


def test_atlas_holds_every_cell_with_clusters_labels_and_umap(demo_run, atlas, demo):
    qc = json.loads((demo / "truth.json").read_text())["samples"]
    assert atlas.n_obs == sum(s["cells_after_qc"] for s in qc.values())
    for column in ("sample", "batch", "leiden", "celltypist_label", "celltypist_conf", "scanvi_label", "scanvi_conf"):
        assert column in atlas.obs, column
    assert set(atlas.obs["sample"]) == {"pbmc1", "pbmc2"} and set(atlas.obs["batch"]) == {"batch1", "batch2"}
    assert atlas.obsm["X_umap"].shape == (atlas.n_obs, 2) and np.isfinite(atlas.obsm["X_umap"]).all()
    assert "X_pca_harmony" in atlas.obsm and "counts" in atlas.layers
    for conf in ("celltypist_conf", "scanvi_conf"):
        assert atlas.obs[conf].between(0, 1).all()
    log = (demo_run / "logs/transcriptomics/integrate_cells.log").read_text()
    assert "transcriptomics backend: scanpy on cpu (falling back to the CPU: this job was given no GPU)" in log


def test_leiden_recovers_the_planted_types_across_batches(atlas, truth):
    from sklearn.metrics import adjusted_rand_score

    assert atlas.obs["leiden"].nunique() == 4
    assert adjusted_rand_score(truth, atlas.obs["leiden"]) >= 0.9
    mix = pd.crosstab(atlas.obs["leiden"], atlas.obs["batch"], normalize="index")
    assert mix.min().min() > 0.3  # Harmony: the batch effect planted on pbmc2 does not split clusters


@pytest.mark.parametrize("method", ["celltypist", "scanvi"])
def test_annotation_matches_the_planted_types(atlas, truth, method):
    labels = atlas.obs[f"{method}_label"].astype(str)
    assert (labels == truth).mean() >= 0.9
    for sample in ("pbmc1", "pbmc2"):  # each query sample on its own
        mask = (atlas.obs["sample"] == sample).to_numpy()
        assert (labels[mask] == truth[mask]).mean() >= 0.9, sample
    assert atlas.obs[f"{method}_conf"].mean() > 0.5


def test_marker_table_names_the_planted_markers(demo_run, atlas, truth, demo):
    markers = pd.read_csv(demo_run / "results/transcriptomics/markers.tsv", sep="\t", dtype={"cluster": str})
    assert list(markers.columns) == ["cluster", "rank", "gene", "score", "logfoldchange", "pval", "pval_adj"]
    planted = json.loads((demo / "truth.json").read_text())["markers"]
    for cluster, cell_type in cluster_types(atlas, truth).items():
        top = markers[markers["cluster"] == cluster].sort_values("rank")["gene"].head(5)
        assert set(top) <= set(planted[cell_type]), (cluster, cell_type, list(top))


def test_spatial_enrichment_is_positive_for_same_type_neighbours(demo_run, atlas, truth, demo):
    table = pd.read_csv(
        demo_run / "results/transcriptomics/spatial/pbmc1.tsv",
        sep="\t",
        dtype={"first": str, "second": str},
        keep_default_na=False,
    )
    assert not (demo_run / "results/transcriptomics/spatial/pbmc2.tsv").exists()  # no coordinates
    z = table[table["statistic"] == "nhood_enrichment_z"].astype({"value": float})
    same, other = z[z["first"] == z["second"]], z[z["first"] != z["second"]]
    assert len(same) == 4 and (same["value"] > 2).all()  # every type sits with its own kind
    assert (other["value"] < 0).all()
    moran = table[table["statistic"] == "morans_i"].astype({"value": float}).set_index("first")["value"]
    planted = json.loads((demo / "truth.json").read_text())
    marker_genes = {g for genes in planted["markers"].values() for g in genes}
    assert len(moran) == 20 and moran[moran.index.isin(marker_genes)].min() > 0.3
    # ligrec: each planted pair is strongest from its ligand's type to its receptor's type
    ligrec = table[table["statistic"] == "ligrec_mean"].astype({"value": float})
    types = cluster_types(atlas, truth)
    for pair in planted["interactions"]:
        rows = ligrec[ligrec["first"] == f"{pair['source']}->{pair['target']}"]
        best = rows.loc[rows["value"].idxmax(), "second"].split("|")
        assert [types[c] for c in best] == [pair["source_type"], pair["target_type"]]


def test_report_shows_the_transcriptomics_figures(demo_run):
    plots = demo_run / "results/transcriptomics/plots"
    for name in ("umap.png", "qc_violins.png", "markers_dotplot.png"):
        assert (plots / name).read_bytes()[:4] == b"\x89PNG", name
    assert (demo_run / "results/transcriptomics/spatial/pbmc1.png").read_bytes()[:4] == b"\x89PNG"
    html = (demo_run / "results/report.html").read_text(errors="replace")
    for name in ("umap.png", "qc_violins.png", "markers_dotplot.png", "pbmc1.png", "markers.tsv"):
        assert name in html, name


def test_gpu_steps_are_placed_by_their_needs(demo_run):
    plan = pd.read_csv(demo_run / "results/gpu_plan.tsv", sep="\t", keep_default_na=False).set_index("rule")
    for rule in ("integrate_cells", "annotate_scanvi"):
        assert (plan.loc[rule, "gpus"], plan.loc[rule, "model"], plan.loc[rule, "partition"]) == (1, "T4", "gpu-t4")
    assert plan.loc["integrate_cells", "vram_gb"] <= 4  # demo-sized: 2 GB + 1.25 x the ~15 MB of input
    for rule in ("train_celltypist", "annotate_celltypist", "build_atlas", "plot_atlas", "spatial_stats"):
        assert plan.loc[rule, "partition"] == "cpu", rule

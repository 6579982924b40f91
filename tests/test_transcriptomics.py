"""Transcriptomics units: backend switch, one code path on both backends, GPU placement of the
integration step, config checks, rank-value encoding and embeddings with a tiny random model."""

from __future__ import annotations

import importlib.machinery
import json
import logging
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, demo_config, run_snakemake
from gpubio.transcriptomics.backend import BackendError, select_backend
from gpubio.transcriptomics.sizing import atlas_vram_gb, counts_nonzeros, expected_input_mb, input_size_mb

DEMO_SAMPLES = {"pbmc1": ("pbmc1.h5", "batch1"), "pbmc2": ("pbmc2", "batch2")}


@pytest.fixture(scope="module")
def demo(demo_data) -> Path:
    return demo_data / "resources" / "demo" / "transcriptomics"


def truth_labels(demo: Path) -> pd.Series:
    """Planted cell type per cell, indexed like the workflow's cells: sample:barcode."""
    table = pd.read_csv(demo / "cell_types.tsv", sep="\t")
    return table.set_index(table["sample"] + ":" + table["barcode"])["cell_type"]


@pytest.fixture(scope="module")
def filtered(demo, tmp_path_factory) -> list[str]:
    """The demo samples after cell QC (what the integration step reads)."""
    from gpubio.transcriptomics.qc import sample_qc

    out = tmp_path_factory.mktemp("filtered")
    qc = demo_config()["transcriptomics"]["qc"]
    paths = []
    for sample, (counts, batch) in DEMO_SAMPLES.items():
        path = out / f"{sample}.h5ad"
        sample_qc(str(demo / counts), sample, batch, str(out / f"{sample}.json"), str(path), **qc)
        paths.append(str(path))
    return paths


def test_h5ad_input_gives_the_same_cells_as_the_10x_files(demo, filtered, tmp_path):
    import anndata as ad
    import scanpy as sc

    from gpubio.transcriptomics.qc import sample_qc

    sc.read_10x_mtx(demo / "pbmc2", var_names="gene_symbols").write_h5ad(tmp_path / "pbmc2.h5ad")
    qc = demo_config()["transcriptomics"]["qc"]
    summary = sample_qc(
        str(tmp_path / "pbmc2.h5ad"),
        "pbmc2",
        "batch2",
        str(tmp_path / "qc.json"),
        str(tmp_path / "filtered.h5ad"),
        **qc,
    )
    from_mtx = ad.read_h5ad(filtered[1])
    from_h5ad = ad.read_h5ad(tmp_path / "filtered.h5ad")
    assert summary["cells_after_qc"] == from_mtx.n_obs
    assert list(from_h5ad.obs_names) == list(from_mtx.obs_names)
    assert (from_h5ad.layers["counts"] != from_mtx.layers["counts"]).nnz == 0


# --------------------------------------------------------------------------- backend switch


def test_backend_falls_back_to_scanpy_here_and_says_why(caplog):
    caplog.set_level(logging.INFO, logger="gpubio")
    backend = select_backend("auto", gpus=[])
    assert (backend.name, backend.device) == ("scanpy", "cpu")
    assert "transcriptomics backend: scanpy on cpu (falling back to the CPU: this job was given no GPU)" in caplog.text
    caplog.clear()
    backend = select_backend("auto", gpus=[0])  # a GPU, but no RAPIDS stack on this machine
    assert backend.name == "scanpy" and "rapids_singlecell is not installed" in caplog.text
    with pytest.raises(BackendError, match="backend is rapids_singlecell but rapids_singlecell is not installed"):
        select_backend("rapids_singlecell", gpus=[0])
    assert "rapids_singlecell" not in sys.modules and "cupy" not in sys.modules


def test_no_gpu_library_or_science_stack_is_imported_eagerly():
    code = (
        "import sys, gpubio.cli\n"
        "gpubio.cli.build_parser()\n"
        "import gpubio.transcriptomics.backend, gpubio.transcriptomics.cluster, gpubio.transcriptomics.annotation,"
        " gpubio.transcriptomics.spatial, gpubio.transcriptomics.embeddings, gpubio.transcriptomics.atlas,"
        " gpubio.transcriptomics.sizing, gpubio.transcriptomics.settings\n"
        "print(' '.join(m for m in ('rapids_singlecell', 'cupy', 'cuml', 'scanpy', 'torch', 'scvi', 'squidpy')"
        " if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    loaded = set(proc.stdout.split())
    assert not loaded & {"rapids_singlecell", "cupy", "cuml"}
    assert not loaded & {"scanpy", "scvi", "squidpy"}, "transcriptomics modules must import their stack lazily"


@pytest.fixture
def fake_rapids(monkeypatch):
    """A stand-in for rapids-singlecell with a GPU: scanpy underneath, every call recorded."""
    import scanpy as sc

    from gpubio.transcriptomics.backend import harmony_integrate

    calls = []

    def recorded(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    rsc = types.ModuleType("rapids_singlecell")
    rsc.__spec__ = importlib.machinery.ModuleSpec("rapids_singlecell", None)
    rsc.pp = types.SimpleNamespace(
        **{
            n: recorded(f"pp.{n}", getattr(sc.pp, n))
            for n in ("highly_variable_genes", "normalize_total", "log1p", "scale", "pca", "neighbors")
        },
        harmony_integrate=recorded("pp.harmony_integrate", harmony_integrate),
    )
    leiden = lambda adata, **kw: sc.tl.leiden(adata, flavor="igraph", n_iterations=2, directed=False, **kw)  # noqa: E731
    rsc.tl = types.SimpleNamespace(
        umap=recorded("tl.umap", sc.tl.umap),
        leiden=recorded("tl.leiden", leiden),
        rank_genes_groups=recorded("tl.rank_genes_groups", sc.tl.rank_genes_groups),
    )
    rsc.get = types.SimpleNamespace(
        anndata_to_GPU=recorded("to_GPU", lambda adata, **kw: None),
        anndata_to_CPU=recorded("to_CPU", lambda adata, **kw: None),
    )
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    monkeypatch.setitem(sys.modules, "rapids_singlecell", rsc)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return calls


def test_one_code_path_runs_on_the_gpu_backend_and_recovers_the_planted_types(fake_rapids, filtered, demo, caplog):
    from sklearn.metrics import adjusted_rand_score

    from gpubio.transcriptomics.cluster import ClusterParams, cluster_cells, combine_samples

    caplog.set_level(logging.INFO, logger="gpubio")
    backend = select_backend("auto", gpus=[0])
    assert (backend.name, backend.device) == ("rapids_singlecell", "cuda")
    assert "transcriptomics backend: rapids_singlecell on cuda (GPU 0)" in caplog.text
    settings = demo_config()["transcriptomics"]["cluster"]
    adata = combine_samples(filtered)
    cluster_cells(adata, ClusterParams(**settings), backend)
    assert fake_rapids == [
        "to_GPU",
        "pp.highly_variable_genes",
        "pp.normalize_total",
        "pp.log1p",
        "pp.scale",
        "pp.pca",
        "pp.harmony_integrate",
        "pp.neighbors",
        "tl.umap",
        "tl.leiden",
        "tl.rank_genes_groups",
        "to_CPU",
    ]
    assert adata.uns["gpubio"] == {"backend": "rapids_singlecell", "device": "cuda", "representation": "X_pca_harmony"}
    truth = truth_labels(demo).loc[adata.obs_names]
    assert adjusted_rand_score(truth, adata.obs["leiden"]) >= 0.9
    # Harmony removed the planted batch effect: every cluster holds cells of both batches
    mix = pd.crosstab(adata.obs["leiden"], adata.obs["batch"], normalize="index")
    assert mix.min().min() > 0.3


def test_gpu_backend_scales_before_pca_like_the_cpu_backend(fake_rapids, tmp_path):
    """The standard recipe on both backends: the stand-in (scanpy underneath) must give the CPU
    backend's principal components and clusters, from data unlike the demo's."""
    from gpubio.transcriptomics.cluster import ClusterParams, cluster_cells, combine_samples
    from gpubio.transcriptomics.qc import sample_qc
    from independent.transcriptomics import simulate, write_10x_h5

    qc = demo_config()["transcriptomics"]["qc"]
    sample_qc(
        str(write_10x_h5(tmp_path / "s.h5", simulate(seed=4, n_cells=500, n_genes=700))),
        "s",
        "b",
        str(tmp_path / "qc.json"),
        str(tmp_path / "s.h5ad"),
        **qc,
    )
    combined = combine_samples([str(tmp_path / "s.h5ad")])
    params = ClusterParams(n_pcs=15)
    on_gpu, on_cpu, unscaled = combined.copy(), combined.copy(), combined.copy()
    cluster_cells(on_gpu, params, select_backend("auto", gpus=[0]))
    assert fake_rapids[:6] == [
        "to_GPU",
        "pp.highly_variable_genes",
        "pp.normalize_total",
        "pp.log1p",
        "pp.scale",
        "pp.pca",
    ]
    cluster_cells(on_cpu, params, select_backend("scanpy", gpus=[]))
    np.testing.assert_allclose(on_gpu.obsm["X_pca"], on_cpu.obsm["X_pca"], rtol=1e-4, atol=1e-4)
    assert (on_gpu.obs["leiden"] == on_cpu.obs["leiden"]).all()
    fake_rapids.clear()
    cluster_cells(unscaled, ClusterParams(n_pcs=15, scale=False), select_backend("auto", gpus=[0]))
    assert "pp.scale" not in fake_rapids
    assert not np.allclose(np.abs(unscaled.obsm["X_pca"][:, 0]), np.abs(on_cpu.obsm["X_pca"][:, 0]), atol=1e-2)


# --------------------------------------------------------------------------- GPU placement


def test_integration_vram_places_small_data_on_a_t4_and_a_million_cells_on_an_80gb_card(demo):
    from gpubio.gpu import GpuNeed, inventory_from_dict, load_catalogue, load_inventory, place_gpu_job

    inventory = load_inventory(REPO / "profiles" / "slurm-gpu" / "partitions.yaml")
    catalogue = load_catalogue({})
    need = GpuNeed(gpus=1, vram_gb=atlas_vram_gb, min_compute_capability=7.0, policy="cheapest")

    demo_mb = expected_input_mb([str(demo / "pbmc1.h5"), str(demo / "pbmc2")])
    assert 5 < demo_mb < 50
    small = place_gpu_job(need, inventory, catalogue, input_size_mb=demo_mb)
    assert (small.partition, small.model.name) == ("gpu-t4", "T4")
    assert place_gpu_job(need, inventory, catalogue, attempt=2, input_size_mb=demo_mb).model.name == "A100-40"

    hundred_k = input_size_mb(100_000, 2000)  # 100k cells x 2,000 detected genes: still a T4
    assert place_gpu_job(need, inventory, catalogue, input_size_mb=hundred_k).model.name == "T4"
    atlas = input_size_mb(1_000_000, 2000)  # a million cells: 42 GB, more than a T4 or an A100-40
    assert atlas_vram_gb(atlas) > 40
    assert place_gpu_job(need, inventory, catalogue, input_size_mb=atlas).partition == "gpu-h100"
    with_a100_80 = inventory_from_dict(
        {
            "partitions": {
                "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"]},
                "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100"]},
                "gpu-h100": {"max_gpu": 2, "available_gpu_models": ["h100"]},
            }
        },
        "site.yaml",
    )
    assert place_gpu_job(need, with_a100_80, catalogue, input_size_mb=atlas).model.name == "A100-80"


def test_input_size_comes_from_the_count_file_headers(demo):
    import anndata as ad
    import scanpy as sc

    assert counts_nonzeros(str(demo / "pbmc1.h5")) == sc.read_10x_h5(demo / "pbmc1.h5").X.nnz
    assert counts_nonzeros(str(demo / "pbmc2")) == sc.read_10x_mtx(demo / "pbmc2").X.nnz
    assert counts_nonzeros(str(demo / "reference.h5ad")) == ad.read_h5ad(demo / "reference.h5ad").X.nnz


# --------------------------------------------------------------------------- configuration


def test_schema_defaults_are_the_parameter_defaults():
    import dataclasses

    from gpubio.config import load_schema
    from gpubio.transcriptomics.annotation import ScanviParams
    from gpubio.transcriptomics.cluster import ClusterParams
    from gpubio.transcriptomics.embeddings import EmbeddingParams
    from gpubio.transcriptomics.spatial import SpatialParams

    schema = load_schema("config.transcriptomics")["properties"]
    sections = {
        ClusterParams: schema["cluster"],
        SpatialParams: schema["spatial"],
        EmbeddingParams: schema["embeddings"],
        ScanviParams: schema["annotation"]["properties"]["scanvi"],
    }
    for cls, section in sections.items():
        for f in dataclasses.fields(cls):
            assert section["properties"][f.name]["default"] == f.default, (cls.__name__, f.name)


def test_config_options_reach_the_command_unchanged():
    from gpubio.cli import build_parser
    from gpubio.steps import step_options
    from gpubio.transcriptomics.cluster import ClusterParams
    from gpubio.transcriptomics.commands import params_from

    section = {"n_top_genes": 500, "harmony": False, "leiden_resolution": 0.7, "marker_method": "t-test"}
    args = build_parser().parse_args(
        [
            "integrate-cells",
            "a.h5ad",
            "--out-h5ad",
            "o",
            "--out-markers",
            "m",
            *step_options({"cluster": section}, "integrate-cells").split(),
        ]
    )
    assert params_from(args, ClusterParams) == ClusterParams(**section)


def test_bad_transcriptomics_config_stops_before_any_job(workdir):
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    config["transcriptomics"]["annotation"]["reference"] = "resources/missing.h5ad"
    config["transcriptomics"]["annotation"]["scanvi"]["enabled"] = False
    config["transcriptomics"]["spatial"]["cluster_key"] = "scanvi_label"
    config["transcriptomics"]["embeddings"]["weights"] = "resources/demo/transcriptomics"  # no config.json
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "transcriptomics.annotation.reference 'resources/missing.h5ad' is not an existing file" in out
    assert "transcriptomics.spatial.cluster_key is scanvi_label but that annotation does not run" in out
    assert "transcriptomics.embeddings.weights 'resources/demo/transcriptomics' has no config.json" in out
    assert "gpubio: 3 problem(s) in the configuration" in out
    assert not (workdir / "results").exists()


# --------------------------------------------------------------------------- embeddings


def test_rank_value_encoding_orders_genes_by_normalized_expression():
    import scipy.sparse as sp

    from gpubio.transcriptomics.embeddings import rank_value_encode

    counts = sp.csr_matrix(np.array([[10, 0, 30, 60, 5], [1, 1, 0, 0, 98]], dtype=float))
    keys = ["A", "B", "C", "D", "X"]  # X is not in the vocabulary
    tokens = {"<pad>": 0, "<mask>": 1, "A": 2, "B": 3, "C": 4, "D": 5}
    medians = {"A": 10.0, "B": 100.0, "C": 1000.0, "D": 6000.0}
    # cell 1: counts x 1e4/105, then / median: A 95.2, C 2.86, D 0.95 (X dropped) -> A, C, D
    sentences = rank_value_encode(counts, keys, tokens, medians, max_length=10)
    assert [list(s) for s in sentences] == [[2, 4, 5], [2, 3]]
    with_specials = rank_value_encode(counts, keys, tokens | {"<cls>": 6, "<eos>": 7}, medians, max_length=4)
    assert [list(s) for s in with_specials] == [[6, 2, 4, 7], [6, 2, 3, 7]]  # truncated to 4 with cls/eos


def tiny_model(path: Path, genes: list[str], seed: int = 0) -> None:
    """A randomly initialised 2-layer BERT with a Geneformer-style vocabulary, saved like a real one."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    tokens = {"<pad>": 0, "<mask>": 1} | {g: i + 2 for i, g in enumerate(sorted(genes))}
    config = BertConfig(
        vocab_size=len(tokens),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    BertForMaskedLM(config).save_pretrained(path)
    (path / "token_dictionary.json").write_text(json.dumps(tokens))


@pytest.fixture(scope="module")
def integrated_counts(filtered, tmp_path_factory) -> Path:
    """The samples combined (raw counts, gene ids) as the embedding step reads them."""
    from gpubio.transcriptomics.cluster import combine_samples

    path = tmp_path_factory.mktemp("integrated") / "integrated.h5ad"
    combine_samples(filtered).write_h5ad(path)
    return path


def test_embeddings_from_a_tiny_random_model_offline(integrated_counts, demo, tmp_path):
    import anndata as ad
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    from gpubio.cli import main
    from gpubio.transcriptomics.atlas import build_atlas
    from gpubio.transcriptomics.embeddings import embed_sentences, load_model, rank_value_encode

    cells = ad.read_h5ad(integrated_counts)
    weights = tmp_path / "tiny-geneformer"
    tiny_model(weights, list(cells.var["gene_ids"]))
    out = tmp_path / "embeddings.h5ad"
    main(
        [
            "--threads",
            "1",
            "embed-cells",
            "--integrated",
            str(integrated_counts),
            "--weights",
            str(weights),
            "--out",
            str(out),
            "--max-length",
            "24",
            "--layer",
            "-1",
        ]
    )
    emb = ad.read_h5ad(out)
    assert emb.shape == (cells.n_obs, 32) and list(emb.obs_names) == list(cells.obs_names)
    assert np.isfinite(emb.X).all() and emb.uns["embedding"]["device"] == "cpu"

    # the encoding puts each cell's planted marker genes first ...
    truth = truth_labels(demo).loc[cells.obs_names]
    markers = json.loads((demo / "truth.json").read_text())["markers"]
    tokens = json.loads((weights / "token_dictionary.json").read_text())
    ids = dict(zip(cells.var_names, cells.var["gene_ids"]))
    sentences = rank_value_encode(cells.layers["counts"], list(cells.var["gene_ids"]), tokens, None, 24)
    top = [set(s[:10]) for s in sentences]
    marker_tokens = {t: {tokens[ids[g]] for g in genes if g in ids} for t, genes in markers.items()}
    hits = np.mean([len(top[i] & marker_tokens[t]) / 10 for i, t in enumerate(truth)])
    assert hits > 0.8
    # ... so even a random model's embeddings separate the types
    assert cross_val_score(KNeighborsClassifier(5), emb.X, truth, cv=5).mean() >= 0.9
    # padding does not leak into a cell's embedding
    model = load_model(str(weights))
    alone = embed_sentences(model, sentences[:8], 0, {0, 1}, batch_size=1, layer=-1, device="cpu")
    batched = embed_sentences(model, sentences[:8], 0, {0, 1}, batch_size=8, layer=-1, device="cpu")
    assert np.allclose(alone, batched, atol=1e-5)
    np.testing.assert_allclose(alone, emb.X[:8], atol=1e-5)

    atlas = tmp_path / "atlas.h5ad"
    build_atlas(str(integrated_counts), str(atlas), [], str(out))
    assert ad.read_h5ad(atlas).obsm["X_geneformer"].shape == (cells.n_obs, 32)


def test_embeddings_rule_runs_only_when_weights_are_configured(workdir, tmp_path):
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    assert config["transcriptomics"]["embeddings"]["weights"] == ""  # off by default
    proc = run_snakemake(workdir, "-n", "-p", "--forceall")
    assert "rule embed_cells" not in proc.stdout
    tiny_model(workdir / "weights", ["ENSG00000000000"])
    config["transcriptomics"]["embeddings"]["weights"] = "weights"
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "-n", "-p", "--forceall")
    assert "rule embed_cells" in proc.stdout
    assert "--gpus 1 " in proc.stdout and "--usage benchmarks/transcriptomics/embed_cells.gpu.json" in proc.stdout
    assert "embed-cells --integrated results/transcriptomics/integrated.h5ad --weights weights" in proc.stdout
    assert "--embeddings results/transcriptomics/embeddings.h5ad" in proc.stdout


# --------------------------------------------------------------------------- scANVI epochs


def test_scanvi_epochs_default_to_scvi_tools_rule_and_an_integer_overrides():
    from gpubio.cli import build_parser
    from gpubio.config import load_schema
    from gpubio.steps import step_options
    from gpubio.transcriptomics.annotation import ScanviParams
    from gpubio.transcriptomics.commands import params_from

    scanvi = load_schema("config.transcriptomics")["properties"]["annotation"]["properties"]["scanvi"]["properties"]
    assert [scanvi[k]["default"] for k in ("scvi_epochs", "scanvi_epochs", "query_epochs")] == [None, None, None]
    assert scanvi["n_top_genes"]["default"] == 2000
    section = {"scvi_epochs": None, "scanvi_epochs": 7, "query_epochs": None, "n_top_genes": 2000}
    options = step_options({"annotation": {"scanvi": section}}, "annotate-scanvi")
    assert options == "--n-top-genes 2000 --scanvi-epochs 7"  # null: no flag, scvi-tools decides
    base = ["annotate-scanvi", "--integrated", "i.h5ad", "--reference", "r.h5ad", "--out", "o.tsv"]
    params = params_from(build_parser().parse_args([*base, *options.split()]), ScanviParams)
    assert (params.scvi_epochs, params.scanvi_epochs, params.query_epochs) == (None, 7, None)


def test_scanvi_logs_the_epochs_it_trained_for_and_reads_a_reference_named_by_ids(tmp_path, caplog):
    """scVI for the configured 3 epochs; scANVI with null epochs follows scvi-tools' rule for a
    model started from a trained scVI: a third of min(20,000 / cells x 400, 400), between 2 and 10."""
    import anndata as ad

    from gpubio.transcriptomics.annotation import ScanviParams, annotate_scanvi
    from independent.transcriptomics import simulate, to_anndata

    caplog.set_level(logging.INFO, logger="gpubio")
    cells = simulate(seed=6, n_cells=240, n_genes=300)
    reference = to_anndata(cells)
    reference.var["gene_symbols"] = list(reference.var_names)
    reference.var_names = [f"ENSG{i:011d}" for i in range(reference.n_vars)]
    reference.write_h5ad(tmp_path / "reference.h5ad")
    query = to_anndata(simulate(seed=7, n_cells=120, n_genes=300))
    query.layers["counts"] = query.X.copy()
    query.obs["batch"], query.obs["leiden"] = "b1", "0"
    query.write_h5ad(tmp_path / "integrated.h5ad")
    params = ScanviParams(n_top_genes=200, n_hidden=16, scvi_epochs=3, scanvi_epochs=None, query_epochs=2)
    out = tmp_path / "scanvi.tsv"
    annotate_scanvi(str(tmp_path / "integrated.h5ad"), str(tmp_path / "reference.h5ad"), "cell_type", str(out), params)
    assert "reference: gene symbols from var['gene_symbols']" in caplog.text
    assert "scVI (reference): 3 epochs on 240 cells (annotation.scanvi.scvi_epochs)" in caplog.text
    assert (
        "scANVI (reference): 10 epochs on 240 cells (scvi-tools' rule; annotation.scanvi.scanvi_epochs sets it)"
        in caplog.text
    )
    assert "scANVI (query mapped onto the reference): 2 epochs on 120 cells" in caplog.text
    labels = pd.read_csv(out, sep="\t")
    assert list(labels["cell"]) == list(ad.read_h5ad(tmp_path / "integrated.h5ad").obs_names)
    assert set(labels["scanvi_label"]) <= set(cells.cell_types)

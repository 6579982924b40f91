"""scGPT-style cell embeddings: per-cell value binning, the checkpoint layout, the <cls>
embedding against the test's own forward pass of the saved weights, and the workflow step
that puts obsm["X_scgpt"] into the atlas."""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from conftest import REPO, run_snakemake

ARGS = {
    "embsize": 24,
    "nheads": 3,
    "d_hid": 40,
    "nlayers": 2,
    "n_bins": 9,
    "pad_token": "<pad>",
    "pad_value": -2,
    "input_emb_style": "continuous",
    "dropout": 0.2,
    "max_seq_len": 1200,
}
SPECIALS = ["<pad>", "<cls>", "<eoc>"]


# --------------------------------------------------------------------------- test data


def make_cells(seed: int = 3, n_cells: int = 30, n_genes: int = 50):
    """Counts with symbols: three programmes over disjoint gene blocks, wide range of values,
    a few genes named outside any vocabulary (LNC-*)."""
    rng = np.random.default_rng(seed)
    genes = [f"SYM{i}" for i in range(n_genes - 5)] + [f"LNC-{i}" for i in range(5)]
    programme = rng.integers(0, 3, n_cells)
    rate = np.full((n_cells, n_genes), 0.3)
    for c, p in enumerate(programme):
        rate[c, p * 15 : p * 15 + 15] = rng.uniform(5, 80, 15)
    counts = rng.poisson(rate).astype(np.float32)
    return sp.csr_matrix(counts), genes, programme


def save_checkpoint(
    path: Path, genes: list[str], args: dict = ARGS, seed: int = 0, flash_names: bool = False, drop: str | None = None
) -> dict:
    """A random scGPT-layout checkpoint written by hand (no gpubio code): args.json,
    best_model.pt with the encoder's weights plus decoder weights, vocab.json."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d, h, layers = args["embsize"], args["d_hid"], args["nlayers"]
    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(genes))}

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))

    def norm(prefix):
        return {f"{prefix}.weight": 1 + w(d, scale=0.1), f"{prefix}.bias": w(d, scale=0.1)}

    state = {"encoder.embedding.weight": w(len(vocab), d, scale=1.0), **norm("encoder.enc_norm")}
    if args["input_emb_style"] == "continuous":
        state |= {
            "value_encoder.linear1.weight": w(d, 1, scale=0.5),
            "value_encoder.linear1.bias": w(d, scale=0.5),
            "value_encoder.linear2.weight": w(d, d),
            "value_encoder.linear2.bias": w(d, scale=0.1),
            **norm("value_encoder.norm"),
        }
    else:
        state |= {
            "value_encoder.embedding.weight": w(args["n_bins"] + 2, d, scale=1.0),
            **norm("value_encoder.enc_norm"),
        }
    for n in range(layers):
        p = f"transformer_encoder.layers.{n}"
        qkv = "self_attn.Wqkv" if flash_names else "self_attn.in_proj"
        state |= {
            f"{p}.{qkv}{'.' if flash_names else '_'}weight": w(3 * d, d),
            f"{p}.{qkv}{'.' if flash_names else '_'}bias": w(3 * d, scale=0.1),
            f"{p}.self_attn.out_proj.weight": w(d, d),
            f"{p}.self_attn.out_proj.bias": w(d, scale=0.1),
            f"{p}.linear1.weight": w(h, d),
            f"{p}.linear1.bias": w(h, scale=0.1),
            f"{p}.linear2.weight": w(d, h),
            f"{p}.linear2.bias": w(d, scale=0.1),
            **norm(f"{p}.norm1"),
            **norm(f"{p}.norm2"),
        }
    # not the encoder's: the decoders of scGPT's TransformerModel as its embedding code builds it
    # (ExprDecoder, ClsDecoder with n_layers_cls 3, MVCDecoder), the keys of a released best_model.pt
    state |= {
        "decoder.fc.0.weight": w(d, d),
        "decoder.fc.0.bias": w(d),
        "decoder.fc.2.weight": w(d, d),
        "decoder.fc.2.bias": w(d),
        "decoder.fc.4.weight": w(1, d),
        "decoder.fc.4.bias": w(1),
        **{
            f"cls_decoder._decoder.{i}.{part}": w(d, d) if part == "weight" else w(d)
            for i in (0, 3)
            for part in ("weight", "bias")
        },
        **norm("cls_decoder._decoder.2"),
        **norm("cls_decoder._decoder.5"),
        "cls_decoder.out_layer.weight": w(1, d),
        "cls_decoder.out_layer.bias": w(1),
        "mvc_decoder.gene2query.weight": w(d, d),
        "mvc_decoder.gene2query.bias": w(d),
        "mvc_decoder.W.weight": w(d, d),
    }
    if drop:
        del state[drop]
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "best_model.pt")
    (path / "args.json").write_text(json.dumps(args))
    (path / "vocab.json").write_text(json.dumps(vocab))
    return {"state": state, "vocab": vocab}


def reference_cls(state: dict, args: dict, tokens, values) -> np.ndarray:
    """The <cls> output of one cell, written out from the weights (float64): gene embedding +
    value embedding, then post-norm transformer layers (multi-head attention, ReLU MLP)."""
    import torch

    s = {k.replace("Wqkv.", "in_proj_"): v.double() for k, v in state.items()}
    d, heads = args["embsize"], args["nheads"]

    def ln(x, prefix):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * s[f"{prefix}.weight"] + s[f"{prefix}.bias"]

    def lin(x, prefix):
        return x @ s[f"{prefix}.weight"].T + s[f"{prefix}.bias"]

    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    v = torch.as_tensor(np.asarray(values), dtype=torch.float64)
    x = ln(s["encoder.embedding.weight"][t], "encoder.enc_norm")
    if args["input_emb_style"] == "continuous":
        hidden = torch.relu(
            torch.clamp(v, max=512)[:, None] @ s["value_encoder.linear1.weight"].T + s["value_encoder.linear1.bias"]
        )
        x = x + ln(lin(hidden, "value_encoder.linear2"), "value_encoder.norm")
    else:
        x = x + ln(s["value_encoder.embedding.weight"][v.long()], "value_encoder.enc_norm")
    for n in range(args["nlayers"]):
        p = f"transformer_encoder.layers.{n}"
        q, k, val = (x @ s[f"{p}.self_attn.in_proj_weight"].T + s[f"{p}.self_attn.in_proj_bias"]).split(d, dim=-1)
        split = [m.reshape(len(t), heads, d // heads).transpose(0, 1) for m in (q, k, val)]
        weights = torch.softmax(split[0] @ split[1].transpose(1, 2) / math.sqrt(d // heads), dim=-1)
        attended = (weights @ split[2]).transpose(0, 1).reshape(len(t), d)
        x = ln(x + lin(attended, f"{p}.self_attn.out_proj"), f"{p}.norm1")
        x = ln(x + lin(torch.relu(lin(x, f"{p}.linear1")), f"{p}.linear2"), f"{p}.norm2")
    return x[0].numpy()


def cell_tokens(counts_row: np.ndarray, genes: list[str], vocab: dict, n_bins: int, pad_value: float):
    """One cell as scGPT feeds it, computed here: <cls> + expressed genes in the vocabulary, with
    bins = how many of the cell's own quantile edges each value reaches."""
    keep = [j for j in range(len(genes)) if counts_row[j] > 0 and genes[j] in vocab]
    values = counts_row[keep].astype(float)
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    bins = (values[:, None] >= edges[None, :]).sum(axis=1)
    return [vocab["<cls>"]] + [vocab[genes[j]] for j in keep], [pad_value] + list(bins)


def write_integrated(path: Path, counts, genes: list[str], symbol_column: bool = False) -> Path:
    import anndata as ad
    import pandas as pd

    n = counts.shape[0]
    obs = pd.DataFrame({"sample": ["s1"] * n, "batch": ["b1"] * n}, index=[f"s1:c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"ENSQ{i:05d}" for i in range(len(genes))] if symbol_column else genes)
    if symbol_column:
        var["symbol"] = genes
    adata = ad.AnnData(X=sp.csr_matrix(np.log1p(counts.toarray())), obs=obs, var=var, layers={"counts": counts})
    adata.write_h5ad(path)
    return path


def embed(integrated: Path, weights: Path, out: Path, *options: str):
    import anndata as ad

    from gpubio.cli import main

    main(
        [
            "--threads",
            "1",
            "embed-cells",
            "--family",
            "scgpt",
            "--integrated",
            str(integrated),
            "--weights",
            str(weights),
            "--out",
            str(out),
            *options,
        ]
    )
    return ad.read_h5ad(out)


# --------------------------------------------------------------------------- binning


def test_binning_matches_known_values_and_an_independent_count_of_quantile_edges():
    from gpubio.transcriptomics.scgpt import bin_values

    # 1..9 in 4 bins: edges at the 0, 1/2, 1 quantiles = 1, 5, 9
    assert list(bin_values(np.arange(1, 10), 4)) == [1, 1, 1, 1, 2, 2, 2, 2, 3]
    # ties and a long tail: edges 1, 1, 2, 3, 100 (quantiles 0, .25, .5, .75, 1 of 9 values)
    assert list(bin_values([1, 1, 1, 2, 2, 3, 3, 50, 100], 6)) == [2, 2, 2, 3, 3, 4, 4, 4, 5]
    rng = np.random.default_rng(11)
    for n_bins in (5, 11, 51):
        for _ in range(4):
            values = rng.integers(1, 300, size=rng.integers(3, 90)).astype(float)
            edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
            expected = (values[:, None] >= edges[None, :]).sum(axis=1)
            got = bin_values(values, n_bins)
            assert list(got) == list(expected)
            assert got.min() >= 1 and got.max() == n_bins - 1  # the cell's top value gets the last bin
            # per-cell normalisation + log1p does not move a value to another bin
            assert list(bin_values(np.log1p(values / values.sum() * 1e4), n_bins)) == list(expected)


def test_cells_are_cls_then_vocabulary_genes_with_their_bins_capped_at_the_highest():
    from gpubio.transcriptomics.scgpt import encode_cells

    genes = ["A", "B", "NOPE", "C", "D", "E"]
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "A": 3, "B": 4, "C": 5, "D": 6, "E": 7}
    counts = sp.csr_matrix(np.array([[4, 0, 90, 1, 8, 2], [0, 0, 5, 0, 0, 0]], dtype=float))
    (t0, v0), (t1, v1) = encode_cells(counts, genes, vocab, n_bins=5, max_length=10, pad_value=-2)
    # cell 0 in the vocabulary: A 4, C 1, D 8, E 2 -> edges 1, 2, 4, 8 (quantiles 0, 1/3, 2/3, 1)
    assert list(t0) == [1, 6, 3, 7, 5] and list(v0) == [-2, 4, 3, 2, 1]  # NOPE (90 counts) left out
    assert list(t1) == [1] and list(v1) == [-2]  # only an unknown gene: just <cls>
    (t0, v0), _ = encode_cells(counts, genes, vocab, n_bins=5, max_length=3, pad_value=-2)
    assert list(t0) == [1, 6, 3] and list(v0) == [-2, 4, 3]  # binned over all four genes, then capped


# --------------------------------------------------------------------------- the model


@pytest.fixture()
def cells(tmp_path):
    counts, genes, programme = make_cells()
    return {
        "counts": counts,
        "genes": genes,
        "programme": programme,
        "integrated": write_integrated(tmp_path / "integrated.h5ad", counts, genes),
    }


@pytest.mark.parametrize("style", ["continuous", "category"])
def test_cls_embedding_equals_the_tests_own_forward_of_the_saved_weights(cells, tmp_path, style):
    args = ARGS | {"input_emb_style": style, "pad_value": ARGS["n_bins"] if style == "category" else -2}
    vocab_genes = [g for g in cells["genes"] if not g.startswith("LNC-")]
    saved = save_checkpoint(tmp_path / "model", vocab_genes, args)
    emb = embed(cells["integrated"], tmp_path / "model", tmp_path / "emb.h5ad", "--no-normalize", "--batch-size", "7")
    assert emb.shape == (30, ARGS["embsize"]) and list(emb.obs_names) == [f"s1:c{i}" for i in range(30)]
    dense = cells["counts"].toarray()
    for i in (0, 5, 17, 29):
        tokens, values = cell_tokens(dense[i], cells["genes"], saved["vocab"], args["n_bins"], args["pad_value"])
        np.testing.assert_allclose(emb.X[i], reference_cls(saved["state"], args, tokens, values), atol=2e-4)
    assert emb.uns["embedding"]["family"] == "scgpt" and emb.uns["embedding"]["genes_matched"] == 45


def test_embeddings_are_deterministic_normalised_and_follow_expression(cells, tmp_path):
    save_checkpoint(tmp_path / "model", cells["genes"][:-5])
    first = embed(cells["integrated"], tmp_path / "model", tmp_path / "a.h5ad", "--batch-size", "4").X
    again = embed(cells["integrated"], tmp_path / "model", tmp_path / "b.h5ad", "--batch-size", "30").X
    assert np.array_equal(
        first, embed(cells["integrated"], tmp_path / "model", tmp_path / "c.h5ad", "--batch-size", "4").X
    )
    np.testing.assert_allclose(first, again, atol=1e-5)  # padding in bigger batches changes nothing
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)

    counts = cells["counts"].toarray()
    changed = counts.copy()
    changed[3, :45] = counts[3, :45][::-1]  # cell 3 expresses the genes in reverse order
    changed[4, 45:] += 500  # cell 4: only genes outside the vocabulary change
    path = write_integrated(tmp_path / "changed.h5ad", sp.csr_matrix(changed), cells["genes"])
    other = embed(path, tmp_path / "model", tmp_path / "d.h5ad", "--batch-size", "4").X
    assert np.linalg.norm(other[3] - first[3]) > 0.05
    np.testing.assert_allclose(other[4], first[4], atol=1e-6)  # genes missing from vocab.json are dropped
    np.testing.assert_allclose(np.delete(other, [3, 4], 0), np.delete(first, [3, 4], 0), atol=1e-6)
    # the programmes (disjoint gene blocks) show even through random weights: a cell's nearest
    # other cell runs the same programme far more often than chance (1/3)
    sim = first @ first.T - 2 * np.eye(30)
    assert np.mean(cells["programme"][sim.argmax(axis=1)] == cells["programme"]) >= 0.6


def test_released_names_load_decoders_are_ignored_and_bad_checkpoints_fail_with_one_line(cells, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpubio")
    saved = save_checkpoint(tmp_path / "flash", cells["genes"], flash_names=True)
    emb = embed(cells["integrated"], tmp_path / "flash", tmp_path / "e.h5ad", "--no-normalize")
    dense = cells["counts"].toarray()
    tokens, values = cell_tokens(dense[2], cells["genes"], saved["vocab"], ARGS["n_bins"], ARGS["pad_value"])
    np.testing.assert_allclose(emb.X[2], reference_cls(saved["state"], ARGS, tokens, values), atol=2e-4)
    assert "50 of 50 genes matched" in caplog.text and "19 decoder weights not used" in caplog.text

    save_checkpoint(tmp_path / "broken", cells["genes"], drop="transformer_encoder.layers.1.linear2.weight")
    with pytest.raises(SystemExit) as failed:
        embed(cells["integrated"], tmp_path / "broken", tmp_path / "f.h5ad")
    message = str(failed.value)
    assert message.startswith("gpubio: embed-cells: ") and "\n" not in message
    assert "1 weights of the encoder are missing (e.g. transformer_encoder.layers.1.linear2.weight)" in message

    save_checkpoint(tmp_path / "wider", cells["genes"], ARGS | {"embsize": 30, "nheads": 3})
    (tmp_path / "wider" / "args.json").write_text(json.dumps(ARGS))  # args.json of another model
    with pytest.raises(
        SystemExit, match=r"encoder.embedding.weight has shape \(53, 30\), args.json implies \(53, 24\)"
    ):
        embed(cells["integrated"], tmp_path / "wider", tmp_path / "g.h5ad")
    assert not (tmp_path / "f.h5ad").exists() and not (tmp_path / "g.h5ad").exists()


def test_genes_are_matched_by_symbol_and_too_few_matches_stop_the_job(cells, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gpubio")
    save_checkpoint(tmp_path / "model", cells["genes"][:30])
    by_id = write_integrated(tmp_path / "by_id.h5ad", cells["counts"], cells["genes"], symbol_column=True)
    with pytest.raises(SystemExit) as failed:  # var_names are ids here: nothing matches
        embed(by_id, tmp_path / "model", tmp_path / "a.h5ad")
    assert "only 0 of 50 genes (var_names, e.g. 'ENSQ00000')" in str(failed.value)
    assert "set transcriptomics.embeddings.symbol_column" in str(failed.value)
    emb = embed(by_id, tmp_path / "model", tmp_path / "b.h5ad", "--symbol-column", "symbol")
    assert emb.uns["embedding"]["genes_matched"] == 30 and "30 of 50 genes matched by symbol" in caplog.text
    with pytest.raises(SystemExit, match="only 30 of 50 genes"):
        embed(
            by_id, tmp_path / "model", tmp_path / "c.h5ad", "--symbol-column", "symbol", "--min-vocab-fraction", "0.7"
        )


def test_atlas_gets_the_scgpt_key(cells, tmp_path):
    import anndata as ad

    from gpubio.transcriptomics.atlas import build_atlas

    save_checkpoint(tmp_path / "model", cells["genes"])
    embed(cells["integrated"], tmp_path / "model", tmp_path / "emb.h5ad")
    build_atlas(str(cells["integrated"]), str(tmp_path / "atlas.h5ad"), [], str(tmp_path / "emb.h5ad"))
    atlas = ad.read_h5ad(tmp_path / "atlas.h5ad")
    assert list(atlas.obsm) == ["X_scgpt"] and atlas.obsm["X_scgpt"].shape == (30, ARGS["embsize"])
    assert atlas.uns["scgpt"]["n_bins"] == ARGS["n_bins"]


def test_vram_grows_with_batch_size_times_length_and_moves_the_job_to_a_bigger_gpu(tmp_path):
    from gpubio.gpu import GpuNeed, load_catalogue, load_inventory, place_gpu_job
    from gpubio.transcriptomics.sizing import embedding_vram_gb

    released = dict(ARGS, embsize=512, nheads=8, d_hid=512, nlayers=12, n_bins=51)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "args.json").write_text(json.dumps(released))
    base = {"family": "scgpt", "weights": str(tmp_path / "w"), "vram_gb": 4, "batch_size": 16, "max_length": 1200}
    small = embedding_vram_gb(base)
    # 16 x 1,200 tokens: scores 16*8*1200^2 and softmax, 8 copies of 16*1200*512, float32 ~ 1.8 GB
    assert 5.6 <= small <= 6.0
    assert embedding_vram_gb(base | {"batch_size": 32}) - 4 == pytest.approx(2 * (small - 4), abs=0.1)
    assert embedding_vram_gb(base | {"max_length": 2400}) - 4 > 3.5 * (small - 4)
    inventory = load_inventory(REPO / "profiles" / "slurm-gpu" / "partitions.yaml")
    catalogue = load_catalogue({})
    for settings, fits in ((base, "T4"), (base | {"batch_size": 128, "max_length": 2048}, "H100")):
        placed = place_gpu_job(GpuNeed(gpus=1, vram_gb=embedding_vram_gb(settings)), inventory, catalogue)
        assert placed.model.name == fits


# --------------------------------------------------------------------------- the workflow


@pytest.fixture()
def scgpt_project(workdir):
    """The demo project with annotation off and scGPT embeddings from a random checkpoint whose
    vocabulary holds every second gene symbol of the demo counts."""
    import scanpy as sc

    symbols = list(sc.read_10x_h5(workdir / "resources/demo/transcriptomics/pbmc1.h5").var_names)
    save_checkpoint(workdir / "models" / "scgpt", symbols[::2])
    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    section = config["transcriptomics"]
    section["annotation"]["celltypist"]["enabled"] = False
    section["annotation"]["scanvi"]["enabled"] = False
    section["embeddings"].update(
        family="scgpt", weights="models/scgpt", batch_size=32, max_length=64, min_vocab_fraction=0.4
    )
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    return {"root": workdir, "symbols": symbols}


def test_plan_shows_the_embedding_job_on_a_gpu_partition_and_bad_checkpoints_stop_it(scgpt_project, tmp_path):
    root = scgpt_project["root"]
    proc = run_snakemake(
        root,
        "results/transcriptomics/atlas.h5ad",
        "-n",
        "-p",
        "--profile",
        str(REPO / "profiles" / "slurm-gpu"),
        "--sdm",
        "env-modules",
    )
    block = proc.stdout[proc.stdout.index("rule embed_cells:") :]
    resources = block[block.index("resources: ") :].splitlines()[0]
    assert "gpu=1" in resources and "gpu_model=t4" in resources and "slurm_partition=gpu-t4" in resources
    assert "--family scgpt" in block and "--weights models/scgpt" in block and "--batch-size 32" in block

    (root / "models" / "scgpt" / "best_model.pt").unlink()
    proc = run_snakemake(root, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "transcriptomics.embeddings.weights 'models/scgpt' has no best_model.pt; family scgpt" in out
    assert not (root / "results").exists()


@pytest.mark.e2e
def test_workflow_puts_scgpt_embeddings_into_the_atlas(scgpt_project):
    import anndata as ad

    root, symbols = scgpt_project["root"], scgpt_project["symbols"]
    run_snakemake(root, "--cores", "2", "results/transcriptomics/atlas.h5ad", timeout=1500)
    atlas = ad.read_h5ad(root / "results/transcriptomics/atlas.h5ad")
    assert atlas.obsm["X_scgpt"].shape == (atlas.n_obs, ARGS["embsize"]) and "X_geneformer" not in atlas.obsm
    np.testing.assert_allclose(np.linalg.norm(atlas.obsm["X_scgpt"], axis=1), 1.0, atol=1e-5)
    matched = sum(s in set(symbols[::2]) for s in atlas.var_names)
    assert atlas.uns["scgpt"]["genes_matched"] == matched and atlas.uns["scgpt"]["device"] == "cpu"
    log = (root / "logs/transcriptomics/embed_cells.log").read_text()
    assert f"{matched} of {atlas.n_vars} genes matched by symbol" in log
    assert "embeddings on the CPU" in log
    shutil.rmtree(root / "results")  # a large tmp tree: leave little behind

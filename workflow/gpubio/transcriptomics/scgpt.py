"""Foundation-model cell embeddings, scGPT style (Cui et al. 2024).

Each cell becomes its expressed genes (tokens from the checkpoint's vocabulary, matched by
gene symbol) paired with their expression binned per cell: the cell's non-zero values are
cut at their own quantiles into ``n_bins - 1`` bins (1 .. n_bins-1), so a value says how
high a gene is within that cell, not across cells. A ``<cls>`` token with the pad value
goes first; cells with more genes than ``max_length`` keep the highest-expressed. Gene
embedding + value embedding, summed, go through a transformer encoder (no positional
encoding: gene order carries no meaning); the cell's embedding is the output at ``<cls>``,
L2-normalised as scGPT does.

Checkpoint directory (the layout of scGPT's released models)::

    args.json       embsize, nheads, d_hid, nlayers, n_bins, input_emb_style
                    (continuous | category), pad_token, pad_value
    best_model.pt   state dict: encoder.embedding.weight, encoder.enc_norm.*,
                    value_encoder.* (continuous: linear1, linear2, norm; category:
                    embedding, enc_norm), transformer_encoder.layers.N.* (torch's
                    TransformerEncoderLayer; flash-attention ``Wqkv`` keys are renamed)
    vocab.json      gene symbol -> token id, with <pad>, <cls> (and <eoc>)

Other keys of the state dict (scGPT's decoders) are not used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gpubio.errors import UnusableInput

log = logging.getLogger("gpubio")

CHECKPOINT_FILES = ("args.json", "best_model.pt", "vocab.json")
VALUE_STYLES = ("continuous", "category")


class CheckpointError(UnusableInput):
    """A scGPT checkpoint directory that cannot be used as it is (the message says what to do)."""


@dataclass(frozen=True)
class ScgptArgs:
    """The parts of scGPT's args.json the encoder needs."""

    embsize: int
    nheads: int
    d_hid: int
    nlayers: int
    n_bins: int = 51
    input_emb_style: str = "continuous"
    pad_token: str = "<pad>"
    pad_value: int = -2  # scGPT's release: the <cls> and padding value (category style: an index)


def read_args(weights: str) -> ScgptArgs:
    path = Path(weights) / "args.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; a scGPT checkpoint directory holds {', '.join(CHECKPOINT_FILES)}")
    raw = json.loads(path.read_text())
    missing = [k for k in ("embsize", "nheads", "d_hid", "nlayers") if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)}; copy the args.json released with the weights")
    known = {k: raw[k] for k in ScgptArgs.__dataclass_fields__ if k in raw}
    if raw.get("input_emb_style", "continuous") == "category" and "pad_value" not in raw:
        known["pad_value"] = raw.get("n_bins", 51)  # scGPT's category style pads with index n_bins
    args = ScgptArgs(**known)
    if args.input_emb_style not in VALUE_STYLES:
        raise CheckpointError(
            f"{path}: input_emb_style {args.input_emb_style!r} is not supported; "
            f"use a checkpoint with {' or '.join(VALUE_STYLES)}"
        )
    return args


def read_vocab(weights: str, pad_token: str = "<pad>") -> dict[str, int]:
    path = Path(weights) / "vocab.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; copy the vocab.json released with the weights next to them")
    vocab = json.loads(path.read_text())
    missing = [t for t in (pad_token, "<cls>") if t not in vocab]
    if missing:
        raise CheckpointError(f"{path}: no {' or '.join(missing)} token; it is not a scGPT vocabulary")
    return {str(k): int(v) for k, v in vocab.items()}


def model_shape(weights: str) -> tuple[int, int] | None:
    """(embsize, nheads) from args.json, for sizing the job before it runs; None when unreadable."""
    try:
        args = read_args(weights)
    except (CheckpointError, OSError, ValueError):
        return None
    return args.embsize, args.nheads


# --------------------------------------------------------------------------- encoding


def bin_values(values, n_bins: int):
    """scGPT's per-cell binning of one cell's non-zero values: edges at the cell's own
    quantiles (n_bins - 1 of them), each value gets np.digitize's bin, 1 .. n_bins - 1.
    scGPT breaks ties at an edge at random; here they take the upper bin, so the same cell
    always gives the same tokens. Any per-cell monotone transform (normalising to a total,
    log1p) leaves the bins unchanged, so raw counts give the bins of log-normalised values."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    return np.digitize(values, edges).astype(np.int64)


def encode_cells(counts, symbols: list[str], vocab: dict, n_bins: int, max_length: int, pad_value: float):
    """(token ids, values) per cell: <cls> first with pad_value, then the expressed genes in the
    vocabulary with their bins, highest first, at most max_length tokens in all."""
    import numpy as np
    import scipy.sparse as sp

    counts = sp.csr_matrix(counts, dtype=np.float64)
    ids = np.array([vocab.get(s, -1) for s in symbols], dtype=np.int64)
    in_vocab = ids >= 0
    cls = vocab["<cls>"]
    encoded = []
    for i in range(counts.shape[0]):
        start, end = counts.indptr[i], counts.indptr[i + 1]
        genes, values = counts.indices[start:end], counts.data[start:end]
        keep = in_vocab[genes] & (values > 0)
        genes, values = genes[keep], values[keep]
        bins = bin_values(values, n_bins)  # over all the cell's matched genes, before capping (as scGPT)
        order = np.lexsort((genes, -values))[: max_length - 1]  # ties: gene order, deterministic
        tokens = np.concatenate([[cls], ids[genes[order]]]).astype(np.int64)
        binned = np.concatenate([[pad_value], bins[order]]).astype(np.float32)
        encoded.append((tokens, binned))
    return encoded


# --------------------------------------------------------------------------- the model


def build_model(args: ScgptArgs, ntoken: int, value_rows: int | None = None):
    """scGPT's TransformerModel encoder part, with its state-dict names."""
    import torch
    from torch import nn

    class GeneEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(ntoken, args.embsize)
            self.enc_norm = nn.LayerNorm(args.embsize)

        def forward(self, x):
            return self.enc_norm(self.embedding(x))

    class ContinuousValueEncoder(nn.Module):
        max_value = 512  # scGPT clamps values here

        def __init__(self):
            super().__init__()
            self.linear1 = nn.Linear(1, args.embsize)
            self.linear2 = nn.Linear(args.embsize, args.embsize)
            self.norm = nn.LayerNorm(args.embsize)

        def forward(self, x):
            x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
            return self.norm(self.linear2(torch.relu(self.linear1(x))))

    class CategoryValueEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(value_rows or args.n_bins + 2, args.embsize)
            self.enc_norm = nn.LayerNorm(args.embsize)

        def forward(self, x):
            return self.enc_norm(self.embedding(x.long()))

    class ScgptEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = GeneEncoder()
            self.value_encoder = (
                ContinuousValueEncoder() if args.input_emb_style == "continuous" else CategoryValueEncoder()
            )
            layer = nn.TransformerEncoderLayer(args.embsize, args.nheads, args.d_hid, dropout=0.0, batch_first=True)
            self.transformer_encoder = nn.TransformerEncoder(layer, args.nlayers, enable_nested_tensor=False)

        def forward(self, tokens, values, padding):
            """Output of every position; the cell's embedding is position 0 (<cls>)."""
            total = self.encoder(tokens) + self.value_encoder(values)
            return self.transformer_encoder(total, src_key_padding_mask=padding)

    return ScgptEncoder()


def load_model(weights: str):
    """(model in eval mode, args, vocab) from a scGPT checkpoint directory; never from the internet."""
    import torch

    args = read_args(weights)
    vocab = read_vocab(weights, args.pad_token)
    path = Path(weights) / "best_model.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; copy the best_model.pt released with args.json and vocab.json")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.replace("Wqkv.", "in_proj_"): v for k, v in state.items()}  # flash-attention names (scGPT does the same)
    if "encoder.embedding.weight" not in state:
        raise CheckpointError(f"{path}: no encoder.embedding.weight; it is not a scGPT state dict")
    ntoken = state["encoder.embedding.weight"].shape[0]
    value_rows = state["value_encoder.embedding.weight"].shape[0] if "value_encoder.embedding.weight" in state else None
    model = build_model(args, ntoken, value_rows)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{path}: {len(missing)} weights of the encoder are missing (e.g. {missing[0]}); "
            f"check args.json (nlayers {args.nlayers}, input_emb_style {args.input_emb_style}) "
            "against the checkpoint"
        )
    wrong = [k for k in expected if state[k].shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {k} has shape {tuple(state[k].shape)}, args.json implies "
            f"{tuple(expected[k].shape)}; use the args.json released with these weights"
        )
    unused = len(state) - len(expected)
    model.load_state_dict({k: state[k] for k in expected})
    if max(vocab.values()) >= ntoken:
        raise CheckpointError(
            f"{Path(weights) / 'vocab.json'}: token ids up to {max(vocab.values())}, "
            f"but the model has {ntoken} gene embeddings; vocab.json belongs to other weights"
        )
    log.info(
        "scGPT checkpoint %s: %d layers, %d dimensions, %d heads, %s values in %d bins; %d decoder weights not used",
        weights,
        args.nlayers,
        args.embsize,
        args.nheads,
        args.input_emb_style,
        args.n_bins,
        unused,
    )
    return model.eval(), args, vocab


def embed_cells(
    model, encoded: list, pad_id: int, pad_value: float, batch_size: int, device: str, normalize: bool = True
):
    """The <cls> output per cell (cells sorted by length to batch; padding is masked)."""
    import numpy as np
    import torch

    order = np.argsort([-len(t) for t, _ in encoded], kind="stable")
    width = model.encoder.embedding.embedding_dim
    out = np.zeros((len(encoded), width), dtype=np.float32)
    model.eval().to(device)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            length = max(len(encoded[i][0]) for i in rows)
            tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
            values = torch.full((len(rows), length), float(pad_value), dtype=torch.float32)
            for r, i in enumerate(rows):
                t, v = encoded[i]
                tokens[r, : len(t)], values[r, : len(v)] = torch.as_tensor(t), torch.as_tensor(v)
            padding = torch.zeros_like(tokens, dtype=torch.bool)
            for r, i in enumerate(rows):
                padding[r, len(encoded[i][0]) :] = True  # by length: a gene may share the pad token's id
            hidden = model(tokens.to(device), values.to(device), padding.to(device))
            out[rows] = hidden[:, 0, :].float().cpu().numpy()
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def run_scgpt(integrated: str, weights: str, out_h5ad: str, params, threads: int = 1) -> None:
    """The scGPT family of the embed-cells step: params is EmbeddingParams."""
    import anndata as ad
    import numpy as np

    from gpubio.atomic import atomic_path
    from gpubio.gpu.job import torch_device
    from gpubio.transcriptomics.embeddings import gene_keys

    device = torch_device("embeddings", threads)
    model, args, vocab = load_model(weights)
    adata = ad.read_h5ad(integrated)
    if params.symbol_column and params.symbol_column not in adata.var:
        raise CheckpointError(
            f"{integrated}: no var column {params.symbol_column!r} (it has: "
            f"{', '.join(adata.var.columns) or 'none'}); set transcriptomics.embeddings.symbol_column "
            'to one of them, or "" for the gene names'
        )
    symbols = gene_keys(adata, params.symbol_column)
    matched = sum(s in vocab for s in symbols)
    where = f"var[{params.symbol_column!r}]" if params.symbol_column else "var_names"
    log.info("scGPT vocabulary: %d of %d genes matched by symbol (%s)", matched, len(symbols), where)
    if matched < params.min_vocab_fraction * len(symbols):
        raise CheckpointError(
            f"{integrated}: only {matched} of {len(symbols)} genes ({where}, e.g. {symbols[0]!r}) are in "
            f"{Path(weights) / 'vocab.json'}; scGPT needs gene symbols: set transcriptomics.embeddings.symbol_column "
            "to the var column holding them (or lower min_vocab_fraction)"
        )
    encoded = encode_cells(adata.layers["counts"], symbols, vocab, args.n_bins, params.max_length, args.pad_value)
    emb = embed_cells(
        model, encoded, vocab[args.pad_token], args.pad_value, params.batch_size, device, params.normalize
    )
    result = ad.AnnData(X=emb, obs=adata.obs[["sample", "batch"]].copy())
    result.uns["embedding"] = {
        "family": "scgpt",
        "weights": str(weights),
        "max_length": params.max_length,
        "device": device,
        "genes_matched": matched,
        "n_bins": args.n_bins,
        "normalized": params.normalize,
        "median_tokens": float(np.median([len(t) for t, _ in encoded])),
    }
    with atomic_path(out_h5ad) as tmp:
        result.write_h5ad(tmp)
    log.info("embeddings (scGPT <cls>): %d cells x %d dimensions -> %s", *emb.shape, out_h5ad)

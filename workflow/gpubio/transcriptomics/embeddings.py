"""Foundation-model cell embeddings, Geneformer style (the scGPT family: ``scgpt.py``).

Each cell becomes a sentence of gene tokens: counts are normalized to 10,000 per cell,
divided by each gene's median over a large corpus (so housekeeping genes rank low), and
the expressed genes are sorted by that value, highest first (rank-value encoding). The
token ids go through a BERT model loaded from a local directory (``config.json`` +
weights, as ``save_pretrained`` writes them); a cell's embedding is the mean of one
layer's hidden states over its gene tokens.

The directory also holds the vocabulary: ``token_dictionary.json`` (or Geneformer's
``token_dictionary.pkl``): gene id -> token id, with ``<pad>`` (and optionally
``<cls>``/``<eos>``, which are then put around each cell); optionally
``gene_median_dictionary.json``/``.pkl`` (gene id -> median). Without medians each
gene's median non-zero normalized value in the data itself is used.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

from gpubio.steps import settings_class

log = logging.getLogger("gpubio")


# transcriptomics.embeddings in config.yaml (both families; some keys are one family's); fields, types and defaults from the schema (gpubio.steps)
EmbeddingParams = settings_class("EmbeddingParams", "embed-cells", "embeddings")


def _dictionary(weights: str, stem: str, required: bool) -> dict | None:
    for suffix in (".json", ".pkl"):
        path = Path(weights) / f"{stem}{suffix}"
        if path.is_file():
            if suffix == ".json":
                return json.loads(path.read_text())
            with open(path, "rb") as fh:  # Geneformer ships its dictionaries as pickles
                return pickle.load(fh)
    if required:
        raise FileNotFoundError(
            f"{weights}: no {stem}.json or {stem}.pkl (gene id -> token id); put it next to the weights"
        )
    return None


def gene_keys(adata, column: str) -> list[str]:
    """The ids the token dictionary uses: var[column] (e.g. Ensembl ids), or var_names when column is ""."""
    if not column:
        return list(adata.var_names)
    if column not in adata.var:
        raise ValueError(
            f"the atlas has no var column {column!r} (it has: {', '.join(adata.var.columns) or 'none'}); "
            'set transcriptomics.embeddings.gene_id_column, or "" to use gene names'
        )
    return list(adata.var[column].astype(str))


def rank_value_encode(
    counts, keys: list[str], tokens: dict, medians: dict | None = None, max_length: int = 2048, target_sum: float = 1e4
) -> list:
    """Token ids per cell: expressed genes in the vocabulary, by normalized expression, highest first."""
    import numpy as np
    import scipy.sparse as sp

    counts = sp.csr_matrix(counts, dtype=np.float64)
    in_vocab = np.array([k in tokens for k in keys])
    if not in_vocab.any():
        raise ValueError("no gene of the data is in the model's token dictionary; check embeddings.gene_id_column")
    ids = np.array([tokens.get(k, -1) for k in keys], dtype=np.int64)
    totals = np.asarray(counts.sum(axis=1)).ravel()
    normalized = sp.diags(target_sum / np.maximum(totals, 1)) @ counts
    normalized = sp.csr_matrix(normalized)
    if medians:
        median = np.array([float(medians.get(k, np.nan)) for k in keys])
    else:
        csc = normalized.tocsc()
        median = np.array(
            [
                np.median(csc.data[csc.indptr[j] : csc.indptr[j + 1]]) if csc.indptr[j + 1] > csc.indptr[j] else np.nan
                for j in range(csc.shape[1])
            ]
        )
    usable = in_vocab & np.isfinite(median) & (median > 0)
    scale = np.where(usable, 1.0 / np.where(usable, median, 1.0), 0.0)
    prefix = [tokens["<cls>"]] if "<cls>" in tokens else []
    suffix = [tokens["<eos>"]] if "<eos>" in tokens else []
    room = max_length - len(prefix) - len(suffix)
    sentences = []
    for i in range(normalized.shape[0]):
        start, end = normalized.indptr[i], normalized.indptr[i + 1]
        genes, values = normalized.indices[start:end], normalized.data[start:end] * scale[normalized.indices[start:end]]
        keep = values > 0
        genes, values = genes[keep], values[keep]
        order = np.lexsort((genes, -values))[:room]  # ties: gene order, so the encoding is deterministic
        sentences.append(np.array(prefix + list(ids[genes[order]]) + suffix, dtype=np.int64))
    return sentences


def embed_sentences(model, sentences: list, pad_id: int, special_ids: set, batch_size: int, layer: int, device: str):
    """Mean of one layer's hidden states over each cell's gene tokens (cells sorted by length to batch)."""
    import numpy as np
    import torch

    order = np.argsort([-len(s) for s in sentences], kind="stable")
    out = np.zeros((len(sentences), model.config.hidden_size), dtype=np.float32)
    model.eval().to(device)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [sentences[i] for i in order[start : start + batch_size]]
            width = max(len(s) for s in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            for row, sentence in enumerate(batch):
                ids[row, : len(sentence)] = torch.as_tensor(sentence)
            attention = (ids != pad_id).long()
            hidden = model(input_ids=ids.to(device), attention_mask=attention.to(device), output_hidden_states=True)
            states = hidden.hidden_states[layer].float().cpu()
            genes = attention.bool()
            for special in special_ids:
                genes &= ids != special
            weights = genes.unsqueeze(-1).float()
            pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
            out[order[start : start + batch_size]] = pooled.numpy()
    return out


def load_model(weights: str):
    """A BERT encoder from a local directory, never from the hub."""
    from transformers import BertModel

    if not (Path(weights) / "config.json").is_file():
        raise FileNotFoundError(
            f"{weights}: no config.json; point transcriptomics.embeddings.weights at a model directory"
        )
    return BertModel.from_pretrained(weights, local_files_only=True)


def run_embeddings(integrated: str, weights: str, out_h5ad: str, params: EmbeddingParams, threads: int = 1) -> None:
    import anndata as ad
    import numpy as np

    from gpubio.atomic import atomic_path
    from gpubio.gpu.job import torch_device

    device = torch_device("embeddings", threads)
    tokens = _dictionary(weights, "token_dictionary", required=True)
    medians = _dictionary(weights, "gene_median_dictionary", required=False)
    if "<pad>" not in tokens:
        raise ValueError(f"{weights}: the token dictionary has no <pad> token")
    model = load_model(weights)
    max_length = min(params.max_length, model.config.max_position_embeddings)
    adata = ad.read_h5ad(integrated)
    keys = gene_keys(adata, params.gene_id_column)
    log.info(
        "%d of %d genes are in the vocabulary; gene medians from %s",
        sum(k in tokens for k in keys),
        len(keys),
        "the model directory" if medians else "the data",
    )
    sentences = rank_value_encode(adata.layers["counts"], keys, tokens, medians, max_length)
    special = {tokens[t] for t in ("<pad>", "<cls>", "<eos>", "<mask>") if t in tokens}
    emb = embed_sentences(model, sentences, tokens["<pad>"], special, params.batch_size, params.layer, device)
    result = ad.AnnData(X=emb, obs=adata.obs[["sample", "batch"]].copy())
    result.uns["embedding"] = {
        "family": "geneformer",
        "weights": str(weights),
        "layer": params.layer,
        "max_length": max_length,
        "device": device,
        "median_tokens": float(np.median([len(s) for s in sentences])),
    }
    with atomic_path(out_h5ad) as tmp:
        result.write_h5ad(tmp)
    log.info("embeddings: %d cells x %d dimensions -> %s", *emb.shape, out_h5ad)

"""Cell-type labels from a labelled reference: CellTypist and scANVI (scvi-tools).

Both read raw counts: the reference's ``layers['counts']`` (or ``X``), and the integrated
object's ``layers['counts']``. Each writes one table, one row per cell:
``cell, <method>_label, <method>_conf`` (conf = the probability of the label given).
"""

from __future__ import annotations

import logging
import os

from gpubio.steps import settings_class

log = logging.getLogger("gpubio")

UNLABELLED = "gpubio:unlabelled"  # scANVI's category for the query cells


def read_reference(path: str, label_key: str, gene_symbol_column: str = ""):
    """The reference as raw counts (float32 CSR) with one obs column ``label_key``, genes named
    by symbol like the samples (Ensembl ids replaced by a var column's symbols)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from gpubio.transcriptomics.io import named_by_symbol

    ref = ad.read_h5ad(path)
    if label_key not in ref.obs:
        raise ValueError(
            f"{path}: obs has no column {label_key!r} (it has: {', '.join(map(str, ref.obs.columns)) or 'none'}); "
            "set transcriptomics.annotation.label_key to the column with the cell types"
        )
    counts = ref.layers["counts"] if "counts" in ref.layers else ref.X
    counts = sp.csr_matrix(counts, dtype=np.float32)
    sample = counts.data[:100_000]
    if sample.size and (np.any(sample < 0) or not np.allclose(sample, np.round(sample))):
        raise ValueError(
            f"{path}: expected raw counts in layers['counts'] or X, found non-integer values; "
            "store the raw counts in layers['counts']"
        )
    labels = ref.obs[label_key]
    keep = labels.notna().to_numpy()
    reference = ad.AnnData(X=counts[keep], obs=labels[keep].astype(str).to_frame(label_key), var=ref.var)
    reference = named_by_symbol(reference, f"{path}: reference", gene_symbol_column)
    if reference.n_obs == 0:
        raise ValueError(f"{path}: no cell has a label in obs[{label_key!r}]")
    log.info(
        "reference %s: %d cells, %d genes, %d labels",
        path,
        reference.n_obs,
        reference.n_vars,
        reference.obs[label_key].nunique(),
    )
    return reference


def query_counts(integrated: str):
    """The integrated cells as raw counts, with obs batch and leiden."""
    import anndata as ad

    adata = ad.read_h5ad(integrated)
    query = ad.AnnData(X=adata.layers["counts"], obs=adata.obs[["batch", "leiden"]].copy())
    query.var_names = adata.var_names
    return query


def log_normalized(adata):
    """A copy normalized to 10,000 counts per cell and log1p: what CellTypist expects."""
    import scanpy as sc

    adata = adata.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    return adata


def write_labels(path: str, cells, labels, confidence, method: str) -> None:
    import pandas as pd

    from gpubio.atomic import atomic_path

    table = pd.DataFrame({"cell": list(cells), f"{method}_label": list(labels), f"{method}_conf": list(confidence)})
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    counts = table[f"{method}_label"].value_counts().to_dict()
    log.info("%s labels: %s (mean confidence %.3f)", method, counts, table[f"{method}_conf"].mean())


# --------------------------------------------------------------------------- CellTypist


def train_celltypist(
    reference: str,
    label_key: str,
    out_model: str,
    max_iter: int = 200,
    threads: int = 1,
    seed: int = 0,
    gene_symbol_column: str = "",
) -> None:
    """Train a CellTypist logistic-regression model on the labelled reference."""
    import celltypist

    from gpubio.atomic import atomic_path

    ref = log_normalized(read_reference(reference, label_key, gene_symbol_column))
    model = celltypist.train(
        ref,
        labels=label_key,
        n_jobs=threads,
        max_iter=max_iter,
        feature_selection=False,
        random_state=seed,
        details=f"trained by gpubio on {os.path.basename(reference)}",
    )
    with atomic_path(out_model) as tmp:
        model.write(str(tmp))
    log.info("CellTypist model: %d cell types, %d genes -> %s", len(model.cell_types), len(model.features), out_model)


def annotate_celltypist(integrated: str, model: str, out_tsv: str, majority_voting: bool = False) -> None:
    """Label every cell with a CellTypist model (a .pkl path; never a bare name, which goes online)."""
    import celltypist
    import numpy as np

    query = log_normalized(query_counts(integrated))
    # a path without "/" would be looked up in CellTypist's online model index
    model_path = os.path.abspath(model)
    result = celltypist.annotate(
        query,
        model=model_path,
        majority_voting=majority_voting,
        over_clustering=query.obs["leiden"].astype(str) if majority_voting else None,
    )
    column = "majority_voting" if majority_voting else "predicted_labels"
    labels = result.predicted_labels[column].astype(str)
    probabilities = result.probability_matrix
    confidence = probabilities.to_numpy()[np.arange(len(labels)), probabilities.columns.get_indexer(labels)]
    write_labels(out_tsv, query.obs_names, labels, confidence, "celltypist")


# --------------------------------------------------------------------------- scANVI


# transcriptomics.annotation.scanvi in config.yaml (epochs None: scvi-tools' own rule); fields, types and defaults from the schema (gpubio.steps)
ScanviParams = settings_class("ScanviParams", "annotate-scanvi", "annotation.scanvi")


def trained_epochs(model, phase: str, configured: int | None, key: str) -> int:
    """Log and return the epochs a model trained for (its history has one row per epoch)."""
    epochs = len(model.history["elbo_train"])
    rule = (
        f"annotation.scanvi.{key}" if configured is not None else f"scvi-tools' rule; annotation.scanvi.{key} sets it"
    )
    log.info("%s: %d epochs on %d cells (%s)", phase, epochs, model.adata.n_obs, rule)
    return epochs


def annotate_scanvi(
    integrated: str,
    reference: str,
    label_key: str,
    out_tsv: str,
    params: ScanviParams,
    threads: int = 1,
    gene_symbol_column: str = "",
) -> None:
    """scVI + scANVI trained on the reference, the query mapped onto it (scArches), labels predicted."""
    import numpy as np
    import scanpy as sc

    from gpubio.gpu.job import torch_device

    device = torch_device("scANVI", threads)
    import scvi

    scvi.settings.seed = params.seed
    scvi.settings.num_threads = threads
    scvi.settings.dl_num_workers = 0
    scvi.settings.verbosity = logging.WARNING
    accelerator = "gpu" if device == "cuda" else "cpu"
    train_kwargs = dict(
        accelerator=accelerator,
        devices=1,
        batch_size=params.batch_size,
        train_size=1.0,
        enable_progress_bar=False,
        plan_kwargs={"lr": params.learning_rate},
    )

    ref = read_reference(reference, label_key, gene_symbol_column)
    if UNLABELLED in set(ref.obs[label_key]):
        raise ValueError(f"{reference}: label {UNLABELLED!r} is reserved; rename it")
    ref.layers["counts"] = ref.X
    ref.obs["batch"] = "reference"
    sc.pp.highly_variable_genes(
        ref, flavor="seurat_v3", n_top_genes=min(params.n_top_genes, ref.n_vars), layer="counts", subset=True
    )
    scvi.model.SCVI.setup_anndata(ref, layer="counts", batch_key="batch")
    # the architecture scArches recommends for later query mapping
    vae = scvi.model.SCVI(
        ref,
        n_latent=params.n_latent,
        n_hidden=params.n_hidden,
        n_layers=1,
        encode_covariates=True,
        use_layer_norm="both",
        use_batch_norm="none",
        dropout_rate=0.2,
    )
    vae.train(max_epochs=params.scvi_epochs, **train_kwargs)
    trained_epochs(vae, "scVI (reference)", params.scvi_epochs, "scvi_epochs")
    scanvi = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELLED, labels_key=label_key)
    scanvi.train(max_epochs=params.scanvi_epochs, n_samples_per_label=100, **train_kwargs)
    trained_epochs(scanvi, "scANVI (reference)", params.scanvi_epochs, "scanvi_epochs")

    query = query_counts(integrated)
    query.obs = query.obs[["batch"]].astype(str)
    query.obs[label_key] = UNLABELLED
    query.layers["counts"] = query.X
    scvi.model.SCANVI.prepare_query_anndata(query, scanvi)
    mapped = scvi.model.SCANVI.load_query_data(query, scanvi, accelerator=accelerator)
    train_kwargs["plan_kwargs"] = {"lr": params.learning_rate, "weight_decay": 0.0}
    mapped.train(max_epochs=params.query_epochs, check_val_every_n_epoch=None, **train_kwargs)
    trained_epochs(mapped, "scANVI (query mapped onto the reference)", params.query_epochs, "query_epochs")
    probabilities = mapped.predict(soft=True)
    labels = probabilities.idxmax(axis=1).astype(str)
    confidence = probabilities.max(axis=1).to_numpy(dtype=np.float64)
    write_labels(out_tsv, query.obs_names, labels, confidence, "scanvi")

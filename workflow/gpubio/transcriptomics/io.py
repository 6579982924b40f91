"""Read single-cell counts from a 10x .h5, a 10x MTX directory or an .h5ad, and make sure they
are counts: a log-normalised or scaled matrix given as counts would pass QC on log values and
reach the analysis as if it were raw. Genes are named by symbol (gpubio.transcriptomics.genes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gpubio.errors import UnusableInput

log = logging.getLogger("gpubio")

# values checked per matrix: evenly spaced over all of it, so a processed matrix (almost every
# value non-integer) cannot slip through, while a million-cell matrix is not read twice
CHECKED_VALUES = 1_000_000
GIVE_COUNTS = (
    "give the raw count matrix instead (Cell Ranger's filtered_feature_bc_matrix .h5 or MTX directory, "
    "or an .h5ad with raw counts in X, layers['counts'] or .raw)"
)


class SampleError(UnusableInput):
    """A sample that cannot be analysed; the message names the sample, its file and what to do."""


# the files of a 10x MTX directory: Cell Ranger 3+ names (gzipped) or Cell Ranger 2's, gzipped
# or not (downloads are often unpacked, or packed again)
MTX_FILES = {
    "matrix": ("matrix.mtx.gz", "matrix.mtx"),
    "features": ("features.tsv.gz", "features.tsv", "genes.tsv.gz", "genes.tsv"),
    "barcodes": ("barcodes.tsv.gz", "barcodes.tsv"),
}
MTX_ROLES = {"features": "the gene names", "barcodes": "the cell barcodes", "matrix": "the counts"}


class IncompleteMtx(ValueError):
    """A 10x MTX directory that lacks one of its three files; the message names it and the fix."""


def mtx_files(directory) -> dict[str, Path]:
    """The matrix, features and barcodes files of a 10x MTX directory; IncompleteMtx names any missing."""
    directory = Path(directory)
    found, missing = {}, []
    for part, names in MTX_FILES.items():
        path = next((directory / name for name in names if (directory / name).is_file()), None)
        if path is None:
            missing.append(f"{' or '.join(names)} ({MTX_ROLES[part]})")
        else:
            found[part] = path
    if missing:
        raise IncompleteMtx(
            f"10x MTX directory without {'; without '.join(missing)}; copy the missing file from the "
            "same Cell Ranger output (filtered_feature_bc_matrix/) into it"
        )
    return found


def read_mtx_features(path):
    """A features.tsv / genes.tsv file as the var table: index the gene names (second column,
    else the first), gene_ids (first column) and feature_types (third, Cell Ranger 3+)."""
    import pandas as pd

    features = pd.read_csv(path, sep="\t", header=None, dtype=str, keep_default_na=False)
    names = features[1] if features.shape[1] > 1 else features[0]
    var = pd.DataFrame({"gene_ids": features[0].to_numpy()}, index=names.to_numpy())
    if features.shape[1] > 2:
        var["feature_types"] = features[2].to_numpy()
    return var


def read_mtx_directory(directory):
    """A 10x MTX directory as AnnData: cells x genes, var as read_mtx_features gives it; genes
    only, as scanpy's gex_only."""
    import anndata as ad
    import pandas as pd
    import scipy.io
    import scipy.sparse as sp

    from gpubio.transcriptomics.genes import gene_expression_only

    files = mtx_files(directory)
    var = read_mtx_features(files["features"])
    barcodes = pd.read_csv(files["barcodes"], sep="\t", header=None, dtype=str, keep_default_na=False)[0]
    matrix = sp.csr_matrix(scipy.io.mmread(files["matrix"]).T, dtype=np.float32)
    if matrix.shape != (len(barcodes), len(var)):
        raise ValueError(
            f"matrix.mtx is {matrix.shape[1]} genes x {matrix.shape[0]} cells but there are "
            f"{len(var)} features and {len(barcodes)} barcodes"
        )
    adata = ad.AnnData(X=matrix, obs=pd.DataFrame(index=barcodes.to_numpy()), var=var)
    keep = gene_expression_only(adata.var)
    return adata if keep is None else adata[:, keep].copy()


def evenly_spaced_values(matrix) -> np.ndarray:
    """Up to CHECKED_VALUES of a matrix's stored values, spread over the whole matrix."""
    import scipy.sparse as sp

    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).reshape(-1)
    step = -(-values.size // CHECKED_VALUES) or 1
    return values[::step]


def counts_problem(values: np.ndarray) -> str | None:
    """What makes these values not counts (negative or non-integer ones), or None when they are."""
    values = np.asarray(values)
    if values.size == 0 or values.dtype.kind == "u":
        return None
    negative = values < 0
    if negative.any():
        return f"negative values (e.g. {values[negative][0]:.4g})"
    if values.dtype.kind in "iub":
        return None
    fractional = values != np.round(values)  # NaN counts here too
    if fractional.any():
        return f"non-integer values ({fractional.mean():.0%} of those checked, e.g. {values[fractional][0]:.4g})"
    return None


def raw_counts_inside(adata):
    """(where, AnnData) for each place an analysed .h5ad may keep its raw counts."""
    import anndata as ad

    if "counts" in adata.layers:
        yield "layers['counts']", ad.AnnData(X=adata.layers["counts"], obs=adata.obs, var=adata.var)
    if adata.raw is not None:
        yield ".raw", ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var)


def read_matrix(path: str):
    """The file as scanpy/anndata read it; a file that cannot be read is a SampleError."""
    import anndata as ad
    import scanpy as sc

    p = Path(path)
    try:
        if p.is_dir():
            return read_mtx_directory(p)
        if p.suffix == ".h5":
            return sc.read_10x_h5(p)
        if p.suffix == ".h5ad":
            return ad.read_h5ad(p)
    except IncompleteMtx as error:
        raise SampleError(f"{path}: {error}") from None
    except (OSError, EOFError, KeyError, ValueError, IndexError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SampleError(
            f"{path}: cannot be read ({reason}); copy the file again or point the sheet at a readable count matrix"
        ) from None
    raise SampleError(f"{path}: not a 10x .h5, 10x MTX directory or .h5ad")


def named_by_symbol(adata, who: str, gene_symbol_column: str = ""):
    """The matrix with gene symbols as var_names (unique), ids kept in var gene_ids, and only
    its genes when a 10x feature_types column lists other features; each change logged."""
    from gpubio.transcriptomics.genes import GeneNameProblem, gene_expression_only, repeated_note, resolve_gene_names

    keep = gene_expression_only(adata.var)
    if keep is not None:
        log.info("%s: %d features that are not genes (var feature_types) left out", who, len(keep) - sum(keep))
        adata = adata[:, keep].copy()
    try:
        genes = resolve_gene_names(adata.var_names, adata.var, gene_symbol_column)
    except GeneNameProblem as error:
        raise SampleError(f"{who}: {error}") from None
    if genes.source != "var_names":
        log.info("%s: gene symbols from %s (var_names are ids, e.g. %s)", who, genes.source, adata.var_names[0])
        if "gene_ids" not in adata.var:
            adata.var["gene_ids"] = adata.var_names.astype(str)
    if genes.repeated:
        log.warning("%s: %s", who, repeated_note(genes))
    adata.var_names = genes.names
    return adata


def read_counts(path: str, sample: str = "", gene_symbol_column: str = ""):
    """AnnData with raw counts in X (cells x genes), gene symbols as var_names (made unique).

    An .h5ad whose X is processed but which keeps the raw counts in layers['counts'] or .raw
    gives those (logged); any other input without counts is a SampleError. Ensembl ids as
    gene names are replaced by a var column's symbols (gpubio.transcriptomics.genes).
    """
    adata = read_matrix(path)
    who = f"{path}: sample {sample}" if sample else path
    problem = counts_problem(evenly_spaced_values(adata.X))
    if problem:
        tried = []
        for where, candidate in raw_counts_inside(adata):
            candidate_problem = counts_problem(evenly_spaced_values(candidate.X))
            if candidate_problem is None:
                log.info("%s: X holds %s (processed data); using the raw counts in %s", who, problem, where)
                adata = candidate
                break
            tried.append(f"{where} holds {candidate_problem} too")
        else:
            carried = "; ".join(tried) if tried else "no raw counts in layers['counts'] or .raw"
            raise SampleError(
                f"{who}: X holds {problem}, i.e. normalised or log-transformed data, not counts "
                f"({carried}); {GIVE_COUNTS}"
            )
    return named_by_symbol(adata, who, gene_symbol_column)

"""Read single-cell counts from a 10x .h5, a 10x MTX directory or an .h5ad, and make sure they
are counts: a log-normalised or scaled matrix given as counts would pass QC on log values and
reach the analysis as if it were raw."""

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
            return sc.read_10x_mtx(p, var_names="gene_symbols", cache=False)
        if p.suffix == ".h5":
            return sc.read_10x_h5(p)
        if p.suffix == ".h5ad":
            return ad.read_h5ad(p)
    except (OSError, EOFError, KeyError, ValueError, IndexError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SampleError(
            f"{path}: cannot be read ({reason}); copy the file again or point the sheet at a readable count matrix"
        ) from None
    raise SampleError(f"{path}: not a 10x .h5, 10x MTX directory or .h5ad")


def read_counts(path: str, sample: str = ""):
    """AnnData with raw counts in X (cells x genes), gene symbols as var_names (made unique).

    An .h5ad whose X is processed but which keeps the raw counts in layers['counts'] or .raw
    gives those (logged); any other input without counts is a SampleError.
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
    adata.var_names_make_unique()
    return adata

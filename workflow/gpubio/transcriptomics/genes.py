"""Gene names of a count matrix, and the genes samples share.

Mitochondrial genes (``qc.mito_prefix``), markers, CellTypist models and scANVI references
are all matched by gene symbol. A matrix named by Ensembl ids would give 0 % mitochondrial
counts without a word and share no gene with a reference, so ids are replaced by the symbols
of a var column (the usual names, or ``transcriptomics.gene_symbol_column``). Repeated names
are made unique (``NAME-1``) and counted. Samples are analysed on the genes every one of them
measured: a gene another sample lacks would read as 0 there and split the clusters by sample.

The start-up pass (from file headers, below) and the jobs (whole files) name genes with the
same functions, so both come to the same names.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

# var columns that hold gene symbols in files people share: scanpy's read_10x_* with
# var_names="gene_ids", CELLxGENE, Seurat/SCE conversions
SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "feature_name", "gene_name", "gene_names", "symbol", "symbols")
ENSEMBL_ID = re.compile(r"ENS[A-Z]*G\d{6,}(\.\d+)?")  # ENSG, ENSMUSG, ENSDARG ..., with a version or not
GENE_EXPRESSION = "Gene Expression"  # 10x feature type of genes (others: antibodies, CRISPR guides)
CHECKED_NAMES = 2000  # names looked at to tell ids from symbols
MIN_DISTINCT_SHARE = 0.5  # fewer distinct names than this share of genes: not one name per gene
MIN_SHARED_SHARE = 0.5  # samples sharing fewer than this share of the smallest one's genes are refused
EXAMPLES = 3


class GeneNameProblem(ValueError):
    """A matrix whose genes cannot be named by symbol; the message says what to set."""


@dataclass(frozen=True)
class GeneNames:
    names: list[str]  # one per gene, unique
    source: str  # "var_names" or "var['<column>']"
    repeated: list[str]  # names that occurred more than once, before they were made unique


def id_share(names) -> float:
    """Share of the names (up to CHECKED_NAMES spread over them) that are Ensembl gene ids."""
    names = list(names)
    if not names:
        return 0.0
    step = -(-len(names) // CHECKED_NAMES)
    checked = names[::step]
    return sum(bool(ENSEMBL_ID.fullmatch(str(n))) for n in checked) / len(checked)


def _filled(values) -> list[str]:
    return ["" if v is None or v != v else str(v).strip() for v in values]  # v != v: NaN


def symbol_column(var, configured: str = "") -> str | None:
    """The var column with gene symbols: the configured one, else the first usual one whose
    values are mostly filled and not ids; None when there is none (var: what was read of it)."""
    if configured:
        return configured if configured in var.columns else None
    by_lower = {str(c).lower(): c for c in var.columns}
    for name in SYMBOL_COLUMNS:
        column = by_lower.get(name)
        if column is None:
            continue
        values = _filled(var[column])
        filled = [v for v in values if v]
        if len(filled) >= 0.5 * len(values) and id_share(filled) <= 0.5:
            return column
    return None


def made_unique(names: list[str]) -> tuple[list[str], list[str]]:
    """(names with repeats renamed NAME-1, NAME-2 ... as scanpy does, the repeated names)."""
    import pandas as pd
    from anndata.utils import make_index_unique

    counts = Counter(names)
    repeated = [n for n, k in counts.items() if k > 1]
    if not repeated:
        return names, []
    return list(make_index_unique(pd.Index(names))), repeated


def resolve_gene_names(var_names, var, configured: str = "", columns=None) -> GeneNames:
    """Gene symbols for a matrix's genes (var_names and the var table, as its reader gives them;
    columns: every var column name, when var holds only some of them).

    var_names that are Ensembl ids are replaced by the symbols of a var column (``configured``,
    else the first usual one); a gene whose symbol is empty keeps its id. GeneNameProblem when
    ids cannot be replaced, or when the names are not one per gene (a wrong column).
    """
    var_names = [str(n) for n in var_names]
    listed = ", ".join(map(str, var.columns if columns is None else columns)) or "none"
    column = symbol_column(var, configured) if id_share(var_names) > 0.5 else None
    if column is None and id_share(var_names) > 0.5:
        if configured:
            raise GeneNameProblem(
                f"gene names are Ensembl ids (e.g. {var_names[0]}) and var has no column '{configured}' "
                f"(transcriptomics.gene_symbol_column; var has: {listed}); name the column with the gene symbols"
            )
        raise GeneNameProblem(
            f"gene names are Ensembl ids (e.g. {var_names[0]}) and var has no gene-symbol column "
            f"(looked for {', '.join(SYMBOL_COLUMNS)}; var has: {listed}); set "
            "transcriptomics.gene_symbol_column to the var column with the symbols (mitochondrial genes, "
            "markers and references are matched by symbol)"
        )
    if column is None:
        names, source = var_names, "var_names"
    else:
        names = [symbol or gene_id for symbol, gene_id in zip(_filled(var[column]), var_names)]
        source = f"var['{column}']"
    distinct = len(set(names))
    if names and distinct < MIN_DISTINCT_SHARE * len(names):
        common, times = Counter(names).most_common(1)[0]
        raise GeneNameProblem(
            f"{source} has {distinct:,} distinct names for {len(names):,} genes ('{common}' {times:,} times): "
            "not one name per gene; set transcriptomics.gene_symbol_column to the var column with one "
            "symbol per gene"
        )
    unique, repeated = made_unique(names)
    return GeneNames(unique, source, repeated)


def repeated_note(genes: GeneNames) -> str:
    """What happened to repeated names, for a log line or a start-up warning."""
    examples = ", ".join(genes.repeated[:EXAMPLES])
    more = ", ..." if len(genes.repeated) > EXAMPLES else ""
    return (
        f"{len(genes.repeated):,} gene name(s) in {genes.source} occur more than once ({examples}{more}); "
        f"kept as separate genes, renamed {genes.repeated[0]}-1 etc."
    )


def sizes_text(genes: dict[str, frozenset]) -> str:
    shown = sorted(genes.items(), key=lambda item: len(item[1]))
    text = ", ".join(f"{sample}: {len(names):,}" for sample, names in shown[:5])
    return text + (f" and {len(shown) - 5} more samples" if len(shown) > 5 else "")


@dataclass(frozen=True)
class Overlap:
    shared: frozenset[str]
    warning: str | None  # some genes are not in every sample: they are left out
    problem: str | None  # the samples share too few genes to be analysed together


def sample_overlap(genes: dict[str, frozenset[str]]) -> Overlap:
    """The genes every sample measured, and what to say when that is not all of them. Samples
    with one gene list (the usual case: one reference) are compared once."""
    if not genes:
        return Overlap(frozenset(), None, None)
    groups: dict[frozenset, list[str]] = {}
    for sample, names in genes.items():
        groups.setdefault(frozenset(names), []).append(sample)
    lists = list(groups)
    shared = frozenset.intersection(*lists)
    union = len(frozenset.union(*lists))
    smallest = min(len(names) for names in lists)
    if len(shared) < MIN_SHARED_SHARE * smallest:
        seen = Counter()  # name -> samples that measured it
        for names, samples in groups.items():
            seen.update(dict.fromkeys(names, len(samples)))
        odd = [
            sample
            for names, samples in groups.items()
            if len(samples) == 1 and sum(seen[name] > 1 for name in names) < MIN_SHARED_SHARE * len(names)
            for sample in samples
        ]
        odd_text = f"{', '.join(odd)} share few gene names with the other samples; " if len(odd) < len(genes) else ""
        return Overlap(
            shared,
            None,
            f"samples share only {len(shared):,} genes (genes per sample: {sizes_text(genes)}); {odd_text}"
            "another species, gene annotation or kind of identifier? Give count matrices with the same gene "
            "names (transcriptomics.gene_symbol_column names a var column of symbols), or analyse them apart",
        )
    if len(shared) < union:
        return Overlap(
            shared,
            f"samples measured different genes: {len(shared):,} of {union:,} are in every sample (genes per "
            f"sample: {sizes_text(genes)}); the analysis uses the {len(shared):,} shared genes, as a gene "
            "missing from a sample would read as 0 there and split the clusters by sample",
            None,
        )
    return Overlap(shared, None, None)


def mito_prefix_note(genes: dict[str, frozenset[str]], prefix: str) -> str | None:
    """A warning when samples have no gene starting with ``qc.mito_prefix`` but some that do in
    another case ("mt-" genes of a mouse with the human "MT-"): their mitochondrial filter would
    remove nothing."""
    if not prefix:
        return None
    lower, odd, example = prefix.lower(), [], ""
    checked: dict[frozenset, str] = {}  # one look per distinct gene list
    for sample, names in genes.items():
        if names not in checked:
            exact = any(name.startswith(prefix) for name in names)
            other = [] if exact else sorted(n for n in names if n.lower().startswith(lower))
            checked[names] = other[0][: len(prefix)] if other else ""
        if checked[names]:
            odd.append(sample)
            example = checked[names]
    if not odd:
        return None
    shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
    return (
        f"samples {shown}: no gene name starts with transcriptomics.qc.mito_prefix '{prefix}', but some start "
        f"with '{example}': the mitochondrial filter (qc.max_mito_pct) would remove nothing; set "
        f"qc.mito_prefix to '{example}' (mouse genes: 'mt-')"
    )


def gene_expression_only(var) -> list[bool] | None:
    """Which genes to keep of a 10x matrix with other features (antibodies, guides) in var
    ``feature_types``; None when there are none to drop."""
    if "feature_types" not in var.columns:
        return None
    keep = [str(t) == GENE_EXPRESSION for t in var["feature_types"]]
    return keep if any(keep) and not all(keep) else None


def symbol_set(var, configured: str = "", columns=None) -> frozenset[str]:
    """The genes of a var table (names as index) as cell QC will name them; GeneNameProblem when
    they cannot be named by symbol."""
    keep = gene_expression_only(var)
    if keep is not None:
        var = var[keep]
    return frozenset(resolve_gene_names(var.index, var, configured, columns).names)


# --------------------------------------------------------------------------- from file headers
# The start-up pass reads each count file's genes with h5py (importing anndata would cost every
# start ~2 s) and runs at every start, also of each cluster job: it reads what names the genes,
# undecoded, and keys the list by a digest of it. Files written from one reference hold one
# list, so a project of many samples decodes and names each distinct list once.


@dataclass(frozen=True)
class GeneTable:
    """A count file's genes as stored: ``key`` identifies what names them, ``read()`` gives the
    var table (the names as index, and those columns that take part), ``columns`` every var
    column's name."""

    key: bytes
    read: Callable[[], object]
    columns: tuple[str, ...]


def _digest(*parts: bytes) -> bytes:
    import hashlib

    digest = hashlib.sha1(usedforsecurity=False)  # an identity, not a seal: the fastest here
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.digest()


def _strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _key_bytes(values) -> bytes:
    """String values as bytes that identify them, without decoding: fixed-length ones as stored,
    variable-length ones (h5py gives bytes objects) joined."""
    if values.dtype.kind == "S":
        return values.tobytes() + str(values.dtype).encode()
    values = values.tolist()
    try:
        return b"\0".join(values)
    except TypeError:  # str objects (numpy unicode, or h5py set to decode)
        return "\0".join(map(str, values)).encode()


def _table(stored: dict, columns: tuple[str, ...]) -> GeneTable:
    """stored: "names" and the columns that take part -> their values (undecoded)."""
    import pandas as pd

    def read():
        decoded = {column: _strings(values.tolist()) for column, values in stored.items()}
        return pd.DataFrame(decoded, index=decoded.pop("names"))

    key = _digest(*(column.encode() + b"\0" + _key_bytes(values) for column, values in stored.items()))
    return GeneTable(key, read, columns)


def tenx_h5_genes(group) -> GeneTable:
    """The genes of a 10x .h5 matrix group: Cell Ranger 3+ features (name, id, feature_type), or
    Cell Ranger 2's gene_names and genes. The ids are not read: they never name genes here."""
    if "features" in group:
        features = group["features"]
        stored = {"names": features["name"][:]}
        if "feature_type" in features:
            stored["feature_types"] = features["feature_type"][:]
        return _table(stored, ("gene_ids", *(["feature_types"] if len(stored) > 1 else [])))
    return _table({"names": group["gene_names"][:]}, ("gene_ids",))


def mtx_genes(features_path) -> GeneTable:
    """The genes of a 10x MTX directory's features.tsv / genes.tsv (gzipped or not)."""
    import gzip
    import io as bytes_io

    from gpubio.transcriptomics.io import read_mtx_features

    raw = features_path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)

    def read():
        return read_mtx_features(bytes_io.BytesIO(raw))

    n_columns = raw[: raw.find(b"\n")].count(b"\t") + 1
    return GeneTable(_digest(raw), read, ("gene_ids", "feature_types")[: max(1, n_columns - 1)])


def h5ad_column(node):
    """The values of an .h5ad dataframe's string column, undecoded (plain, categorical or nullable
    strings: a numpy array); None for other columns."""
    import h5py
    import numpy as np

    if isinstance(node, h5py.Dataset):
        return node[:] if node.dtype.kind in "OSU" else None
    kind = node.attrs.get("encoding-type", "")
    if kind == "categorical":
        categories = node["categories"][:]
        if categories.dtype.kind not in "OSU":
            return None
        codes = node["codes"][:]
        return np.where(codes >= 0, np.append(categories, b"")[codes], b"")
    if kind == "nullable-string-array":
        return np.where(node["mask"][:], b"", node["values"][:])
    return None


def h5ad_genes(group, columns: tuple[str, ...]) -> GeneTable | None:
    """An .h5ad var (or raw/var) group's genes: its index, feature_types, and, where the index
    holds Ensembl ids, those of ``columns`` (symbol columns) it has; None for a layout this does
    not know."""
    index = group.attrs.get("_index")
    if index is None or index not in group:
        return None
    names = h5ad_column(group[index])
    if names is None:
        return None
    stored = {"names": names}
    present = tuple(name for name in group.keys() if name != index)
    wanted = {"feature_types"}
    if id_share(_strings(names[:: max(1, -(-len(names) // CHECKED_NAMES))].tolist())) > 0.5:
        wanted |= {c.lower() for c in columns}
    for name in present:
        if name.lower() in wanted:
            values = h5ad_column(group[name])
            if values is not None:
                stored[name] = values
    return _table(stored, present)

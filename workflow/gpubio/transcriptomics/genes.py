"""Gene names of a count matrix, and the genes samples share.

Mitochondrial genes (``qc.mito_prefix``), markers, CellTypist models and scANVI references
are all matched by gene symbol. A matrix named by Ensembl ids would give 0 % mitochondrial
counts without a word and share no gene with a reference, so ids are replaced by the symbols
of a var column (the usual names, or ``transcriptomics.gene_symbol_column``). Repeated names
are made unique (``NAME-1``) and counted. Samples are analysed on the genes every one of them
measured: a gene another sample lacks would read as 0 there and split the clusters by sample.

Pure functions on names: the start-up pass (file headers) and the jobs (whole files) call
the same ones, so both come to the same names.
"""

from __future__ import annotations

import re
from collections import Counter
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
    values are mostly filled and not ids; None when there is none."""
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


def resolve_gene_names(var_names, var, configured: str = "") -> GeneNames:
    """Gene symbols for a matrix's genes (var_names and the var table, as its reader gives them).

    var_names that are Ensembl ids are replaced by the symbols of a var column (``configured``,
    else the first usual one); a gene whose symbol is empty keeps its id. GeneNameProblem when
    ids cannot be replaced, or when the names are not one per gene (a wrong column).
    """
    var_names = [str(n) for n in var_names]
    columns = ", ".join(map(str, var.columns)) or "none"
    are_ids = id_share(var_names) > 0.5
    column = symbol_column(var, configured) if configured or are_ids else None
    if column is None and are_ids and configured:
        raise GeneNameProblem(
            f"gene names are Ensembl ids (e.g. {var_names[0]}) and var has no column '{configured}' "
            f"(transcriptomics.gene_symbol_column; var has: {columns}); name the column with the gene symbols"
        )
    if column is None and are_ids:
        raise GeneNameProblem(
            f"gene names are Ensembl ids (e.g. {var_names[0]}) and var has no gene-symbol column "
            f"(looked for {', '.join(SYMBOL_COLUMNS)}; var has: {columns}); set "
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


def sizes_text(genes: dict[str, set]) -> str:
    shown = sorted(genes.items(), key=lambda item: len(item[1]))
    text = ", ".join(f"{sample}: {len(names):,}" for sample, names in shown[:5])
    return text + (f" and {len(shown) - 5} more samples" if len(shown) > 5 else "")


@dataclass(frozen=True)
class Overlap:
    shared: set[str]
    warning: str | None  # some genes are not in every sample: they are left out
    problem: str | None  # the samples share too few genes to be analysed together


def sample_overlap(genes: dict[str, set[str]]) -> Overlap:
    """The genes every sample measured, and what to say when that is not all of them."""
    if not genes:
        return Overlap(set(), None, None)
    shared = set.intersection(*genes.values())
    everywhere = len(shared)
    union = len(set.union(*genes.values()))
    smallest = min(len(names) for names in genes.values())
    if everywhere < MIN_SHARED_SHARE * smallest:
        seen = Counter(name for names in genes.values() for name in names)
        odd = [
            sample
            for sample, names in genes.items()
            if sum(seen[name] > 1 for name in names) < MIN_SHARED_SHARE * len(names)
        ]
        odd_text = f"{', '.join(odd)} share few gene names with the other samples; " if len(odd) < len(genes) else ""
        return Overlap(
            shared,
            None,
            f"samples share only {everywhere:,} genes (genes per sample: {sizes_text(genes)}); {odd_text}"
            "another species, gene annotation or kind of identifier? Give count matrices with the same gene "
            "names (transcriptomics.gene_symbol_column names a var column of symbols), or analyse them apart",
        )
    if everywhere < union:
        return Overlap(
            shared,
            f"samples measured different genes: {everywhere:,} of {union:,} are in every sample (genes per "
            f"sample: {sizes_text(genes)}); the analysis uses the {everywhere:,} shared genes, as a gene "
            "missing from a sample would read as 0 there and split the clusters by sample",
            None,
        )
    return Overlap(shared, None, None)


def gene_expression_only(var) -> list[bool] | None:
    """Which genes to keep of a 10x matrix with other features (antibodies, guides) in var
    ``feature_types``; None when there are none to drop."""
    if "feature_types" not in var.columns:
        return None
    keep = [str(t) == GENE_EXPRESSION for t in var["feature_types"]]
    return keep if any(keep) and not all(keep) else None

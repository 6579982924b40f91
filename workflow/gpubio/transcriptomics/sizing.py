"""How much memory the integration of all samples needs, from the size of its inputs.

The inputs are the per-sample ``filtered.h5ad`` files: sparse counts stored twice (``X``
and ``layers['counts']``), float32 values + int32 indices, so about 16 bytes per
non-zero entry; their total size grows with cells x detected genes. The rules take that
size from the sample sheet's count files when the workflow starts (their non-zero
entries are in the file headers), so the dry-run and ``gpubio plan`` already show the GPU
the job will get. On the GPU
rapids-singlecell holds both copies, the normalized values are computed in place, and
PCA, the neighbour graph and UMAP add little next to them: VRAM ~ 1.25 x the input
size, plus a fixed 2 GB for the CUDA context and libraries. A demo-sized input fits a
16 GB T4; a million cells with ~2,000 genes each (~32 GB of input) need an 80 GB card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

BYTES_PER_NONZERO = 16  # two float32 + int32 copies of each count in filtered.h5ad
GPU_OVERHEAD_GB = 2.0
GPU_BYTES_PER_INPUT_BYTE = 1.25
HOST_BYTES_PER_INPUT_BYTE = 3.0  # CPU path: inputs, their concatenation, normalized copy, graph
MIN_HOST_MEM_MB = 4000


def input_size_mb(n_cells: int, genes_per_cell: float) -> float:
    """Expected total size (MB) of the filtered inputs for n_cells with genes_per_cell detected genes."""
    return n_cells * genes_per_cell * BYTES_PER_NONZERO / 1e6


def atlas_vram_gb(size_mb: float) -> float:
    """GPU memory (GB) the integration step needs for inputs of size_mb MB."""
    return GPU_OVERHEAD_GB + GPU_BYTES_PER_INPUT_BYTE * size_mb / 1000


def atlas_mem_mb(size_mb: float) -> int:
    """Host memory (MB) for the integration step (also its CPU path)."""
    return int(max(MIN_HOST_MEM_MB, HOST_BYTES_PER_INPUT_BYTE * size_mb + 2000))


# Embeddings: inference without gradients keeps one layer's activations at a time. Per
# batch that is the attention scores and their softmax (batch x heads x length^2) and
# about eight hidden-size tensors per token (input, projections, feed-forward, norms), all
# float32. scGPT's release (512 wide, 8 heads) with 16 cells x 2,048 tokens: ~4.8 GB.
EMBED_HIDDEN_COPIES = 8
EMBED_DEFAULT_SHAPE = (512, 8)  # width, heads when the model directory cannot be read yet


def embedding_model_shape(weights: str, family: str) -> tuple[int, int]:
    """(width, heads) of the model in a weights directory, from its small config file."""
    import json
    from pathlib import Path

    if family == "scgpt":
        from gpubio.transcriptomics.scgpt import model_shape

        return model_shape(weights) or EMBED_DEFAULT_SHAPE
    try:
        config = json.loads((Path(weights) / "config.json").read_text())
        return int(config["hidden_size"]), int(config["num_attention_heads"])
    except (OSError, ValueError, KeyError):
        return EMBED_DEFAULT_SHAPE


def embedding_vram_gb(settings: dict) -> float:
    """GPU memory (GB) of the embedding step: the model (``vram_gb``) plus one batch's
    activations, which grow with batch_size x max_length (and max_length again in attention)."""
    width, heads = embedding_model_shape(settings.get("weights", ""), settings.get("family", "geneformer"))
    batch, length = settings.get("batch_size", 16), settings.get("max_length", 2048)
    activations = 4 * batch * length * (2 * heads * length + EMBED_HIDDEN_COPIES * width)
    return round(settings.get("vram_gb", 4) + activations / 1e9, 1)


# stored values read per matrix at start-up (the first cells' worth): a processed matrix
# shows in the first few, and reading more costs every start of a large project (each
# 10x chunk read is decompressed). Cell QC then checks up to io.CHECKED_VALUES spread over
# the whole matrix.
STARTUP_VALUES = 10_000
UNREADABLE_FIX = (
    "the file is damaged, incomplete or not a count matrix: copy it again, or point the row at a readable one"
)


def first_values(node):
    """The first stored values of an HDF5 matrix: a sparse group's data, or a dense dataset's first rows."""
    import h5py

    if isinstance(node, h5py.Group):
        return node["data"][:STARTUP_VALUES]
    rows = max(1, STARTUP_VALUES // max(1, node.shape[-1])) if node.ndim == 2 else STARTUP_VALUES
    return node[:rows]


class CountHeader(NamedTuple):
    nonzeros: int
    problem: str | None  # why it holds no raw counts, or None
    genes: object = None  # genes.GeneTable: its genes as stored, or None when not read


def count_file_header(path: str, symbol_columns: tuple[str, ...] = ()) -> CountHeader:
    """Non-zero entries of a count matrix, why it holds no raw counts (or None), and its genes, read
    from its header and first values: 10x .h5, 10x MTX directory, .h5ad (of its var columns, those
    named in ``symbol_columns``, gene_ids and feature_types). OSError & co. for a damaged file,
    io.IncompleteMtx for an MTX directory without one of its files."""
    import gzip
    from pathlib import Path

    from gpubio.transcriptomics.genes import h5ad_genes, mtx_genes, tenx_h5_genes
    from gpubio.transcriptomics.io import counts_problem, mtx_files

    p = Path(path)
    if p.is_dir():
        files = mtx_files(p)
        opener = gzip.open if files["matrix"].suffix == ".gz" else open
        with opener(files["matrix"], "rt") as fh:
            for line in fh:
                if not line.startswith("%"):
                    return CountHeader(int(line.split()[2]), None, mtx_genes(files["features"]))
        raise ValueError("matrix.mtx holds no size line")
    import h5py

    with h5py.File(p, "r") as f:
        if p.suffix == ".h5ad":
            X = f["X"]
            nonzeros = int(X["data"].shape[0]) if isinstance(X, h5py.Group) else int(X.shape[0] * X.shape[1])
            columns = (*symbol_columns, "gene_ids", "feature_types")
            if counts_problem(first_values(X)) is None:
                return CountHeader(nonzeros, None, h5ad_genes(f["var"], columns))
            # processed X with raw counts beside it is fine: cell QC takes those (and their genes)
            for key, var in (("layers/counts", "var"), ("raw/X", "raw/var")):
                if key in f and var in f and counts_problem(first_values(f[key])) is None:
                    return CountHeader(nonzeros, None, h5ad_genes(f[var], columns))
            problem = counts_problem(first_values(X))
            return CountHeader(
                nonzeros, f"X holds {problem}, not counts, and no raw counts in layers['counts'] or .raw"
            )
        if not f.keys():
            raise ValueError("no count matrix in it")
        group = f["matrix"] if "matrix" in f else f[next(iter(f.keys()))]  # Cell Ranger v3, else v2 (per genome)
        data = group["data"]
        problem = counts_problem(data[:STARTUP_VALUES])
        return CountHeader(int(data.shape[0]), problem and f"holds {problem}, not counts", tenx_h5_genes(group))


def counts_nonzeros(path: str) -> int:
    """Non-zero entries of a count matrix, read from its header: 10x .h5, 10x MTX directory, .h5ad."""
    return count_file_header(path).nonzeros


@dataclass
class CountSurvey:
    """What the start-up pass learns from the sheet's count files."""

    size_mb: float = 0.0  # of the filtered inputs the integration step will read
    problems: list[str] = field(default_factory=list)  # one line each: the run stops
    warnings: list[str] = field(default_factory=list)  # one line each: the run goes on
    genes: dict[str, frozenset] = field(default_factory=dict, repr=False)  # sample -> its genes (symbols)


def survey_count_files(
    counts: dict[str, str], sheet_file: str, gene_symbol_column: str = "", mito_prefix: str = ""
) -> CountSurvey:
    """Size (MB) of the filtered inputs the integration step will read; one problem line per count
    file that cannot be read, holds no raw counts or whose genes cannot be named by symbol, and
    for samples that share too few genes; a warning when some samples lack genes others have, or
    when no gene starts with ``mito_prefix`` but some do in another case (sample -> path; when
    the workflow starts). Files with one gene list (one reference) are
    named once: a project of many samples pays for its distinct gene lists only."""
    from gpubio.transcriptomics.genes import (
        SYMBOL_COLUMNS,
        GeneNameProblem,
        mito_prefix_note,
        sample_overlap,
        symbol_set,
    )
    from gpubio.transcriptomics.io import GIVE_COUNTS, IncompleteMtx

    survey, nonzeros, named = CountSurvey(), 0, {}
    columns = (gene_symbol_column, *SYMBOL_COLUMNS) if gene_symbol_column else SYMBOL_COLUMNS
    for sample, path in counts.items():
        where = f"{sheet_file}: sample {sample}: counts '{path}'"
        try:
            header = count_file_header(path, columns)
        except IncompleteMtx as error:
            survey.problems.append(f"{where} is a {error}")
            continue
        except (OSError, EOFError, KeyError, ValueError, IndexError) as error:
            reason = " ".join(str(error).split()).strip("\"'") or type(error).__name__
            survey.problems.append(f"{where} cannot be read ({reason}); {UNREADABLE_FIX}")
            continue
        if header.problem:
            survey.problems.append(f"{where}: {header.problem}; {GIVE_COUNTS}")
            continue
        nonzeros += header.nonzeros
        if header.genes is None:
            continue
        if header.genes.key not in named:
            try:
                named[header.genes.key] = symbol_set(header.genes.read(), gene_symbol_column, header.genes.columns)
            except GeneNameProblem as error:
                named[header.genes.key] = error
        if isinstance(named[header.genes.key], GeneNameProblem):
            survey.problems.append(f"{where}: {named[header.genes.key]}")
        else:
            survey.genes[sample] = named[header.genes.key]
    overlap = sample_overlap(survey.genes)
    if overlap.problem:
        survey.problems.append(f"{sheet_file}: {overlap.problem}")
    if overlap.warning:
        survey.warnings.append(f"{sheet_file}: {overlap.warning}")
    mito = mito_prefix_note(survey.genes, mito_prefix)
    if mito:
        survey.warnings.append(f"{sheet_file}: {mito}")
    survey.size_mb = nonzeros * BYTES_PER_NONZERO / 1e6
    return survey


def expected_input_mb(count_files: list[str]) -> float:
    """Size (MB) of the filtered inputs the integration step will read, from the raw count files."""
    return sum(counts_nonzeros(path) for path in count_files) * BYTES_PER_NONZERO / 1e6

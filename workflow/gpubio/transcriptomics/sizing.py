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


def count_file_header(path: str) -> tuple[int, str | None]:
    """(non-zero entries, why it holds no raw counts or None) of a count matrix, read from its
    header and first values: 10x .h5, 10x MTX directory, .h5ad. OSError & co. for a damaged file."""
    import gzip
    from pathlib import Path

    from gpubio.transcriptomics.io import counts_problem

    p = Path(path)
    if p.is_dir():
        for name in ("matrix.mtx.gz", "matrix.mtx"):
            if (p / name).is_file():
                opener = gzip.open if name.endswith(".gz") else open
                with opener(p / name, "rt") as fh:
                    for line in fh:
                        if not line.startswith("%"):
                            return int(line.split()[2]), None
        raise ValueError("no matrix.mtx(.gz) in this 10x directory")
    import h5py

    with h5py.File(p, "r") as f:
        if p.suffix == ".h5ad":
            X = f["X"]
            nonzeros = int(X["data"].shape[0]) if isinstance(X, h5py.Group) else int(X.shape[0] * X.shape[1])
            problem = counts_problem(first_values(X))
            # processed X with raw counts beside it is fine: cell QC takes those
            raw_counts = (k for k in ("layers/counts", "raw/X") if k in f)
            if problem and not any(counts_problem(first_values(f[k])) is None for k in raw_counts):
                return nonzeros, f"X holds {problem}, not counts, and no raw counts in layers['counts'] or .raw"
            return nonzeros, None
        if not f.keys():
            raise ValueError("no count matrix in it")
        group = f["matrix"] if "matrix" in f else f[next(iter(f.keys()))]  # Cell Ranger v3, else v2 (per genome)
        data = group["data"]
        problem = counts_problem(data[:STARTUP_VALUES])
        return int(data.shape[0]), problem and f"holds {problem}, not counts"


def counts_nonzeros(path: str) -> int:
    """Non-zero entries of a count matrix, read from its header: 10x .h5, 10x MTX directory, .h5ad."""
    return count_file_header(path)[0]


def survey_count_files(counts: dict[str, str], sheet_file: str) -> tuple[float, list[str]]:
    """Size (MB) of the filtered inputs the integration step will read, and one line per count
    file that cannot be read or holds no raw counts (sample -> path; when the workflow starts)."""
    from gpubio.transcriptomics.io import GIVE_COUNTS

    nonzeros, problems = 0, []
    for sample, path in counts.items():
        where = f"{sheet_file}: sample {sample}: counts '{path}'"
        try:
            n, problem = count_file_header(path)
        except (OSError, EOFError, KeyError, ValueError, IndexError) as error:
            reason = " ".join(str(error).split()).strip("\"'") or type(error).__name__
            problems.append(f"{where} cannot be read ({reason}); {UNREADABLE_FIX}")
            continue
        if problem:
            problems.append(f"{where}: {problem}; {GIVE_COUNTS}")
        else:
            nonzeros += n
    return nonzeros * BYTES_PER_NONZERO / 1e6, problems


def expected_input_mb(count_files: list[str]) -> float:
    """Size (MB) of the filtered inputs the integration step will read, from the raw count files."""
    return sum(counts_nonzeros(path) for path in count_files) * BYTES_PER_NONZERO / 1e6

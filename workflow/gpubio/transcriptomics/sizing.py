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


def counts_nonzeros(path: str) -> int:
    """Non-zero entries of a count matrix, read from its header: 10x .h5, 10x MTX directory, .h5ad."""
    import gzip
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        for name in ("matrix.mtx.gz", "matrix.mtx"):
            if (p / name).is_file():
                opener = gzip.open if name.endswith(".gz") else open
                with opener(p / name, "rt") as fh:
                    for line in fh:
                        if not line.startswith("%"):
                            return int(line.split()[2])
        raise ValueError(f"{path}: no matrix.mtx(.gz) in this 10x directory")
    import h5py

    with h5py.File(p, "r") as f:
        if p.suffix == ".h5ad":
            X = f["X"]
            return int(X["data"].shape[0]) if isinstance(X, h5py.Group) else int(X.shape[0] * X.shape[1])
        group = f["matrix"] if "matrix" in f else f[next(iter(f.keys()))]  # Cell Ranger v3, else v2 (per genome)
        return int(group["data"].shape[0])


def expected_input_mb(count_files: list[str]) -> float:
    """Size (MB) of the filtered inputs the integration step will read, from the raw count files."""
    return sum(counts_nonzeros(path) for path in count_files) * BYTES_PER_NONZERO / 1e6

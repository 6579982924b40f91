"""One analysis code path, two backends: rapids-singlecell on a GPU, scanpy on the CPU.

Both expose scanpy's names (``backend.pp.normalize_total``, ``backend.tl.leiden``, ...),
so the pipeline is written once. The choice is made on the node that runs the job, when
the job starts, and logged; rapids-singlecell (and cupy) are imported only there, and only
when a GPU was given to the job.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

log = logging.getLogger("gpubio")

BACKENDS = ("auto", "scanpy", "rapids_singlecell")


class BackendError(RuntimeError):
    """The backend asked for in config cannot run here."""


class Namespace:
    """A module (``scanpy.pp``) with some functions replaced; attribute access falls through."""

    def __init__(self, base: ModuleType, **overrides: Callable[..., Any]):
        self._base = base
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._base, name)


@dataclass
class Backend:
    """What the pipeline calls: scanpy-named ``pp``/``tl``, and the device edges."""

    name: str  # "scanpy" | "rapids_singlecell"
    device: str  # "cpu" | "cuda"
    pp: Any
    tl: Any
    reason: str
    to_device: Callable[[Any], None] = field(default=lambda adata: None)
    to_host: Callable[[Any], None] = field(default=lambda adata: None)

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.reason})"


def harmony_integrate(
    adata,
    key: str,
    *,
    basis: str = "X_pca",
    adjusted_basis: str = "X_pca_harmony",
    max_iter_harmony: int = 10,
    theta: float = 2.0,
    random_state: int = 0,
    ncores: int = 1,
) -> None:
    """Harmony on the CPU through harmonypy itself (scanpy's wrapper transposes twice with harmonypy 2.x)."""
    import harmonypy
    import numpy as np

    result = harmonypy.run_harmony(
        adata.obsm[basis],
        adata.obs,
        key,
        theta=theta,
        max_iter_harmony=max_iter_harmony,
        random_state=random_state,
        ncores=ncores,
        verbose=False,
    )
    corrected = np.asarray(result.Z_corr, dtype=np.float32)
    if corrected.shape[0] != adata.n_obs:  # harmonypy 0.x returns PCs x cells
        corrected = corrected.T
    adata.obsm[adjusted_basis] = corrected


def scanpy_backend(reason: str, threads: int = 1) -> Backend:
    import scanpy as sc

    sc.settings.n_jobs = threads

    def leiden(adata, **kwargs):
        # igraph's implementation: what scanpy will default to, and much faster than leidenalg
        kwargs = {"flavor": "igraph", "n_iterations": 2, "directed": False} | kwargs
        sc.tl.leiden(adata, **kwargs)

    def harmony(adata, key, **kwargs):
        harmony_integrate(adata, key, ncores=threads, **kwargs)

    return Backend(
        name="scanpy",
        device="cpu",
        pp=Namespace(sc.pp, harmony_integrate=harmony),
        tl=Namespace(sc.tl, leiden=leiden),
        reason=reason,
    )


def rapids_backend(reason: str) -> Backend:
    import rapids_singlecell as rsc

    tl_overrides = {}
    if not hasattr(rsc.tl, "rank_genes_groups"):  # older releases: markers on the host with scanpy
        import scanpy as sc

        def rank_genes_groups(adata, *args, **kwargs):
            rsc.get.anndata_to_CPU(adata, convert_all=True)
            sc.tl.rank_genes_groups(adata, *args, **kwargs)

        tl_overrides["rank_genes_groups"] = rank_genes_groups

    return Backend(
        name="rapids_singlecell",
        device="cuda",
        pp=rsc.pp,
        tl=Namespace(rsc.tl, **tl_overrides),
        reason=reason,
        to_device=lambda adata: rsc.get.anndata_to_GPU(adata, convert_all=True),
        to_host=lambda adata: rsc.get.anndata_to_CPU(adata, convert_all=True),
    )


def rapids_unavailable() -> str | None:
    """Why rapids-singlecell cannot run here, or None when it can."""
    if importlib.util.find_spec("rapids_singlecell") is None:
        return "rapids_singlecell is not installed"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "cupy sees no CUDA device"
        importlib.import_module("rapids_singlecell")
    except Exception as error:  # ImportError, CUDARuntimeError, missing cuml, ...
        return f"rapids_singlecell cannot be imported ({type(error).__name__}: {error})"
    return None


def select_backend(requested: str = "auto", gpus: list | None = None, threads: int = 1) -> Backend:
    """Pick the backend on this node and log the choice.

    ``gpus``: the devices this job was given; None reads them from the running job
    (:func:`gpubio.gpu.job.current_job`). "auto" takes rapids-singlecell when the job has a GPU and the
    library imports, else scanpy. "rapids_singlecell" fails when that is impossible.
    """
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if gpus is None:
        from gpubio.gpu.job import current_job

        gpus = current_job().devices
    if requested == "scanpy":
        backend = scanpy_backend("transcriptomics.backend is scanpy", threads)
    else:
        why_not = "this job was given no GPU" if not gpus else rapids_unavailable()
        if why_not is None:
            backend = rapids_backend(f"GPU {','.join(map(str, gpus))}")
        elif requested == "rapids_singlecell":
            raise BackendError(
                f"transcriptomics.backend is rapids_singlecell but {why_not}; install the RAPIDS "
                "environment (envs/transcriptomics-rapids.yaml) on a GPU node, or set backend: auto"
            )
        else:
            backend = scanpy_backend(f"falling back to the CPU: {why_not}", threads)
    log.info("transcriptomics backend: %s", backend.describe())
    return backend

"""The transcriptomics CPU path against a bare scanpy script doing the same steps.

Synthetic data (two 10x .h5 samples, 4 cell types, 3,000 genes, a batch effect on the second) at each
size. The workflow path is what Snakemake runs: `gpubio cell-qc` per sample, then
`gpubio integrate-cells` (backend scanpy, as on a node without GPU). The bare path is one
scanpy script: read, QC filter, concatenate, HVG (seurat_v3), normalize, log1p, scale, PCA,
Harmony (harmonypy), neighbors, UMAP, Leiden, Wilcoxon markers, write the result. Both
run in this one run, one after the other, each step a fresh process with the same
threads; time is wall time, memory the peak resident set of the largest process. Both
results must agree (ARI of the Leiden clusters) for the comparison to count.

    python bench/transcriptomics.py [--cells 20000 100000] [--threads 2] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

N_TYPES, N_GENES, MARKERS = 4, 3000, 25  # the generator names 4 types
QC = {"min_genes": 200, "min_counts": 500, "max_mito_pct": 20, "min_cells": 3}
PARAMS = {"n_top_genes": 2000, "n_pcs": 30, "scale_max_value": 10, "n_neighbors": 15, "resolution": 0.5, "seed": 0}


def make_data(outdir: Path, n_cells: int, seed: int = 0) -> list[Path]:
    """Two 10x .h5 samples of n_cells / 2 cells each."""
    import numpy as np

    from gpubio.demo.transcriptomics import MITO_GENES, simulate_cells, write_10x_h5

    rng = np.random.default_rng(seed)
    n_nuclear = N_GENES - len(MITO_GENES)
    base = rng.gamma(0.6, 1.0, size=n_nuclear)
    profiles = np.tile(base, (N_TYPES, 1))
    for k in range(N_TYPES):
        profiles[k, k * MARKERS : (k + 1) * MARKERS] = base[k * MARKERS : (k + 1) * MARKERS] * 12 + 2.0
    profiles /= profiles.sum(axis=1, keepdims=True)
    genes = [f"GENE{i:05d}" for i in range(n_nuclear)] + MITO_GENES
    paths = []
    outdir.mkdir(parents=True, exist_ok=True)
    for k, scale in enumerate([None, rng.lognormal(0.0, 0.35, size=n_nuclear)]):
        counts, obs = simulate_cells(rng, profiles, n_cells // 2, scale)
        paths.append(outdir / f"s{k + 1}.h5")
        write_10x_h5(paths[-1], counts, list(obs.index), genes)
    return paths


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one process."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed; see {log}")
    return seconds, usage.ru_maxrss / 1024


def workflow_path(
    inputs: list[Path], work: Path, threads: int, backend: str = "scanpy", gpus: int = 0
) -> tuple[float, float, Path]:
    gpubio = [sys.executable, "-m", "gpubio", "--threads", str(threads)]
    total, peak, filtered = 0.0, 0.0, []
    for k, path in enumerate(inputs):
        sample = f"s{k + 1}"
        out = work / sample
        cmd = gpubio + [
            "cell-qc",
            "--counts",
            str(path),
            "--sample",
            sample,
            "--batch",
            f"batch{k + 1}",
            "--out-json",
            str(out / "qc.json"),
            "--out-h5ad",
            str(out / "filtered.h5ad"),
        ]
        cmd += [f"--{key.replace('_', '-')}={value}" for key, value in QC.items()]
        seconds, rss = run(cmd, work / f"cell_qc_{sample}.log")
        total, peak = total + seconds, max(peak, rss)
        filtered.append(str(out / "filtered.h5ad"))
    result = work / "integrated.h5ad"
    cmd = gpubio + [
        "--gpus",
        str(gpus),
        "integrate-cells",
        *filtered,
        "--backend",
        backend,
        "--out-h5ad",
        str(result),
        "--out-markers",
        str(work / "markers.tsv"),
        "--n-top-genes",
        str(PARAMS["n_top_genes"]),
        "--n-pcs",
        str(PARAMS["n_pcs"]),
        "--scale",
        "--scale-max-value",
        str(PARAMS["scale_max_value"]),
        "--n-neighbors",
        str(PARAMS["n_neighbors"]),
        "--leiden-resolution",
        str(PARAMS["resolution"]),
        "--seed",
        str(PARAMS["seed"]),
    ]
    seconds, rss = run(cmd, work / "integrate.log")
    return total + seconds, max(peak, rss), result


def bare_scanpy(inputs: list[str], out: str, threads: int) -> None:
    """What a scanpy user writes for the same analysis, in one script."""
    import anndata as ad
    import harmonypy
    import numpy as np
    import scanpy as sc

    sc.settings.n_jobs = threads
    parts = []
    for k, path in enumerate(inputs):
        adata = sc.read_10x_h5(path)
        adata.var_names_make_unique()
        adata.var["mt"] = adata.var_names.str.startswith("MT-")
        sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], inplace=True, percent_top=None, log1p=False)
        keep = (
            (adata.obs["total_counts"] >= QC["min_counts"])
            & (adata.obs["n_genes_by_counts"] >= QC["min_genes"])
            & (adata.obs["pct_counts_mt"] <= QC["max_mito_pct"])
        )
        adata = adata[keep.to_numpy()].copy()
        sc.pp.filter_genes(adata, min_cells=QC["min_cells"])
        adata.obs["batch"] = f"batch{k + 1}"
        adata.obs_names = [f"s{k + 1}:{b}" for b in adata.obs_names]
        parts.append(adata)
    adata = ad.concat(parts, join="outer", fill_value=0)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=PARAMS["n_top_genes"], layer="counts", batch_key="batch"
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    # the standard recipe: highly variable genes scaled to unit variance, clipped at 10, then PCA
    hvg = adata[:, adata.var["highly_variable"]].copy()
    sc.pp.scale(hvg, max_value=PARAMS["scale_max_value"])
    sc.pp.pca(hvg, n_comps=PARAMS["n_pcs"], random_state=PARAMS["seed"])
    adata.obsm["X_pca"] = hvg.obsm["X_pca"]
    del hvg
    harmony = harmonypy.run_harmony(
        adata.obsm["X_pca"], adata.obs, "batch", random_state=PARAMS["seed"], ncores=threads, verbose=False
    )
    adata.obsm["X_pca_harmony"] = np.asarray(harmony.Z_corr, dtype=np.float32)
    sc.pp.neighbors(adata, n_neighbors=PARAMS["n_neighbors"], use_rep="X_pca_harmony", random_state=PARAMS["seed"])
    sc.tl.umap(adata, random_state=PARAMS["seed"])
    sc.tl.leiden(
        adata,
        resolution=PARAMS["resolution"],
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=PARAMS["seed"],
    )
    sc.tl.rank_genes_groups(adata, "leiden", method="wilcoxon")
    sc.get.rank_genes_groups_df(adata, None).groupby("group", observed=True).head(25).to_csv(
        out + ".markers.tsv", sep="\t"
    )
    adata.write_h5ad(out)


def bare_path(inputs: list[Path], work: Path, threads: int, **_) -> tuple[float, float, Path]:
    result = work / "bare.h5ad"
    cmd = [sys.executable, __file__, "--bare", str(result), "--threads", str(threads), *map(str, inputs)]
    seconds, rss = run(cmd, work / "bare.log")
    return seconds, rss, result


def agreement(a: Path, b: Path) -> float:
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    x, y = ad.read_h5ad(a, backed="r").obs["leiden"], ad.read_h5ad(b, backed="r").obs["leiden"]
    return adjusted_rand_score(x.loc[y.index], y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path per size; the fastest counts")
    parser.add_argument(
        "--backend",
        default="scanpy",
        choices=["scanpy", "auto", "rapids_singlecell"],
        help="the workflow's integration backend (rapids_singlecell: on a GPU node, with --gpus 1)",
    )
    parser.add_argument("--gpus", type=int, default=0, help="GPUs for the workflow's integration step")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "transcriptomics.md"))
    parser.add_argument("--workdir", help="keep data and logs here (default: a temporary directory)")
    parser.add_argument("--bare", help=argparse.SUPPRESS)  # internal: run the bare script, write here
    parser.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # the same limit `gpubio --threads` sets
    if args.bare:
        bare_scanpy(args.inputs, args.bare, args.threads)
        return

    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        for n in args.cells:
            work = root / f"{n}"
            inputs = make_data(work / "data", n)
            (work / "workflow").mkdir(parents=True, exist_ok=True)
            (work / "bare").mkdir(parents=True, exist_ok=True)
            best = {"workflow": (float("inf"), 0.0), "bare": (float("inf"), 0.0)}
            for _ in range(args.repeats):  # alternating; the fastest run of each counts
                for name, path in (("workflow", workflow_path), ("bare", bare_path)):
                    seconds, rss, result = path(inputs, work / name, args.threads, backend=args.backend, gpus=args.gpus)
                    results[name] = result
                    best[name] = min(best[name], (seconds, rss))
            (wf_time, wf_mem), (bare_time, bare_mem) = best["workflow"], best["bare"]
            ari = agreement(results["workflow"], results["bare"])
            rows.append((n, wf_time, bare_time, wf_mem, bare_mem, ari))
            print(
                f"{n} cells: workflow {wf_time:.1f} s / {wf_mem:.0f} MB, bare {bare_time:.1f} s / {bare_mem:.0f} MB,"
                f" ARI {ari:.3f}",
                flush=True,
            )
    write_report(rows, args)


def write_report(rows, args) -> None:
    from importlib.metadata import version

    lines = [
        "# Transcriptomics: workflow CPU path vs bare scanpy",
        "",
        f"Command: `.venv/bin/python bench/transcriptomics.py --cells {' '.join(map(str, args.cells))} "
        f"--threads {args.threads} --repeats {args.repeats} --backend {args.backend} --gpus {args.gpus}` "
        f"({os.cpu_count()}-core machine, "
        f"Python {platform.python_version()}, scanpy {version('scanpy')}; fastest of {args.repeats} alternating runs)",
        "",
        f"Synthetic data: two 10x .h5 samples, {N_TYPES} cell types, {N_GENES} genes, batch effect on the second. "
        f"Workflow = `gpubio cell-qc` per sample + `gpubio integrate-cells --backend {args.backend}` (three processes, "
        "times summed, memory = the largest); bare = one scanpy script doing the same steps. "
        "ARI = agreement of the two Leiden clusterings.",
        "",
        "| cells | workflow | bare scanpy | time ratio | workflow peak RSS | bare peak RSS | memory ratio | ARI |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for n, wf_time, bare_time, wf_mem, bare_mem, ari in rows:
        lines.append(
            f"| {n:,} | {wf_time:.1f} s | {bare_time:.1f} s | **{wf_time / bare_time:.2f}x** | {wf_mem:,.0f} MB "
            f"| {bare_mem:,.0f} MB | **{wf_mem / bare_mem:.2f}x** | {ari:.3f} |"
        )
    lines += ["", "Targets: time ratio <= 1.25x, memory ratio <= 1.3x.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

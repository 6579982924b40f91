"""Transcriptomics on inputs shaped unlike the demo: matrices that are not counts, samples that
QC empties, damaged files at start-up, clustering of two close cell types, seeds out of range.
The data come from tests/independent/transcriptomics.py (cell types known by construction)."""

from __future__ import annotations

import gzip
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import yaml

from conftest import REPO, run_snakemake
from independent.transcriptomics import (
    CLOSE_PAIR,
    log_normalised,
    simulate,
    to_anndata,
    write_10x_h5,
    write_mtx,
    write_processed_h5ad,
)

QC = {"min_genes": 200, "min_counts": 500, "max_mito_pct": 20.0, "min_cells": 3, "mito_prefix": "MT-"}


@pytest.fixture(scope="module")
def cells():
    return simulate(seed=11, n_cells=700, n_genes=900)


def run_qc(counts: Path, sample: str, out: Path, **qc):
    from gpubio.transcriptomics.qc import sample_qc

    return sample_qc(str(counts), sample, "b1", str(out / f"{sample}.json"), str(out / f"{sample}.h5ad"), **(QC | qc))


# --------------------------------------------------------------------------- item 6: counts that are not counts


@pytest.mark.parametrize("where", ["layers", "raw"])
def test_processed_h5ad_with_raw_counts_beside_it_is_analysed_on_those_counts(cells, tmp_path, caplog, where):
    import anndata as ad

    caplog.set_level(logging.INFO, logger="gpubio")
    path = write_processed_h5ad(tmp_path / "processed.h5ad", cells, keep_counts=where)
    summary = run_qc(path, "proc", tmp_path)
    kept = ad.read_h5ad(tmp_path / "proc.h5ad")
    # QC measured the true counts, not log values
    assert summary["total_counts"] == int(cells.counts.sum())
    rows = [cells.barcodes.index(name.split(":", 1)[1]) for name in kept.obs_names]
    truth = cells.counts[rows][:, [cells.genes.index(g) for g in kept.var_names]]
    assert (sp.csr_matrix(kept.layers["counts"]) != truth).nnz == 0
    np.testing.assert_array_equal(kept.obs["total_counts"], np.asarray(cells.counts[rows].sum(axis=1)).ravel())
    source = "layers['counts']" if where == "layers" else ".raw"
    assert "processed.h5ad: sample proc: X holds non-integer values" in caplog.text
    assert f"using the raw counts in {source}" in caplog.text


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda c: log_normalised(c.counts), "X holds non-integer values"),
        (
            lambda c: sp.csr_matrix(np.where(c.counts.toarray() > 0, c.counts.toarray() - 1.5, -0.4)),
            "X holds negative values (e.g. -",
        ),
    ],
    ids=["log-normalised", "scaled"],
)
def test_matrix_that_is_not_counts_is_refused_naming_the_sample_and_the_fix(cells, tmp_path, make, expected):
    from gpubio.cli import main

    adata = to_anndata(cells)
    adata.X = make(cells)
    adata.write_h5ad(tmp_path / "analysed.h5ad")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "cell-qc",
                "--counts",
                str(tmp_path / "analysed.h5ad"),
                "--sample",
                "proc",
                "--batch",
                "b1",
                "--out-json",
                str(tmp_path / "qc.json"),
                "--out-h5ad",
                str(tmp_path / "f.h5ad"),
            ]
        )
    message = str(exit_info.value.code)
    assert message.startswith(f"gpubio: cell-qc: {tmp_path / 'analysed.h5ad'}: sample proc: {expected}")
    assert "no raw counts in layers['counts'] or .raw" in message
    assert "give the raw count matrix instead" in message and "\n" not in message
    assert not (tmp_path / "qc.json").exists() and not (tmp_path / "f.h5ad").exists()


def test_counts_layer_that_is_processed_too_is_refused(cells, tmp_path):
    from gpubio.transcriptomics.io import SampleError

    adata = to_anndata(cells)
    adata.X = log_normalised(cells.counts)
    adata.layers["counts"] = adata.X.copy()
    adata.write_h5ad(tmp_path / "twice.h5ad")
    with pytest.raises(SampleError, match=r"sample s: X holds non-integer .*\(layers\['counts'\] holds non-integer"):
        run_qc(tmp_path / "twice.h5ad", "s", tmp_path)


def test_the_check_reads_a_sample_spread_over_the_whole_matrix():
    from gpubio.transcriptomics.io import CHECKED_VALUES, counts_problem, evenly_spaced_values

    rng = np.random.default_rng(3)
    n_rows = 40_000
    counts = sp.random(n_rows, 500, density=0.15, format="csr", random_state=4, dtype=np.float32)
    counts.data = np.ceil(counts.data * 20)  # integers 1..20, 3 million values
    assert counts.nnz > 2 * CHECKED_VALUES
    assert counts_problem(evenly_spaced_values(counts)) is None
    checked = evenly_spaced_values(counts)
    assert checked.size <= CHECKED_VALUES
    # a matrix whose last quarter of cells was normalised: a check of the first values would pass it
    tail = counts.indptr[3 * n_rows // 4]
    mixed = counts.copy()
    mixed.data[tail:] = np.log1p(mixed.data[tail:] * rng.uniform(1.1, 3.0, mixed.data.size - tail))
    assert counts_problem(mixed.data[:CHECKED_VALUES]) is None
    assert "non-integer values (25% of those checked" in counts_problem(evenly_spaced_values(mixed))
    dense = counts.toarray()
    dense[-1, -1] = 0.5  # dense matrices are checked too (every value, when small enough)
    assert counts_problem(evenly_spaced_values(dense[-10:])) is not None


# --------------------------------------------------------------------------- item 7: QC removes every cell


def test_sample_that_qc_empties_fails_with_the_reason(tmp_path):
    from gpubio.cli import main

    shallow = simulate(seed=5, n_cells=300, n_genes=900, library=120)  # below min_counts 500 everywhere
    path = write_10x_h5(tmp_path / "shallow.h5", shallow)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "cell-qc",
                "--counts",
                str(path),
                "--sample",
                "shallow",
                "--batch",
                "b1",
                "--out-json",
                str(tmp_path / "qc.json"),
                "--out-h5ad",
                str(tmp_path / "f.h5ad"),
            ]
        )
    message = str(exit_info.value.code)
    assert message.startswith(f"gpubio: cell-qc: {path}: sample shallow: cell QC removed all 300 cells (")
    assert "300 with fewer than 500 counts (transcriptomics.qc.min_counts)" in message
    assert "with fewer than 200 detected genes (transcriptomics.qc.min_genes)" in message
    assert "remove the sample's row from the sample sheet" in message and "\n" not in message
    assert not (tmp_path / "qc.json").exists() and not (tmp_path / "f.h5ad").exists()


def test_integration_refuses_a_filtered_file_without_cells(cells, tmp_path):
    from gpubio.transcriptomics.cluster import combine_samples
    from gpubio.transcriptomics.io import SampleError

    run_qc(write_10x_h5(tmp_path / "good.h5", cells), "good", tmp_path)
    import anndata as ad

    empty = ad.read_h5ad(tmp_path / "good.h5ad")[:0].copy()
    empty.write_h5ad(tmp_path / "empty.h5ad")
    with pytest.raises(SampleError, match=r"empty.h5ad: holds no cells; run cell QC again, or remove"):
        combine_samples([str(tmp_path / "good.h5ad"), str(tmp_path / "empty.h5ad")])


# --------------------------------------------------------------------------- item 8: damaged files at start-up


def damaged_inputs(cells, root: Path) -> dict[str, Path]:
    """One good count file and one of each kind of damage, by sample name."""
    root.mkdir(parents=True, exist_ok=True)
    good = write_10x_h5(root / "good.h5", cells)
    truncated = root / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    not_hdf5 = root / "notes.h5"
    not_hdf5.write_text("sample notes, saved under the wrong name\n")
    mtx = write_mtx(root / "cut_mtx", cells)
    (mtx / "matrix.mtx.gz").write_bytes(gzip.compress(b"%%MatrixMarket matrix coordinate integer general\n")[:20])
    processed = write_processed_h5ad(root / "processed.h5ad", cells, keep_counts=None)
    return {"good": good, "truncated": truncated, "notes": not_hdf5, "cutmtx": mtx, "processed": processed}


def test_count_files_that_cannot_be_used_are_each_one_line(cells, tmp_path):
    from gpubio.transcriptomics.sizing import survey_count_files

    files = damaged_inputs(cells, tmp_path)
    size_mb, problems = survey_count_files({s: str(p) for s, p in files.items()}, "sheet.tsv")
    assert size_mb == pytest.approx(cells.counts.nnz * 16 / 1e6)  # the good file only
    assert len(problems) == 4, problems
    by_sample = {p.split(": ")[1]: p for p in problems}
    assert set(by_sample) == {"sample truncated", "sample notes", "sample cutmtx", "sample processed"}
    assert "truncated file" in by_sample["sample truncated"]
    for sample in ("truncated", "notes", "cutmtx"):
        line = by_sample[f"sample {sample}"]
        assert line.startswith(f"sheet.tsv: sample {sample}: counts '{files[sample]}' cannot be read (")
        assert line.endswith("copy it again, or point the row at a readable one")
    assert by_sample["sample processed"].startswith(
        f"sheet.tsv: sample processed: counts '{files['processed']}': X holds non-integer values"
    )
    assert "give the raw count matrix instead" in by_sample["sample processed"]
    assert all("\n" not in p for p in problems)


def project(root: Path, samples: dict[str, Path]) -> Path:
    """A project with only transcriptomics samples (the other sheets empty), no reference."""
    shutil.copytree(REPO / "config", root / "config")
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["transcriptomics"]["annotation"]["reference"] = ""
    config["transcriptomics"]["spatial"]["interactions"] = ""
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    for sheet in ("genomics", "imaging"):
        path = root / "config" / f"{sheet}.tsv"
        path.write_text(path.read_text().splitlines()[0] + "\n")
    rows = "".join(f"{s}\t{p.relative_to(root)}\tbatch1\t\n" for s, p in samples.items())
    (root / "config" / "transcriptomics.tsv").write_text("sample\tcounts\tbatch\tspatial\n" + rows)
    return root


def test_damaged_and_processed_inputs_stop_the_workflow_before_any_job(cells, tmp_path):
    files = damaged_inputs(cells, tmp_path / "data")
    root = project(tmp_path, files)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["transcriptomics"]["annotation"]["reference"] = "missing.h5ad"  # reported with the others
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(root, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out and "OSError" not in out
    assert "gpubio: 5 problem(s) in the configuration" in out
    assert "transcriptomics.annotation.reference 'missing.h5ad' is not an existing file" in out
    for sample in ("truncated", "notes", "cutmtx"):
        assert f"config/transcriptomics.tsv: sample {sample}: counts 'data/" in out
    assert "sample processed: counts 'data/processed.h5ad': X holds non-integer values" in out
    assert not (root / "results").exists()


def test_sample_emptied_by_qc_fails_its_job_with_one_clear_line(cells, tmp_path):
    shallow = simulate(seed=5, n_cells=300, n_genes=900, library=120)
    data = tmp_path / "data"
    data.mkdir()
    root = project(
        tmp_path, {"good": write_10x_h5(data / "good.h5", cells), "shallow": write_10x_h5(data / "shallow.h5", shallow)}
    )
    proc = run_snakemake(root, "--cores", "1", "results/transcriptomics/shallow/qc.json", check=False)
    assert proc.returncode != 0
    log = (root / "logs/transcriptomics/shallow/cell_qc.log").read_text()
    assert "Traceback" not in log
    last = log.strip().splitlines()[-1]
    assert last.startswith("gpubio: cell-qc: data/shallow.h5: sample shallow: cell QC removed all 300 cells")
    assert not (root / "results/transcriptomics/shallow/qc.json").exists()


# --------------------------------------------------------------------------- item 12: seeds


@pytest.mark.parametrize("key", ["cluster", "annotation.celltypist", "annotation.scanvi", "spatial"])
def test_negative_seeds_are_config_errors(cells, tmp_path, key):
    from gpubio.config import ConfigError, load_project

    root = project(tmp_path, {"good": write_10x_h5(tmp_path / "good.h5", cells)})
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    section = config["transcriptomics"]
    for part in key.split("."):
        section = section[part]
    section["seed"] = -3
    with pytest.raises(ConfigError) as error:
        load_project(config, workdir=root)
    assert len(error.value.problems) == 1
    assert f"key 'transcriptomics.{key}.seed' = -3 is out of range" in error.value.problems[0]


# --------------------------------------------------------------------------- item 9: clustering recipe


@pytest.fixture(scope="module")
def close_pair(tmp_path_factory):
    """Cells of seven types (T and NK apart only by a dozen weak markers) after cell QC, with truth."""
    import pandas as pd

    from gpubio.transcriptomics.cluster import combine_samples

    out = tmp_path_factory.mktemp("close-pair")
    cells = simulate(seed=2)
    run_qc(write_10x_h5(out / "blood.h5", cells), "blood", out)
    truth = pd.Series(cells.cell_types, index=[f"blood:{b}" for b in cells.barcodes])
    combined = combine_samples([str(out / "blood.h5ad")])
    return combined, truth.loc[combined.obs_names]


@pytest.mark.parametrize("scale", [False, True], ids=["unscaled", "scaled"])
def test_scaling_before_pca_keeps_the_close_types_apart(close_pair, scale):
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score

    from gpubio.transcriptomics.backend import select_backend
    from gpubio.transcriptomics.cluster import ClusterParams, cluster_cells

    combined, truth = close_pair
    adata = combined.copy()
    cluster_cells(adata, ClusterParams(scale=scale), select_backend("scanpy", gpus=[]))
    home = pd.crosstab(truth.to_numpy(), adata.obs["leiden"].to_numpy()).idxmax(axis=1)  # each type's cluster
    ari = adjusted_rand_score(truth, adata.obs["leiden"])
    t, nk = CLOSE_PAIR
    if scale:
        assert home[t] != home[nk] and home.nunique() == 7  # every type, the 3 % one too, in its own cluster
        assert ari >= 0.9
    else:  # what the default did before: the close pair merges
        assert home[t] == home[nk]
        assert ari < 0.85
    # X stays log-normalized (not scaled) for markers and annotation
    assert adata.X.min() >= 0 and "counts" in adata.layers

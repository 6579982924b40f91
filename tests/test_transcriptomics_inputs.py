"""Transcriptomics on inputs shaped unlike the demo: matrices that are not counts, samples that
QC empties, damaged files at start-up, clustering of two close cell types, seeds out of range.
The data come from tests/independent/transcriptomics.py (cell types known by construction)."""

from __future__ import annotations

import gzip
import json
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
    survey = survey_count_files({s: str(p) for s, p in files.items()}, "sheet.tsv")
    size_mb, problems = survey.size_mb, survey.problems
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


# --------------------------------------------------------------------------- issue 18: matrices labs send


def ensembl_ids(n: int) -> list[str]:
    return [f"ENSG{i + 100_000:011d}" for i in range(n)]


def named_by_ids(cells, path: Path, symbol_column: str | None) -> Path:
    """An .h5ad whose var_names are Ensembl ids; the symbols in var[symbol_column] (or nowhere)."""
    adata = to_anndata(cells)
    symbols = list(adata.var_names)
    adata.var_names = ensembl_ids(adata.n_vars)
    adata.var = adata.var.drop(columns="gene_ids")
    adata.var["feature_types"] = "Gene Expression"
    if symbol_column:
        adata.var[symbol_column] = symbols
    adata.write_h5ad(path)
    return path


@pytest.mark.parametrize("column", ["gene_symbols", "feature_name", "gene_name", "symbol"])
def test_ensembl_ids_as_gene_names_take_the_symbols_of_the_usual_column(cells, tmp_path, caplog, column):
    import anndata as ad

    caplog.set_level(logging.INFO, logger="gpubio")
    path = named_by_ids(cells, tmp_path / "ids.h5ad", column)
    summary = run_qc(path, "ids", tmp_path)
    # mitochondrial genes are found by symbol: the truth's 13 genes and their share of counts
    mito = np.array([g.startswith("MT-") for g in cells.genes])
    truth = np.asarray(cells.counts[:, mito].sum(axis=1)).ravel() / np.asarray(cells.counts.sum(axis=1)).ravel()
    assert summary["mito_genes"] == 13
    assert summary["mean_pct_mito"] == pytest.approx(100 * truth.mean(), rel=1e-4)
    kept = ad.read_h5ad(tmp_path / "ids.h5ad")
    assert set(kept.var_names) <= set(cells.genes)  # markers and references see symbols ...
    ids = dict(zip(cells.genes, ensembl_ids(len(cells.genes))))
    assert all(kept.var.loc[g, "gene_ids"] == ids[g] for g in kept.var_names[:50])  # ... ids are kept beside them
    assert f"gene symbols from var['{column}'] (var_names are ids, e.g. ENSG00000100000)" in caplog.text


def test_ensembl_ids_without_a_symbol_column_are_refused_naming_the_key(cells, tmp_path):
    from gpubio.cli import main

    path = named_by_ids(cells, tmp_path / "ids.h5ad", "hgnc")  # an unusual name: not found by itself
    args = ["cell-qc", "--counts", str(path), "--sample", "ids", "--batch", "b1"]
    args += ["--out-json", str(tmp_path / "qc.json"), "--out-h5ad", str(tmp_path / "f.h5ad")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message.startswith(
        f"gpubio: cell-qc: {path}: sample ids: gene names are Ensembl ids (e.g. ENSG00000100000) and var has "
        "no gene-symbol column (looked for gene_symbols, gene_symbol, feature_name,"
    )
    assert "var has: feature_types, hgnc); set transcriptomics.gene_symbol_column" in message and "\n" not in message
    assert not (tmp_path / "qc.json").exists()
    # naming the column is the fix
    main([*args, "--gene-symbol-column", "hgnc"])
    assert json.loads((tmp_path / "qc.json").read_text())["mito_genes"] == 13


def test_repeated_gene_names_are_made_unique_and_counted(cells, tmp_path, caplog):
    import anndata as ad

    caplog.set_level(logging.INFO, logger="gpubio")
    adata = to_anndata(cells)
    names = list(adata.var_names)
    names[100:110] = names[90:100]  # ten symbols twice, as when two ids share a symbol
    adata.var_names = names
    adata.write_h5ad(tmp_path / "repeated.h5ad")
    run_qc(tmp_path / "repeated.h5ad", "rep", tmp_path, min_cells=0)
    kept = ad.read_h5ad(tmp_path / "rep.h5ad")
    assert kept.var_names.is_unique
    # the second G0090 keeps its own counts (those of column 100) under its new name
    column = kept.var_names.get_loc("G0090-1")
    rows = [cells.barcodes.index(n.split(":", 1)[1]) for n in kept.obs_names]
    np.testing.assert_array_equal(
        kept.layers["counts"][:, column].toarray().ravel(), cells.counts[rows, 100].toarray().ravel()
    )
    assert "sample rep: 10 gene name(s) in var_names occur more than once (G0090, G0091, G0092, ...)" in caplog.text
    # one name for most genes is a wrong column: refused
    adata.var_names = ["G0001"] * 600 + names[600:]
    adata.write_h5ad(tmp_path / "one_name.h5ad")
    from gpubio.transcriptomics.io import SampleError

    with pytest.raises(SampleError, match=r"var_names has 301 distinct names for 900 genes \('G0001' 600 times\)"):
        run_qc(tmp_path / "one_name.h5ad", "one", tmp_path)


def test_unpacked_and_old_style_mtx_directories_are_read(cells, tmp_path):
    """GEO downloads are often gunzipped, or Cell Ranger 2's genes.tsv gzipped."""
    reference = run_qc(write_mtx(tmp_path / "packed", cells), "packed", tmp_path)
    unpacked = write_mtx(tmp_path / "unpacked", cells)
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"):
        (unpacked / name.removesuffix(".gz")).write_bytes(gzip.decompress((unpacked / name).read_bytes()))
        (unpacked / name).unlink()
    old = write_mtx(tmp_path / "old", cells)
    (old / "features.tsv.gz").rename(old / "genes.tsv.gz")
    for directory in (unpacked, old):
        summary = run_qc(directory, directory.name, tmp_path)
        assert {k: summary[k] for k in ("cells", "genes", "total_counts", "mito_genes", "cells_after_qc")} == {
            k: reference[k] for k in ("cells", "genes", "total_counts", "mito_genes", "cells_after_qc")
        }


def test_mtx_directory_without_its_gene_names_is_refused_at_start_up(cells, tmp_path):
    from gpubio.transcriptomics.sizing import survey_count_files

    no_features = write_mtx(tmp_path / "no_features", cells)
    (no_features / "features.tsv.gz").unlink()
    no_barcodes = write_mtx(tmp_path / "no_barcodes", cells)
    (no_barcodes / "barcodes.tsv.gz").unlink()
    survey = survey_count_files({"nf": str(no_features), "nb": str(no_barcodes)}, "sheet.tsv")
    assert survey.problems == [
        f"sheet.tsv: sample nf: counts '{no_features}' is a 10x MTX directory without features.tsv.gz or "
        "features.tsv or genes.tsv.gz or genes.tsv (the gene names); copy the missing file from the same "
        "Cell Ranger output (filtered_feature_bc_matrix/) into it",
        f"sheet.tsv: sample nb: counts '{no_barcodes}' is a 10x MTX directory without barcodes.tsv.gz or "
        "barcodes.tsv (the cell barcodes); copy the missing file from the same Cell Ranger output "
        "(filtered_feature_bc_matrix/) into it",
    ]


def split_genes(cells, root: Path, keep_every: int, rename=None) -> dict[str, Path]:
    """Two samples of one population: a keeps every gene, b every keep_every-th one (and the
    close pair's markers and mitochondrial genes); rename: what b calls its genes."""
    root.mkdir(parents=True, exist_ok=True)
    adata = to_anndata(cells)
    half = adata.n_obs // 2
    a, b = adata[:half].copy(), adata[half:].copy()
    keep = [i for i, g in enumerate(adata.var_names) if i % keep_every == 0 or i < 18 or g.startswith("MT-")]
    b = b[:, keep].copy()
    if rename:
        b.var_names = [rename(g) for g in b.var_names]
    a.write_h5ad(root / "a.h5ad")
    b.write_h5ad(root / "b.h5ad")
    return {"a": root / "a.h5ad", "b": root / "b.h5ad"}


def test_samples_measuring_different_genes_are_joined_on_the_shared_genes(cells, tmp_path, caplog):
    from gpubio.transcriptomics.cluster import combine_samples
    from gpubio.transcriptomics.sizing import survey_count_files

    files = split_genes(cells, tmp_path / "data", keep_every=2)
    survey = survey_count_files({s: str(p) for s, p in files.items()}, "sheet.tsv")
    assert survey.problems == []
    assert survey.warnings == [
        "sheet.tsv: samples measured different genes: 466 of 900 are in every sample (genes per sample: b: 466, "
        "a: 900); the analysis uses the 466 shared genes, as a gene missing from a sample would read as 0 there "
        "and split the clusters by sample"
    ]
    caplog.set_level(logging.INFO, logger="gpubio")
    for sample, path in files.items():
        run_qc(path, sample, tmp_path)
    combined = combine_samples([str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")])
    measured_by_b = set(np.asarray(ad_read(tmp_path / "b.h5ad").uns["measured_genes"]))
    assert len(measured_by_b) == 466 and set(combined.var_names) <= measured_by_b
    assert combined.n_vars >= 0.9 * 466  # those QC kept somewhere; none b never measured
    assert "samples measured different genes: 466 of 900 are in every sample" in caplog.text


def ad_read(path: Path):
    import anndata as ad

    return ad.read_h5ad(path)


def test_samples_sharing_few_genes_are_refused(cells, tmp_path):
    from gpubio.transcriptomics.cluster import combine_samples
    from gpubio.transcriptomics.io import SampleError
    from gpubio.transcriptomics.sizing import survey_count_files

    # b names its genes another way (a mouse-style capitalisation): 13 of them still match
    files = split_genes(
        cells, tmp_path / "data", keep_every=1, rename=lambda g: g if g.startswith("MT-") else g.lower()
    )
    survey = survey_count_files({s: str(p) for s, p in files.items()}, "sheet.tsv")
    assert survey.problems == [
        "sheet.tsv: samples share only 13 genes (genes per sample: a: 900, b: 900); another species, gene "
        "annotation or kind of identifier? Give count matrices with the same gene names "
        "(transcriptomics.gene_symbol_column names a var column of symbols), or analyse them apart"
    ]
    for sample, path in files.items():
        run_qc(path, sample, tmp_path)
    with pytest.raises(SampleError, match=r"a.h5ad, .*b.h5ad: samples share only 13 genes"):
        combine_samples([str(tmp_path / "a.h5ad"), str(tmp_path / "b.h5ad")])


def test_the_odd_sample_out_is_named(cells, tmp_path):
    from gpubio.transcriptomics.genes import sample_overlap

    human = set(cells.genes)
    overlap = sample_overlap({"h1": human, "h2": human, "m1": {g.lower() for g in human}})
    assert overlap.problem.startswith("samples share only 0 genes (genes per sample: h1: 900, h2: 900, m1: 900); m1 ")
    assert "m1 share few gene names with the other samples" in overlap.problem


def test_samples_with_few_cells_are_warned_and_too_few_cells_in_all_refused(cells, tmp_path, caplog):
    from gpubio.cli import main
    from gpubio.transcriptomics.cluster import combine_samples

    caplog.set_level(logging.INFO, logger="gpubio")
    tiny = simulate(seed=12, n_cells=30, n_genes=900)
    summary = run_qc(write_10x_h5(tmp_path / "tiny.h5", tiny), "tiny", tmp_path)
    run_qc(write_10x_h5(tmp_path / "big.h5", cells), "big", tmp_path)
    n = summary["cells_after_qc"]
    assert 0 < n < 50
    note = f"sample tiny: only {n} cells after QC of 30 (fewer than 50): it is analysed"
    assert summary["warnings"] == [
        note + ", but its cells can hardly form clusters of their own; check the sample, or relax transcriptomics.qc"
    ]
    assert note in caplog.text
    combined = combine_samples([str(tmp_path / "big.h5ad"), str(tmp_path / "tiny.h5ad")])
    assert combined.obs["sample"].value_counts()["tiny"] == n
    assert f"sample tiny: only {n} cells after QC (fewer than 50)" in caplog.text  # in the integration log too
    args = ["integrate-cells", str(tmp_path / "tiny.h5ad"), "--backend", "scanpy"]
    args += ["--out-h5ad", str(tmp_path / "i.h5ad"), "--out-markers", str(tmp_path / "m.tsv")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message == (
        f"gpubio: integrate-cells: {tmp_path / 'tiny.h5ad'}: {n} cells after QC in all (tiny: {n}), fewer than 50: "
        "too few to cluster (principal components, a neighbour graph); relax transcriptomics.qc or add samples"
    )
    assert not (tmp_path / "i.h5ad").exists()


def test_gene_name_problems_stop_the_workflow_before_any_job(cells, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    no_features = write_mtx(data / "no_features", cells)
    (no_features / "features.tsv.gz").unlink()
    mouse = to_anndata(cells)
    mouse.var_names = [g if g.startswith("MT-") else g.lower() for g in mouse.var_names]
    mouse.write_h5ad(data / "mouse.h5ad")
    files = {
        "good": write_10x_h5(data / "good.h5", cells),
        "ids": named_by_ids(cells, data / "ids.h5ad", None),
        "nofeatures": no_features,
        "mouse": data / "mouse.h5ad",
    }
    root = project(tmp_path, files)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["transcriptomics"]["annotation"]["reference"] = "data/ids.h5ad"  # a reference named by ids too
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(root, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out
    assert "gpubio: 4 problem(s) in the configuration" in out
    assert (
        "config/config.yaml: transcriptomics.annotation.reference 'data/ids.h5ad': gene names are Ensembl ids "
        "(e.g. ENSG00000100000) and var has no gene-symbol column" in out
    )
    assert (
        "config/transcriptomics.tsv: sample ids: counts 'data/ids.h5ad': gene names are Ensembl ids "
        "(e.g. ENSG00000100000) and var has no gene-symbol column" in out
    )
    assert "sample nofeatures: counts 'data/no_features' is a 10x MTX directory without features.tsv.gz" in out
    assert "config/transcriptomics.tsv: samples share only 13 genes (genes per sample: good: 900, mouse: 900)" in out
    assert not (root / "results").exists()


def test_start_up_warns_of_genes_some_samples_lack(cells, tmp_path):
    files = split_genes(cells, tmp_path / "data", keep_every=2)
    repeated = to_anndata(cells)
    names = list(repeated.var_names)
    names[100:102] = names[90:92]  # G0100 and G0101 are G0090 and G0091 here: 465 genes in every sample
    repeated.var_names = names
    repeated.write_h5ad(tmp_path / "data" / "repeated.h5ad")
    files["rep"] = tmp_path / "data" / "repeated.h5ad"
    files["ids"] = named_by_ids(cells, tmp_path / "data" / "ids.h5ad", "hgnc")
    root = project(tmp_path, files)
    config = yaml.safe_load((root / "config" / "config.yaml").read_text())
    config["transcriptomics"]["gene_symbol_column"] = "hgnc"
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(root, "-n", "-p", "results/transcriptomics/ids/qc.json")
    assert (
        "gpubio: warning: config/transcriptomics.tsv: samples measured different genes: 465 of 902 are in every "
        "sample (genes per sample: b: 466, a: 900, rep: 900, ids: 900)" in proc.stderr
    )
    # repeated names are for the cell QC log: Cell Ranger's references repeat a few symbols, and
    # a line per sample at every start would bury the warnings that matter
    assert "occur more than once" not in proc.stderr
    assert "cell-qc --counts data/ids.h5ad --sample ids" in proc.stdout
    assert "--gene-symbol-column hgnc" in proc.stdout


def test_non_gene_features_are_left_out_alike_at_start_up_and_in_cell_qc(cells, tmp_path, caplog):
    import anndata as ad
    import pandas as pd

    from gpubio.transcriptomics.sizing import survey_count_files

    caplog.set_level(logging.INFO, logger="gpubio")
    genes = to_anndata(cells)
    genes.var["feature_types"] = "Gene Expression"
    antibodies = ad.AnnData(
        X=sp.csr_matrix(np.full((cells.counts.shape[0], 20), 7, dtype=np.float32)),
        obs=genes.obs,
        var=pd.DataFrame(
            {"gene_ids": [f"AB{i}" for i in range(20)], "feature_types": "Antibody Capture"},
            index=[f"CD{i}_TotalSeqB" for i in range(20)],
        ),
    )
    both = ad.concat([genes, antibodies], axis=1, merge="first")
    both.write_h5ad(tmp_path / "citeseq.h5ad")  # feature_types stored as a categorical column
    survey = survey_count_files({"cite": str(tmp_path / "citeseq.h5ad"), "plain": str(tmp_path / "citeseq.h5ad")}, "s")
    assert survey.problems == [] and survey.warnings == []
    assert len(survey.genes["cite"]) == 900 and not any(g.startswith("CD") for g in survey.genes["cite"])
    summary = run_qc(tmp_path / "citeseq.h5ad", "cite", tmp_path, min_cells=0)
    assert summary["genes"] == 900 and summary["total_counts"] == int(cells.counts.sum())
    assert "sample cite: 20 features that are not genes (var feature_types) left out" in caplog.text


def test_files_alike_but_for_their_symbol_columns_are_named_each_on_its_own(cells, tmp_path):
    """The start-up pass names each distinct gene list once: what tells lists apart must include
    every column that takes part in naming."""
    from gpubio.transcriptomics.sizing import survey_count_files

    with_symbols = named_by_ids(cells, tmp_path / "with.h5ad", "gene_symbols")
    without = named_by_ids(cells, tmp_path / "without.h5ad", None)
    survey = survey_count_files({"with": str(with_symbols), "without": str(without)}, "s")
    assert len(survey.problems) == 1 and survey.problems[0].startswith(
        f"s: sample without: counts '{without}': gene names are Ensembl ids"
    )
    assert survey.genes["with"] == frozenset(cells.genes)


def test_a_mitochondrial_prefix_in_the_wrong_case_is_a_start_up_warning(cells, tmp_path):
    from gpubio.transcriptomics.sizing import survey_count_files

    mouse = to_anndata(cells)
    mouse.var_names = [g.replace("MT-", "mt-") for g in mouse.var_names]  # mouse genes: mt-Co1 ...
    mouse.write_h5ad(tmp_path / "mouse.h5ad")
    human = write_10x_h5(tmp_path / "human.h5", cells)
    survey = survey_count_files({"m1": str(tmp_path / "mouse.h5ad"), "h1": str(human)}, "s", mito_prefix="MT-")
    assert survey.warnings[-1] == (
        "s: samples m1: no gene name starts with transcriptomics.qc.mito_prefix 'MT-', but some start with "
        "'mt-': the mitochondrial filter (qc.max_mito_pct) would remove nothing; set qc.mito_prefix to 'mt-' "
        "(mouse genes: 'mt-')"
    )
    assert survey_count_files({"h1": str(human)}, "s", mito_prefix="MT-").warnings == []

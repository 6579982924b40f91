"""Every kind of bad input gets its own one-line error naming file, row or key, and the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from conftest import demo_config, run_snakemake
from gpubio.config import ConfigError, load_project

HEADER = "sample\tplatform\tpod5\tfastq_1\tfastq_2\tbam\n"
FQ = "resources/demo/genomics/ont.fastq.gz"


def problems_for(workdir: Path, config: dict | None = None, genomics: str | None = None) -> list[str]:
    if genomics is not None:
        (workdir / "config" / "genomics.tsv").write_text(genomics)
    try:
        load_project(copy.deepcopy(config or demo_config()), workdir=workdir)
    except ConfigError as error:
        return error.problems
    return []


def test_demo_config_is_valid_and_fills_defaults(workdir):
    config = demo_config()
    del config["transcriptomics"]["qc"]["min_cells"]
    project = load_project(config, workdir=workdir)
    assert project.samples("genomics") == ["illu1", "ont1"]
    assert project.samples("transcriptomics") == ["pbmc1", "pbmc2"]
    assert project.samples("imaging") == ["nuclei1", "nuclei2"]
    assert project.config["transcriptomics"]["qc"]["min_cells"] == 3  # schema default
    assert project.config["gpu"]["require"] is False


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda c: c["transcriptomics"]["qc"].update(min_gens=5),
            "unknown key 'transcriptomics.qc.min_gens'; did you mean 'min_genes'?",
        ),
        (lambda c: c.update(imagin={"samples": "x"}), "unknown key 'imagin'; did you mean 'imaging'?"),
        (
            lambda c: c["transcriptomics"]["qc"].update(min_genes="many"),
            "key 'transcriptomics.qc.min_genes' must be integer",
        ),
        (
            lambda c: c["transcriptomics"]["qc"].update(max_mito_pct=150),
            "key 'transcriptomics.qc.max_mito_pct' = 150 is out of range",
        ),
        (lambda c: c["gpu"].update(require="yes"), "key 'gpu.require' must be boolean"),
        (lambda c: c["genomics"].update(reference="missing.fa"), "genomics.reference 'missing.fa' does not exist"),
        (lambda c: c["genomics"].pop("reference"), "genomics has samples but no 'reference'"),
    ],
)
def test_bad_config_keys(workdir, edit, expected):
    config = demo_config()
    edit(config)
    problems = problems_for(workdir, config)
    assert len(problems) == 1, problems
    assert problems[0].startswith("config/config.yaml: ")
    assert expected in problems[0]


@pytest.mark.parametrize(
    "rows, expected",
    [
        (
            f"bad name\tont\t\t{FQ}\t\t\n",
            "row 1 (line 2, sample 'bad name'): sample name 'bad name' may only contain [A-Za-z0-9._-]",
        ),
        (f"a;rm\tont\t\t{FQ}\t\t\n", "sample name 'a;rm' may only contain"),
        (
            f"s1\tont\t\t{FQ}\t\t\ns1\tont\t\t{FQ}\t\t\n",
            "row 2 (line 3, sample 's1'): duplicate sample name, already used in row 1",
        ),
        (f"s1\tpacbio\t\t{FQ}\t\t\n", "platform 'pacbio' is not one of: ont, illumina"),
        ("s1\tont\t\tnope.fastq.gz\t\t\n", "fastq_1 'nope.fastq.gz' does not exist"),
        (
            f"s1\tont\tresources/demo/genomics\t{FQ}\t\t\n",
            "has 2 inputs (pod5, fastq_1); give exactly one of pod5 or fastq_1 or bam",
        ),
        ("s1\tont\t\t\t\t\n", "has no input; give exactly one of pod5 or fastq_1 or bam"),
        (f"s1\tillumina\t\t\t{FQ}\t\n", "fastq_2 is set without fastq_1"),
        (
            "s1\tont\t\tresources/demo/genomics/reference.fa\t\t\n",
            "fastq_1 'resources/demo/genomics/reference.fa' is not a .fastq",
        ),
        (f"s1\t\t\t{FQ}\t\t\n", "column 'platform' is empty"),
    ],
)
def test_bad_genomics_rows(workdir, rows, expected):
    problems = problems_for(workdir, genomics=HEADER + rows)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith("config/genomics.tsv") for p in problems)


def test_missing_column_and_extra_columns(workdir):
    problems = problems_for(workdir, genomics=f"sample\tfastq_1\ns1\t{FQ}\n")
    assert problems == ["config/genomics.tsv: missing column(s) 'platform'; the header has: sample, fastq_1"]
    assert problems_for(workdir, genomics=f"sample\tplatform\tfastq_1\tdonor\ns1\tont\t{FQ}\tD7\n") == []
    project = load_project(demo_config(), workdir=workdir)
    assert project.sheets["genomics"].loc["s1", "donor"] == "D7"  # extra columns are kept


def test_other_sheets_are_checked(workdir):
    (workdir / "config" / "transcriptomics.tsv").write_text(
        "sample\tcounts\tbatch\nc1\tresources/demo/genomics/ont.fastq.gz\tb1\nc2\tresources/demo/transcriptomics/pbmc2\t\n"
    )
    (workdir / "config" / "imaging.tsv").write_text("sample\timage\ni/1\tresources/demo/imaging/nuclei1.tif\n")
    problems = problems_for(workdir)
    assert any("transcriptomics.tsv row 1" in p and "is not a .h5 / .h5ad / / file or directory" in p for p in problems)
    assert any("transcriptomics.tsv row 2" in p and "column 'batch' is empty" in p for p in problems)
    assert any("imaging.tsv row 1" in p and "sample name 'i/1'" in p for p in problems)


def test_empty_or_absent_sheet_switches_module_off(workdir):
    (workdir / "config" / "imaging.tsv").write_text("")
    (workdir / "config" / "transcriptomics.tsv").write_text("sample\tcounts\tbatch\n")
    (workdir / "config" / "genomics.tsv").unlink()
    project = load_project(demo_config(), workdir=workdir)
    assert not any(project.active(d) for d in ("genomics", "transcriptomics", "imaging"))


def test_bad_input_stops_snakemake_before_any_job(workdir):
    (workdir / "config" / "genomics.tsv").write_text(HEADER + f"bad name\tont\t\t{FQ}\t\t\n")
    proc = run_snakemake(workdir, "--cores", "1", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "config/genomics.tsv row 1 (line 2, sample 'bad name'): sample name 'bad name'" in output
    assert not (workdir / "results").exists()
    assert "Building DAG" not in output


# --------------------------------------------------------------------------- files written here


def write_reads(root: Path) -> None:
    (root / "r1.fq").write_text("@r0\nACGTACGTAC\n+\nIIIIIIIIII\n")


def sheet_problems_of(root: Path, text: str, domain: str = "genomics") -> list[str]:
    from gpubio.config import read_sample_sheet

    (root / "sheet.tsv").write_text(text)
    return read_sample_sheet(domain, "sheet.tsv", root)[1]


def test_sheet_problems_give_the_line_in_the_file_counting_comments_and_blank_lines(tmp_path):
    from gpubio.config import read_sample_sheet, section_settings
    from gpubio.genomics.sheet import sheet_problems

    write_reads(tmp_path)
    text = (
        "# genomics samples of the pilot\n"  # line 1
        "\n"
        "sample\tplatform\tfastq_1\tbarcode\n"  # line 3: the header
        "# first flow cell\n"
        "a1\tont\tr1.fq\t\n"  # line 5: row 1
        "\n"
        "a2\tpacbio\tr1.fq\t\n"  # line 7: row 2
        "   # indented comment\n"
        "a3\tont\tr1.fq\tbarcode07\n"  # line 9: row 3
    )
    assert sheet_problems_of(tmp_path, text) == [
        "sheet.tsv row 2 (line 7, sample 'a2'): platform 'pacbio' is not one of: ont, illumina; fix the value"
    ]
    # a module's own checks (run on a sheet whose rows pass the schema) name the same lines
    assert sheet_problems_of(tmp_path, text.replace("pacbio", "illumina")) == []
    table, _ = read_sample_sheet("genomics", "sheet.tsv", tmp_path)
    settings = section_settings({"genomics": {"variant_effects": {"enabled": False}}}, "genomics")
    problems = sheet_problems(table, "sheet.tsv", settings, "c.yaml")
    assert problems and all(p.startswith("sheet.tsv row 3 (line 9, sample 'a3'): barcode") for p in problems)


def test_a_trailing_tab_is_named_as_an_extra_empty_column(tmp_path):
    write_reads(tmp_path)
    header = "sample\tplatform\tfastq_1\n"
    # before: the first column became pandas' index and every value moved one column left
    assert sheet_problems_of(tmp_path, header + "s1\tillumina\tr1.fq\t\ns2\tont\tr1.fq\n") == [
        "sheet.tsv row 1 (line 2, sample 's1'): has 1 empty column(s) more than the header's 3 "
        "(a tab at the end of the line?); remove the trailing tab(s)"
    ]
    assert sheet_problems_of(tmp_path, header + "s1\tillumina\tr1.fq\tD7\n") == [
        "sheet.tsv row 1 (line 2, sample 's1'): has 1 column(s) more than the header's 3 ('D7'); "
        "add their names to the header or remove them"
    ]
    assert sheet_problems_of(tmp_path, "sample\tplatform\tfastq_1\t\ns1\tillumina\tr1.fq\t\n") == [
        "sheet.tsv: the header's column 4 has no name (a tab too many, e.g. at the end of the header line); "
        "remove it or name the column"
    ]
    # a row with fewer columns (the optional ones left off) is fine
    assert sheet_problems_of(tmp_path, "sample\tplatform\tfastq_1\tfastq_2\ns1\tillumina\tr1.fq\n") == []


def test_a_value_with_an_unclosed_quote_names_its_line(tmp_path):
    write_reads(tmp_path)
    [problem] = sheet_problems_of(tmp_path, 'sample\tplatform\tfastq_1\n\ns1\tont\t"r1.fq\n')
    assert problem.startswith("sheet.tsv line 3: cannot be read as tab-separated values")


def test_yaml_syntax_error_in_the_config_names_the_file_and_line(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "gpu:\n  require: false\ngenomics:\n  samples: config/genomics.tsv\n\treference: ref.fa\n"
    )
    proc = run_snakemake(tmp_path, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    assert "gpubio: config/config.yaml line 5, column 1: not valid YAML: found a tab character" in output


def test_yaml_syntax_error_in_an_overlay_is_named_by_check_yaml(tmp_path):
    """Snakemake reads --configfile overlays before the workflow starts, and its message names
    no file; `python -m gpubio check-yaml` names the file, line and column (README)."""
    import subprocess
    import sys

    (tmp_path / "good.yaml").write_text("gpu: {require: true}\n")
    (tmp_path / "demo.yaml").write_text("imaging:\n  samples: [config/imaging.tsv\n  segmentation: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gpubio", "check-yaml", "good.yaml", "demo.yaml"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith("gpubio: demo.yaml line 3, column 15: not valid YAML: ")
    assert "(while parsing a flow sequence at line 2)" in line

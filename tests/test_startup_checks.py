"""One start-up pass: mistakes in the config, the sheets of different modules, the partitions
file and input headers are all reported in one run, one line each, before any job.

The project here is written by the tests themselves (small files, odd names and folders),
so nothing depends on the demo data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import run_snakemake

# a partition whose GRES type no GPU catalogue knows
BAD_PARTITIONS = "partitions:\n  lab-gpus:\n    max_gpu: 2\n    available_gpu_models: [warpcore9]\n"


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def write_reference(root: Path, relative: str, rng: np.random.Generator) -> None:
    bases = "".join(rng.choice(list("ACGT"), 1200))
    write(root, relative, ">chrZ\n" + "\n".join(bases[i : i + 60] for i in range(0, len(bases), 60)) + "\n")


def write_fastq(root: Path, relative: str, rng: np.random.Generator, reads: int = 5) -> None:
    records = []
    for i in range(reads):
        seq = "".join(rng.choice(list("ACGT"), 80))
        records.append(f"@r{i}\n{seq}\n+\n{'I' * len(seq)}\n")
    write(root, relative, "".join(records))


def write_project(root: Path, config: dict) -> None:
    """config/config.yaml (JSON is YAML) in the project directory the workflow runs in."""
    write(root, "config/config.yaml", json.dumps(config))


def problem_lines(output: str) -> list[str]:
    """The indented problem lines under gpubio's 'N problem(s)' header."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if "problem(s) in the configuration" in line)
    return [line.strip() for line in lines[start + 1 :] if line.startswith("  ") and ": " in line]


def assert_stopped_before_jobs(proc, root: Path) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "Building DAG" not in output
    assert "Traceback" not in output
    assert not (root / "results").exists()
    return output


def test_every_kind_of_mistake_is_reported_in_one_run(tmp_path):
    rng = np.random.default_rng(11)
    write_reference(tmp_path, "genome/chrZ.fa", rng)
    write_fastq(tmp_path, "reads/lib A.fastq", rng)
    write(
        tmp_path, "lists/dna.tsv", "sample\tplatform\tfastq_1\nd7\tont\treads/lib A.fastq\nd7\tont\treads/lib A.fastq\n"
    )
    write(tmp_path, "lists/rna.tsv", "sample\tcounts\tbatch\nr1\tcounts/r1.h5ad\tb1\n")
    write(tmp_path, "pictures/m1.tif", "this is a note, not an image\n")
    write(tmp_path, "lists/img.tsv", "sample\timage\nm1\tpictures/m1.tif\n")
    write(tmp_path, "site/partitions.yaml", BAD_PARTITIONS)
    write_project(
        tmp_path,
        {
            "gpu": {"partitions": "site/partitions.yaml", "needs": ""},
            "genomics": {
                "samples": "lists/dna.tsv",
                "reference": "genome/chrZ.fa",
                "basecall": {"modle": "sup"},
                "variant_effects": {"enabled": False},
            },
            "transcriptomics": {"samples": "lists/rna.tsv", "cluster": {"seed": -1}},
            "imaging": {"samples": "lists/img.tsv", "segmentation": {"model": "cyto3"}},
        },
    )

    output = assert_stopped_before_jobs(run_snakemake(tmp_path, "-n", check=False), tmp_path)

    expected = [
        "config/config.yaml: unknown key 'genomics.basecall.modle'; did you mean 'model'?",
        "config/config.yaml: key 'transcriptomics.cluster.seed' = -1 is out of range",
        "lists/dna.tsv row 2 (line 3, sample 'd7'): duplicate sample name, already used in row 1",
        "lists/rna.tsv row 1 (line 2, sample 'r1'): counts 'counts/r1.h5ad' does not exist",
        "lists/img.tsv row 1 (line 2, sample 'm1'): image 'pictures/m1.tif': not a TIFF file",
        "site/partitions.yaml: partition 'lab-gpus': ",
    ]
    lines = problem_lines(output)
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)
    assert "warpcore9" in next(line for line in lines if "lab-gpus" in line)
    assert len(lines) == len(expected), lines
    assert f"gpubio: {len(expected)} problem(s) in the configuration" in output


def test_input_headers_of_every_module_are_checked_together(tmp_path):
    """No config or sheet mistakes: each module's own checks (BAM, count file and TIFF headers)
    and the site check all run, and all their lines come out together."""
    rng = np.random.default_rng(5)
    write_reference(tmp_path, "ref/mini.fa", rng)
    write(tmp_path, "in/fake.bam", "@HD\tVN:1.6\n(a SAM text file named .bam)\n")
    write(tmp_path, "dna.tsv", "sample\tplatform\tbam\nb_1\tillumina\tin/fake.bam\n")
    write(tmp_path, "in/cells.h5ad", "gene,cell\nA,1\n")
    write(tmp_path, "rna.tsv", "sample\tcounts\tbatch\nc-1\tin/cells.h5ad\tb\n")
    tifffile.imwrite(tmp_path / "in/good.tif", rng.integers(0, 255, (24, 24), dtype=np.uint8))
    write(tmp_path, "in/bad.tif", "II*\x00 cut short")
    write(tmp_path, "img.tsv", "sample\timage\ng.1\tin/good.tif\nb.2\tin/bad.tif\n")
    write(tmp_path, "partitions.yaml", BAD_PARTITIONS)
    write_project(
        tmp_path,
        {
            "gpu": {"partitions": "partitions.yaml", "needs": ""},
            "genomics": {"samples": "dna.tsv", "reference": "ref/mini.fa", "variant_effects": {"enabled": False}},
            "transcriptomics": {"samples": "rna.tsv"},
            "imaging": {"samples": "img.tsv", "segmentation": {"model": "nuclei"}},
        },
    )

    output = assert_stopped_before_jobs(run_snakemake(tmp_path, "-n", check=False), tmp_path)

    lines = problem_lines(output)
    wheres = [
        "dna.tsv row 1 (line 2, sample 'b_1'): bam 'in/fake.bam'",
        "rna.tsv: sample c-1: counts 'in/cells.h5ad'",
        "img.tsv row 2 (line 3, sample 'b.2'): image 'in/bad.tif'",
        "partitions.yaml: partition 'lab-gpus'",
    ]
    for where in wheres:
        assert sum(where in line for line in lines) == 1, (where, lines)
    assert not any("good.tif" in line for line in lines)
    assert len(lines) == len(wheres), lines


@pytest.mark.parametrize("section", ["transcriptomics", "imaging"])
def test_settings_have_every_default_when_a_module_is_off(section):
    """Rules read settings objects, never .get() chains: a module that is off still has
    every schema default (read from the schema files themselves here)."""
    import yaml

    from gpubio.config import SCHEMA_DIR, section_settings

    schema = yaml.safe_load((SCHEMA_DIR / f"config.{section}.schema.yaml").read_text())
    settings = section_settings({}, section)

    def walk(node: dict, values: dict, where: str) -> int:
        checked = 0
        for key, sub in node.get("properties", {}).items():
            assert key in values or ("default" not in sub and sub.get("type") != "object"), f"{where}{key}"
            if "default" in sub:
                assert values[key] == sub["default"], f"{where}{key}"
                checked += 1
            elif sub.get("type") == "object":
                checked += walk(sub, values[key], f"{where}{key}.")
        return checked

    assert walk(schema, settings, f"{section}.") > 10


def test_qc_summary_reads_every_sample_qc_file_of_its_module(tmp_path):
    """Targets are declared once per module; the QC summary's inputs are each sample's
    qc.json, whatever the order of the module's other targets."""
    rng = np.random.default_rng(3)
    for name in ("w 1", "w2"):
        tifffile.imwrite(tmp_path / f"{name}.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    write(tmp_path, "plates.tsv", "sample\timage\nwell-A\tw 1.tif\nwell_B\tw2.tif\n")
    write_project(
        tmp_path,
        {
            "gpu": {"needs": ""},
            "genomics": {"samples": "none.tsv"},
            "transcriptomics": {"samples": "none.tsv"},
            "imaging": {"samples": "plates.tsv", "segmentation": {"model": "nuclei"}},
        },
    )

    proc = run_snakemake(tmp_path, "-n", "-p", "--cores", "1")

    [summary] = [line for line in proc.stdout.splitlines() if "qc-summary --domain" in line]
    words = summary.split(">")[0].split()
    assert words[words.index("--domain") + 1] == "imaging"
    assert words[-2:] == ["results/imaging/well-A/qc.json", "results/imaging/well_B/qc.json"]
    for sample in ("well-A", "well_B"):
        for name in ("qc.json", "masks.tif", "segmentation.json", "cells.tsv", "overlay.png"):
            assert f"results/imaging/{sample}/{name}" in proc.stdout
    assert "registered.tif" not in proc.stdout and "results/genomics" not in proc.stdout


def test_a_module_with_bad_rows_skips_only_its_own_deeper_checks(tmp_path):
    """An unknown platform would break the caller check (it looks the platform up); that
    module's deeper checks are skipped, the other module's header check still runs."""
    from gpubio.config import ConfigError
    from gpubio.startup import start_up

    rng = np.random.default_rng(8)
    write_reference(tmp_path, "g.fa", rng)
    write_fastq(tmp_path, "x.fastq", rng)
    write(tmp_path, "dna.tsv", "sample\tplatform\tfastq_1\nx1\tpacbio\tx.fastq\n")
    write(tmp_path, "stack.tif", "GIF89a")
    write(tmp_path, "img.tsv", "sample\timage\nst\tstack.tif\n")
    config = {
        "gpu": {
            "partitions": str(Path(__file__).resolve().parent.parent / "profiles/slurm-gpu/partitions.yaml"),
            "needs": "",
        },
        "genomics": {"samples": "dna.tsv", "reference": "g.fa", "variant_effects": {"enabled": False}},
        "imaging": {"samples": "img.tsv", "segmentation": {"model": "cyto3"}},
    }
    with pytest.raises(ConfigError) as caught:
        start_up(config, "my.yaml", tmp_path)
    problems = caught.value.problems
    assert len(problems) == 2, problems
    assert problems[0].startswith("dna.tsv row 1 (line 2, sample 'x1'): platform 'pacbio' is not one of")
    assert problems[1].startswith("img.tsv row 1 (line 2, sample 'st'): image 'stack.tif': not a TIFF file")


# --------------------------------------------------------------------------- GPU site and cluster


def run_without_gpus(root: Path, *args: str):
    """The workflow on a machine without GPUs, whatever this one has."""
    import os
    import subprocess

    from conftest import BIN, REPO

    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"} | {"GPUBIO_NUM_GPUS": "0"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(root), *args]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=600)


def test_require_gpu_with_no_module_that_has_gpu_jobs_blames_nothing(tmp_path):
    """gpu.require: true on a machine without GPUs, the genomics sheet only a header: no rule of
    genomics runs, so none is blamed; a module with GPU jobs is named, its rule only, before
    the first job."""
    write(tmp_path, "sheets/dna.tsv", "# no samples yet\nsample\tplatform\tfastq_1\n")
    write_project(tmp_path, {"gpu": {"require": True, "needs": ""}, "genomics": {"samples": "sheets/dna.tsv"}})

    dry = run_without_gpus(tmp_path, "-n", "--cores", "1")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "gpu.require" not in dry.stdout + dry.stderr and "basecall" not in dry.stdout + dry.stderr

    rng = np.random.default_rng(2)
    tifffile.imwrite(tmp_path / "cells.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    write(tmp_path, "sheets/img.tsv", "sample\timage\nwell1\tcells.tif\n")
    write_project(
        tmp_path,
        {
            "gpu": {"require": True, "needs": ""},
            "genomics": {"samples": "sheets/dna.tsv"},
            "imaging": {"samples": "sheets/img.tsv", "segmentation": {"model": "nuclei"}},
        },
    )
    run = run_without_gpus(tmp_path, "--cores", "1")
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Traceback" not in output
    lines = problem_lines(output)
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("rule 'segment_cells': gpu.require is true but this machine cannot run")
    assert lines[0].endswith("(1 job of this run)")
    assert not (tmp_path / "results").exists()


def write_genomics_project(root: Path, partitions: dict) -> None:
    """One FASTQ sample, placed by the cluster's partitions file (gpu.site: cluster)."""
    import yaml

    rng = np.random.default_rng(4)
    write_reference(root, "ref.fa", rng)
    write_fastq(root, "r1.fq", rng)
    write(root, "dna.tsv", "sample\tplatform\tfastq_1\ns1\tillumina\tr1.fq\n")
    write(root, "site.yaml", yaml.safe_dump({"partitions": partitions}))
    write_project(
        root,
        {
            "gpu": {"partitions": "site.yaml", "site": "cluster", "needs": ""},
            "genomics": {"samples": "dna.tsv", "reference": "ref.fa", "variant_effects": {"enabled": False}},
        },
    )


def test_cluster_without_a_cpu_partition_says_where_cpu_jobs_go(tmp_path):
    """T4 and A100 partitions, no CPU one (every CPU job went to gpu-a100, the fewest GPUs):
    CPU jobs take the cheapest GPUs, and start-up says so and why."""
    from gpubio.gpu.plan import parse_dry_run

    write_genomics_project(
        tmp_path,
        {
            "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100"]},
            "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"]},
        },
    )
    proc = run_without_gpus(tmp_path, "-n", "--cores", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [job for job in parse_dry_run(proc.stdout) if job.rule != "all"]
    assert jobs and {job.resources["slurm_partition"] for job in jobs} == {"gpu-t4"}
    assert "has no partition without GPUs (max_gpu: 0), so CPU jobs go to 'gpu-t4'" in proc.stderr


def test_cluster_cpu_partition_smaller_than_a_job_refuses_it_before_the_first_job(tmp_path):
    write_genomics_project(
        tmp_path,
        {
            "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"], "max_cpus_per_task": 32},
            "cpu": {"max_gpu": 0, "max_cpus_per_task": 2},
        },
    )
    proc = run_without_gpus(tmp_path, "--cores", "4")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output
    [line] = problem_lines(output)
    assert line.startswith("rule 'align_mappy': no partition without GPUs in ")
    assert "'cpu' allows max_cpus_per_task 2" in line and line.endswith("(1 job of this run)")
    assert not (tmp_path / "results").exists()
    # capped at the partition's CPUs, the same jobs run there
    dry = run_without_gpus(tmp_path, "-n", "--cores", "4", "--max-threads", "2")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "slurm_partition=gpu-t4" not in dry.stdout


def test_a_partition_without_gpus_that_lists_gpu_models_is_refused_at_start_up(tmp_path):
    from gpubio.config import ConfigError
    from gpubio.startup import start_up

    write(
        tmp_path,
        "site/partitions.yaml",
        "partitions:\n  gpu-t4: {max_gpu: 8, available_gpu_models: [t4]}\n"
        "  bigmem: {max_gpu: 0, available_gpu_models: [t4], max_mem_mb: 2000000}\n",
    )
    with pytest.raises(ConfigError) as caught:
        start_up({"gpu": {"partitions": "site/partitions.yaml", "needs": ""}}, "my.yaml", tmp_path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{tmp_path / 'site/partitions.yaml'}: partitions['bigmem']: max_gpu is 0 but")

"""A killed job leaves nothing behind: half-written temporaries go on the next write, and a
run after an interrupted one restores every output the workflow documents."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from conftest import BIN, REPO, run_snakemake
from gpubio.atomic import atomic_path
from test_shell_safety import write_config, write_genomics


def kill_mid_write(path: Path) -> None:
    """A process that starts writing `path` through atomic_path and is SIGKILLed halfway."""
    code = textwrap.dedent(f"""\
        import os, signal
        from gpubio.atomic import atomic_path
        with atomic_path({str(path)!r}) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half of a ")
                fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "out" / "table.tsv"
    kill_mid_write(target)
    [first] = [p.name for p in target.parent.iterdir()]
    kill_mid_write(target)  # the second attempt removed the first one's leftover
    [second] = [p.name for p in target.parent.iterdir()]
    assert first != second and all(n.startswith(".table.tmp") and n.endswith(".tsv") for n in (first, second))
    assert (target.parent / second).read_text() == "half of a " and not target.exists()
    # neighbours: another output's temporary, a similar but different name, the stem alone
    others = [".table2.tmp12.tsv", ".table.tmp12.json", "table.tmp12.tsv", ".table.tsv"]
    for name in others:
        (target.parent / name).write_text("keep")
    (target.parent / ".table.tmp7.tsv").mkdir()  # a directory output's leftover
    (target.parent / ".table.tmp7.tsv" / "part").write_text("x")

    with atomic_path(target) as tmp:
        Path(tmp).write_text("whole\n")

    assert target.read_text() == "whole\n"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted(["table.tsv", *others])


def test_a_run_after_an_interrupted_forcerun_restores_every_output_and_leaves_no_temporaries(tmp_path):
    write_genomics(tmp_path, np.random.default_rng(11), "ref.fa", "reads", ("r1.fq", "r2.fq"))
    (tmp_path / "sheets").mkdir()
    (tmp_path / "sheets" / "genomics.tsv").write_text(
        "sample\tplatform\tfastq_1\tfastq_2\nsA\tillumina\treads/r1.fq\treads/r2.fq\n"
    )
    write_config(
        tmp_path,
        {"genomics": {"samples": "sheets/genomics.tsv", "reference": "ref.fa", "variant_effects": {"enabled": False}}},
    )
    args = ("--configfile", "config/config.yaml", "config/test.yaml", "--cores", "1")
    run_snakemake(tmp_path, *args)
    results = tmp_path / "results"
    partitions = results / "gpu_plan.partitions.tsv"
    expected = partitions.read_text()
    assert expected.startswith("partition")
    qc_time = (results / "genomics" / "sA" / "qc.json").stat().st_mtime

    # an output no other job reads, gone (as when a job dies between writing its outputs),
    # next to what a writer killed mid-way leaves
    partitions.unlink()
    (results / ".gpu_plan.partitions.tmp4243.tsv").write_text("half")
    run_snakemake(tmp_path, *args)
    assert partitions.read_text() == expected
    assert sorted(str(p.relative_to(tmp_path)) for p in results.rglob(".*.tmp*")) == []

    # force the plan again and kill Snakemake (and its job) once the old outputs are gone
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        *args,
        "--forcerun",
        "gpu_plan",
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 300
        while partitions.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert not partitions.exists(), "the forced job never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # what a writer killed mid-way leaves, whether or not this kill hit one
    (results / ".gpu_plan.tmp4242.tsv").write_text("half")
    (results / ".gpu_plan.partitions.tmp4243.tsv").write_text("half")

    locked = run_snakemake(tmp_path, *args, check=False)
    if locked.returncode != 0:  # the kill can leave Snakemake's lock: the README says to --unlock
        assert "--unlock" in locked.stderr, locked.stderr
        run_snakemake(tmp_path, *args, "--unlock")
        run_snakemake(tmp_path, *args)

    assert partitions.read_text() == expected
    assert sorted(str(p.relative_to(tmp_path)) for p in results.rglob(".*.tmp*")) == []
    assert (results / "genomics" / "sA" / "qc.json").stat().st_mtime == qc_time  # nothing else reran
    assert json.loads((results / "genomics" / "sA" / "qc.json").read_text())["mapped_fraction"] == 1.0


def test_every_documented_output_is_a_target(workdir):
    proc = run_snakemake(workdir, "-n", "--cores", "2")
    [targets] = re.findall(r"^(?:local)?rule all:\n    input: (.*)$", proc.stdout, re.M)
    targets = set(targets.split(", "))
    documented = {
        "results/gpu_plan.tsv",
        "results/gpu_plan.partitions.tsv",
        "results/genomics/ont1/coverage.tsv",
        "results/genomics/illu1/coverage.tsv",
        "results/transcriptomics/pbmc1/filtered.h5ad",
        "results/transcriptomics/integrated.h5ad",
        "results/transcriptomics/annotation/celltypist.tsv",
        "results/transcriptomics/annotation/scanvi.tsv",
        "results/imaging/model/cellpose_trained",
        "results/imaging/model/training.json",
        "results/imaging/model/validation.tsv",
        "results/imaging/model/training.png",
        "results/imaging/segmentation_summary.tsv",
        "results/imaging/nuclei1/registered.tif",
        "results/imaging/nuclei1/transform.json",
        "results/imaging/nuclei1/checkerboard.png",
        "results/imaging/nuclei1/masks.tif",
        "results/imaging/nuclei2/segmentation.json",
    }
    assert documented - targets == set()
    # registration outputs only for the sample that has a reference image
    assert not any(t.startswith("results/imaging/nuclei2/registered") for t in targets)


def test_a_training_run_removes_the_working_folder_a_killed_training_left(tmp_path):
    """The Cellpose training step works in a folder beside its model; a kill leaves it
    (with every checkpoint), and the next training of the same model removes it."""
    import tifffile

    rng = np.random.default_rng(3)
    images = tmp_path / "train"
    images.mkdir()
    yy, xx = np.mgrid[:64, :64]
    masks = np.zeros((64, 64), np.uint16)
    for label, (y, x) in enumerate([(16, 16), (20, 46), (46, 22), (44, 48)], start=1):
        masks[(yy - y) ** 2 + (xx - x) ** 2 < 36] = label
    image = (masks > 0) * 200 + rng.integers(0, 30, (64, 64))
    tifffile.imwrite(images / "a.tif", image.astype(np.uint8))
    tifffile.imwrite(images / "a_masks.tif", masks)
    out = tmp_path / "model" / "cellpose_trained"
    leftover = out.parent / ".cellpose_trained.train4242"  # what a training killed as pid 4242 left
    (leftover / "models").mkdir(parents=True)
    (leftover / "models" / "cellpose_trained_epoch_0001").write_bytes(b"\0" * 1024)
    keep = out.parent / ".cellpose_trained.notes"  # a neighbour that is not a training folder
    keep.write_text("keep")

    cmd = [sys.executable, "-m", "gpubio", "train-cellpose", "--images", str(images), "--channels", "0", "0"]
    cmd += ["--steps", "1", "--crop-size", "64", "--batch-size", "1", "--out", str(out)]
    proc = subprocess.run(cmd + ["--out-json", str(tmp_path / "training.json")], capture_output=True, text=True)

    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and out.stat().st_size > 0
    assert sorted(p.name for p in out.parent.iterdir()) == [".cellpose_trained.notes", "cellpose_trained"]


def troubleshooting() -> str:
    readme = (REPO / "README.md").read_text()
    return readme.split("\n## Troubleshooting\n", 1)[1].split("\n## ", 1)[0]


def test_after_kill_9_the_next_run_says_how_to_resume_and_the_readme_explains_it(tmp_path):
    """A run killed with SIGKILL leaves its jobs marked incomplete and Snakemake's lock; each
    next try names its flag (--rerun-incomplete without a profile, then --unlock), the
    README's troubleshooting explains both, and following it completes the run."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text('gpu: {needs: ""}\n')
    # every module is off, so the run's one job is the GPU plan, asked for by name
    target = "results/gpu_plan.tsv"
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores", "1", target]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / ".snakemake" / "incomplete").is_dir() or not any(
            (tmp_path / ".snakemake" / "incomplete").iterdir()
        ):
            assert time.monotonic() < deadline and proc.poll() is None, "no job started"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # an output the killed job had begun to write (a tool writing its file directly does so);
    # Snakemake's marker of a running job's output is its path in base64
    import base64

    marker = next((tmp_path / ".snakemake" / "incomplete").iterdir())
    begun = tmp_path / base64.b64decode(marker.name).decode()
    begun.parent.mkdir(parents=True, exist_ok=True)
    begun.write_text("half")
    text = troubleshooting()

    incomplete = run_snakemake(tmp_path, "--cores", "1", target, check=False)
    assert incomplete.returncode != 0 and "--rerun-incomplete" in incomplete.stderr
    assert "IncompleteFilesException" in incomplete.stderr and "IncompleteFilesException" in text
    locked = run_snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", target, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stderr
    assert "Directory cannot be locked" in locked.stderr and "Directory cannot be locked" in text
    assert "--unlock" in text and "--rerun-incomplete" in text
    run_snakemake(tmp_path, "--unlock")

    run_snakemake(tmp_path, "--cores", "1", "--rerun-incomplete", target)
    assert begun.read_text() != "half" and begun.stat().st_size > 0
    assert (tmp_path / "results" / "gpu_plan.tsv").read_text().startswith("rule\tsample\twildcards")

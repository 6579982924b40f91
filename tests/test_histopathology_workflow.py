"""The histopathology module through Snakemake, on its own (the other modules off): two
synthetic slides (one stating its resolution, one given it in the sheet) and a tiny model
trained on the planted textures; the embedding job's GPU placement in the cluster
profile's dry-run; one-line refusals at start-up and inside a job."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake
from independent.histopathology import expected_tiles, level0, region_of, write_slide
from tiny_vlm import CLASSES, REGION_CLASS, write_tiny_model

pytestmark = pytest.mark.e2e

SLURM_GPU = str(REPO / "profiles" / "slurm-gpu")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """slides/with_mpp.tif (0.25 µm/px in its tags), slides/no_mpp.tif (none), models/tiny."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("histo-inputs")
    (root / "slides").mkdir()
    write_slide(root / "slides" / "with_mpp.tif", seed=0)
    write_slide(root / "slides" / "no_mpp.tif", seed=1, resolution=False)
    write_tiny_model(root / "models" / "tiny", level0(0))
    return root


def histopathology_project(root: Path, inputs: Path, rows: list[str], **section) -> Path:
    """A project with only the histopathology module; `rows` are sheet lines after the header."""
    (root / "config").mkdir(parents=True)
    for name in ("slides", "models"):
        (root / name).symlink_to(inputs / name)
    settings = {
        "samples": "config/histopathology.tsv",
        "model": "models/tiny",
        "tiling": {"magnification": 20, "tile_size": 224, "min_tissue_fraction": 0.6},
        "embedding": {"batch_size": 8},
        "classes": CLASSES,
    }
    settings.update(section)
    config = {"gpu": {"partitions": str(REPO / "profiles/slurm-gpu/partitions.yaml")}, "histopathology": settings}
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # classes in their order
    (root / "config" / "histopathology.tsv").write_text("\n".join(["sample\tslide\tmpp", *rows]) + "\n")
    return root


@pytest.fixture(scope="module")
def run(inputs, tmp_path_factory) -> Path:
    root = histopathology_project(
        tmp_path_factory.mktemp("histo-run"),
        inputs,
        ["tagged\tslides/with_mpp.tif\t", "untagged\tslides/no_mpp.tif\t0.25"],
    )
    run_snakemake(root, "--profile", str(REPO / "profiles" / "local"), "--cores", "2", timeout=900)
    return root


def test_embeddings_are_keyed_by_the_planted_tile_grid(run):
    expected = expected_tiles(448, 0.6)  # 224 px at 0.5 µm/px = 448 px at 0.25 µm/px
    assert len(expected) == 23
    for sample, source in (("tagged", "file"), ("untagged", "sheet")):
        adata = ad.read_h5ad(run / f"results/histopathology/{sample}/embeddings.h5ad")
        assert adata.shape == (23, 16) and adata.X.dtype == np.float32 and np.isfinite(adata.X).all()
        assert list(zip(adata.obs["x"], adata.obs["y"])) == [(x, y) for x, y, _ in expected]
        assert list(adata.obs_names[:2]) == [f"{expected[0][0]}_{expected[0][1]}", f"{expected[1][0]}_{expected[1][1]}"]
        assert adata.obs["tissue_fraction"].to_numpy() == pytest.approx([f for _, _, f in expected], abs=0.02)
        assert set(adata.obs["level"]) == {0}
        assert len({tuple(v) for v in adata.X.round(4)}) == 23  # every tile its own embedding
        summary = json.loads((run / f"results/histopathology/{sample}/tissue.json").read_text())
        assert summary["mpp"] == pytest.approx(0.25) and summary["mpp_source"] == source
        assert summary["tiles"] == 23 and summary["tile_size_level0"] == 448 and summary["read_level"] == 0
        tiles = pd.read_csv(run / f"results/histopathology/{sample}/tiles.tsv", sep="\t")
        assert list(zip(tiles["x"], tiles["y"])) == [(x, y) for x, y, _ in expected]
    log = (run / "logs/histopathology/tagged/embed_tiles.log").read_text()
    assert "tile embedding on the CPU: no GPU found on this node" in log and "embedded 23 tiles" in log
    record = json.loads((run / "benchmarks/histopathology/tagged/embed_tiles.gpu.json").read_text())
    assert (record["rule"], record["backend"]) == ("embed_tiles", "cpu")


def test_zero_shot_labels_find_the_planted_textures_and_fractions_sum_to_1(run):
    fractions = pd.read_csv(run / "results/histopathology/class_fractions.tsv", sep="\t")
    assert list(fractions.columns) == ["sample", "tiles", "tumor", "stroma"]
    assert list(fractions["sample"]) == ["tagged", "untagged"] and list(fractions["tiles"]) == [23, 23]
    assert (fractions["tumor"] + fractions["stroma"]).to_numpy() == pytest.approx([1.0, 1.0])
    for sample, row in zip(fractions["sample"], fractions.itertuples()):
        labels = pd.read_csv(run / f"results/histopathology/{sample}/labels.tsv", sep="\t")
        assert (labels["p_tumor"] + labels["p_stroma"]).to_numpy() == pytest.approx(np.ones(23), abs=1e-5)
        assert ((labels["p_tumor"] > 0.5) == (labels["label"] == "tumor")).all()
        truth = [REGION_CLASS[region_of(x, y, 448)] for x, y in zip(labels["x"], labels["y"])]
        assert (labels["label"] == truth).mean() >= 0.9
        assert row.tumor == pytest.approx((labels["label"] == "tumor").mean())
        assert abs(row.tumor - 12 / 23) <= 2 / 23  # 12 tiles of planted nuclei, 11 of fibres
        assert (run / f"results/histopathology/{sample}/heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert (run / "results/histopathology/class_fractions.png").read_bytes()[:4] == b"\x89PNG"
    run_snakemake(run, "--report", "results/report.html")
    html = (run / "results/report.html").read_text(errors="replace")
    for name in ("heatmap.png", "class_fractions.png", "class_fractions.tsv", "Zero-shot tile labels of slide"):
        assert name in html, name


def _job_resources(dry_run: str, rule: str) -> list[dict]:
    """The resources of each job of `rule` in `snakemake -n` output."""
    found = []
    for block in dry_run.split("\n\n"):
        if re.search(rf"^(local)?rule {rule}:", block, re.M):
            line = re.search(r"^\s+resources: (.*)$", block, re.M).group(1)
            found.append(dict(kv.split("=", 1) for kv in re.split(r", (?=\w+=)", line)))
    return found


def test_cluster_dry_run_places_the_embedding_job_on_a_gpu_by_batch_size(inputs, tmp_path):
    # CONCH as released (no model config: the published ViT-B/16 at 448 px); a dry-run reads no weights
    conch = tmp_path / "conch"
    conch.mkdir()
    (conch / "pytorch_model.bin").write_bytes(b"")
    (conch / "conch_byte_level_bpe_uncased.json").write_text("{}")
    placed = {}
    for batch in (64, 512):
        root = histopathology_project(
            tmp_path / f"b{batch}",
            inputs,
            ["tagged\tslides/with_mpp.tif\t"],
            model=str(conch),
            embedding={"batch_size": batch},
        )
        proc = run_snakemake(root, "-n", "-p", "--profile", SLURM_GPU, "--sdm", "env-modules")
        (embed,) = _job_resources(proc.stdout, "embed_tiles")
        placed[batch] = embed
        assert f"--batch-size {batch}" in proc.stdout
        for rule in ("tile_slide", "zero_shot_labels", "slide_fractions"):
            assert [job["slurm_partition"] for job in _job_resources(proc.stdout, rule)] == ["cpu"], rule
    # ~1.8 GB of weights and context, ~59 MB of activations per 448 px tile: 64 fit a T4 (16 GB), 512 do not
    assert (placed[64]["gpu"], placed[64]["gpu_model"], placed[64]["slurm_partition"]) == ("1", "t4", "gpu-t4")
    assert 5 <= float(placed[64]["vram_gb"]) <= 7
    assert (placed[512]["gpu_model"], placed[512]["slurm_partition"]) == ("a100", "gpu-a100")
    assert 28 <= float(placed[512]["vram_gb"]) <= 36


def _refusal(root: Path) -> list[str]:
    proc = run_snakemake(root, "-n", check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out
    return [line.strip() for line in out.splitlines() if line.strip().startswith("config/")]


def test_missing_and_non_tiff_slides_are_refused_with_one_line_each(inputs, tmp_path):
    rows = ["gone\tslides/gone.svs\t", "text\tnotes.svs\t", "fine\tslides/with_mpp.tif\t"]
    root = histopathology_project(tmp_path, inputs, rows)
    (root / "notes.svs").write_text("sample notes, not a slide\n")
    # the sheet's paths are checked first; the files' headers once every path exists
    assert _refusal(root) == [
        "config/histopathology.tsv row 1 (line 2, sample 'gone'): slide 'slides/gone.svs' does not exist; "
        "fix the path (relative paths are from the working directory)",
    ]
    (root / "config" / "histopathology.tsv").write_text("\n".join(["sample\tslide\tmpp", *rows[1:]]) + "\n")
    assert _refusal(root) == [
        "config/histopathology.tsv row 1 (line 2, sample 'text'): slide 'notes.svs': not a TIFF file "
        "(it starts with 'samp'); give an SVS, pyramidal TIFF or OME-TIFF slide",
    ]


def test_a_slide_without_resolution_needs_the_sheet_mpp(inputs, tmp_path):
    root = histopathology_project(tmp_path, inputs, ["bare\tslides/no_mpp.tif\t"])
    (line,) = _refusal(root)
    assert line.startswith("config/histopathology.tsv row 1 (line 2, sample 'bare'): slide 'slides/no_mpp.tif': ")
    assert "add it in the sheet's 'mpp' column" in line


def test_bad_config_is_refused_with_one_line_each(inputs, tmp_path):
    root = histopathology_project(
        tmp_path, inputs, ["tagged\tslides/with_mpp.tif\t"], classes={}, tiling={"tile_size": 100}
    )
    assert _refusal(root) == [
        "config/config.yaml: key 'histopathology.tiling.tile_size' = 100 is out of range "
        "(100 is less than the minimum of 224)"
    ]
    (root / "config" / "config.yaml").write_text(
        (root / "config" / "config.yaml").read_text().replace("tile_size: 100", "tile_size: 448")
    )
    lines = _refusal(root)
    assert len(lines) == 1 and lines[0].startswith(
        "config/config.yaml: histopathology.classes has 0 class(es); zero-shot labels need at least two"
    )
    model_less = histopathology_project(tmp_path / "m", inputs, ["tagged\tslides/with_mpp.tif\t"], model="models/none")
    assert _refusal(model_less) == [
        "config/config.yaml: histopathology.model: models/none: missing pytorch_model.bin, "
        "conch_byte_level_bpe_uncased.json; a CONCH directory holds pytorch_model.bin (Hugging Face "
        "MahmoodLab/CONCH) and conch_byte_level_bpe_uncased.json (the CONCH code), see README, Histopathology"
    ]


def test_a_slide_without_tissue_fails_its_job_with_one_line(tmp_path):
    import tifffile

    blank = tmp_path / "blank.tif"
    tifffile.imwrite(
        blank,
        np.full((512, 512, 3), 244, np.uint8),
        photometric="rgb",
        tile=(256, 256),
        resolution=(4e4, 4e4),
        resolutionunit="CENTIMETER",
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "tile-slide",
            str(blank),
            "--out-tiles",
            str(tmp_path / "t.tsv"),
            "--out-mask",
            str(tmp_path / "m.tif"),
            "--out-json",
            str(tmp_path / "t.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"gpubio: tile-slide: {blank}: no tile has tissue on >= 0.5 of its area; "
        "check the slide, or lower histopathology.tiling.min_tissue_fraction / tissue.min_saturation"
    )
    assert not (tmp_path / "t.tsv").exists()


def test_slide_and_model_paths_reach_the_commands_as_single_words(inputs, tmp_path):
    root = histopathology_project(tmp_path, inputs, ["odd\todd dir/my $slide;.tif\t0.25"], model="odd dir/tiny model")
    (root / "odd dir").mkdir()
    (root / "odd dir" / "my $slide;.tif").symlink_to(inputs / "slides" / "with_mpp.tif")
    (root / "odd dir" / "tiny model").symlink_to(inputs / "models" / "tiny")
    commands = run_snakemake(root, "-n", "-p").stdout
    lines = {
        rule: next(line for line in commands.splitlines() if f" {rule} " in line)
        for rule in ("tile-slide", "embed-tiles", "zero-shot-labels")
    }
    for line in lines.values():
        assert "'odd dir/my $slide;.tif' --mpp 0.25" in line or "'odd dir/my $slide;.tif' results/" in line, line
    assert "--model 'odd dir/tiny model'" in lines["embed-tiles"]
    assert (
        "--class tumor 'an H&E image of tumor tissue with dense purple nuclei' 'an image of tumor'"
        in lines["zero-shot-labels"]
    )

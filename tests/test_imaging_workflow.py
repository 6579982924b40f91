"""The imaging module in the demo run, against the planted truth: the trained model's masks
(AP at IoU 0.5), registration (NCC, the planted transform), per-cell features, figures in
the report, GPU placement; tiled = untiled cell count and a blank image with the demo model;
clear errors for bad models before and during a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from conftest import run_snakemake
from gpubio.imaging.metrics import average_precision

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def demo(demo_data) -> Path:
    return demo_data / "resources" / "demo" / "imaging"


@pytest.fixture(scope="module")
def truth(demo) -> dict:
    return json.loads((demo / "truth.json").read_text())


@pytest.fixture(scope="module")
def model(demo_run) -> Path:
    return demo_run / "results/imaging/model/cellpose_trained"


def test_trained_demo_model_segments_with_ap_above_0_8(demo_run, demo, truth, model):
    training = json.loads((demo_run / "results/imaging/model/training.json").read_text())
    # 8 images of 12 nuclei: the last 20 % of each is held out (a nucleus cut by the strip counts on both sides)
    held = training["validation"]["objects"]
    assert len(training["images"]) == 8 and 0 < held < training["objects"] and training["objects"] + held >= 8 * 12
    assert training["cellpose_version"].startswith("3.")
    assert training["losses"][-1] < training["losses"][0] / 5
    # judged on the held-out strips: above the classical baseline, no warning
    scores = {row["model"]: row for row in training["scores"]}
    assert scores["trained"]["ap_50"] >= max(0.8, scores["otsu_watershed"]["ap_50"])
    assert training["warnings"] == []
    assert model.stat().st_size > 1e6  # a real Cellpose network, trained here, nothing downloaded
    # nuclei1 is segmented after registration: its truth is the masks on the reference grid
    for sample, truth_masks in (("nuclei1", "nuclei1_reference_masks.tif"), ("nuclei2", "nuclei2_masks.tif")):
        masks = tifffile.imread(demo_run / f"results/imaging/{sample}/masks.tif")
        result = average_precision(tifffile.imread(demo / truth_masks), masks)
        assert result["ap"] >= 0.8, (sample, result)
        summary = json.loads((demo_run / f"results/imaging/{sample}/segmentation.json").read_text())
        assert summary["cells"] == len(np.unique(masks)) - 1 and summary["device"] == "cpu"
    assert truth["nuclei1"]["cells"] == 40
    log = (demo_run / "logs/imaging/nuclei2/segment_cells.log").read_text()
    assert (
        "Cellpose segmentation on the CPU: no GPU found" in log
        and "model file results/imaging/model/cellpose_trained" in log
    )


def test_registration_recovers_the_planted_transform(demo_run, demo, truth):
    result = json.loads((demo_run / "results/imaging/nuclei1/transform.json").read_text())
    planted = truth["nuclei1"]["reference_transform"]
    assert result["method"] == "elastix" and result["transforms"] == ["EulerTransform", "BSplineTransform"]
    assert result["ncc_before"] < 0.5 and result["ncc_after"] >= 0.95
    assert result["rigid"]["rotation_deg"] == pytest.approx(planted["rotation_deg"], abs=0.2)
    assert result["rigid"]["translation_rc"] == pytest.approx(planted["translation_rc"], abs=0.3)
    registered = tifffile.imread(demo_run / "results/imaging/nuclei1/registered.tif")
    reference = tifffile.imread(demo / "nuclei1_reference.tif")
    assert registered.shape == reference.shape and registered.dtype == np.uint16
    assert not (demo_run / "results/imaging/nuclei2/transform.json").exists()  # no reference: no registration


def test_cell_tables_and_figures(demo_run, truth):
    for sample in ("nuclei1", "nuclei2"):
        cells = pd.read_csv(demo_run / f"results/imaging/{sample}/cells.tsv", sep="\t")
        masks = tifffile.imread(demo_run / f"results/imaging/{sample}/masks.tif")
        assert list(cells.columns) == [
            "sample",
            "cell",
            "area",
            "centroid_row",
            "centroid_col",
            "eccentricity",
            "mean_ch1",
            "mean_ch2",
        ]
        assert set(cells["sample"]) == {sample} and len(cells) == len(np.unique(masks)) - 1
        assert abs(len(cells) - truth[sample]["cells"]) <= 3
        assert cells["eccentricity"].between(0, 1).all() and (cells["mean_ch1"] > 2 * cells["mean_ch2"]).all()
        assert cells["area"].median() == pytest.approx(np.pi * 8**2, rel=0.35)  # radii 6-10 px planted
        assert (demo_run / f"results/imaging/{sample}/overlay.png").read_bytes()[:4] == b"\x89PNG"
    assert (demo_run / "results/imaging/nuclei1/checkerboard.png").read_bytes()[:4] == b"\x89PNG"
    html = (demo_run / "results/report.html").read_text(errors="replace")
    for name in ("overlay.png", "checkerboard.png", "cells.tsv", "training.png", "validation.tsv"):
        assert name in html, name
    summary = pd.read_csv(demo_run / "results/imaging/segmentation_summary.tsv", sep="\t", keep_default_na=False)
    assert list(summary["sample"]) == ["nuclei1", "nuclei2"] and (summary["cells"] > 30).all()
    assert (summary["warning"] == "").all()


def test_gpu_steps_are_placed_on_gpus_and_ran_on_the_cpu_path(demo_run):
    plan = pd.read_csv(demo_run / "results/gpu_plan.tsv", sep="\t", keep_default_na=False)
    placed = plan.groupby("rule")["partition"].first().to_dict()
    for rule in ("segment_cells", "train_cellpose"):
        assert placed[rule].startswith("gpu-"), (rule, placed[rule])
    assert placed["register_image"] == "cpu" and placed["cell_features"] == "cpu"  # elastix: CPU
    log = (demo_run / "logs/imaging/train_cellpose.log").read_text()
    assert "Cellpose training on the CPU: no GPU found" in log and "from scratch" in log


def test_tiled_and_untiled_segmentation_agree_and_a_blank_image_has_no_cells(demo, model, tmp_path):
    import torch

    from gpubio.imaging.cellpose_models import CellposeSegmenter, import_cellpose, resolve_model
    from gpubio.imaging.tiling import segment_file

    torch.set_num_threads(1)
    cellpose = import_cellpose()
    segmenter = CellposeSegmenter(resolve_model(str(model), cellpose), torch.device("cpu"), cellpose=cellpose)
    untiled = segment_file(demo / "nuclei1.tif", tmp_path / "untiled.tif", segmenter, (1, 0), 2048, 32)
    tiled = segment_file(demo / "nuclei1.tif", tmp_path / "tiled.tif", segmenter, (1, 0), 96, 32)
    assert untiled["tiles"] == 1 and tiled["tiles"] == 9
    assert tiled["cells"] == untiled["cells"] == 40
    masks = tifffile.imread(demo / "nuclei1_masks.tif")
    assert average_precision(masks, tifffile.imread(tmp_path / "tiled.tif"))["ap"] >= 0.9

    rng = np.random.default_rng(0)
    blank = np.clip(rng.poisson(400, (2, 200, 200)) + rng.normal(0, 30, (2, 200, 200)), 0, None).astype(np.uint16)
    tifffile.imwrite(tmp_path / "blank.tif", blank, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "flat.tif", np.full((2, 64, 64), 400, np.uint16), metadata={"axes": "CYX"})
    for name in ("blank", "flat"):
        summary = segment_file(tmp_path / f"{name}.tif", tmp_path / f"{name}_masks.tif", segmenter, (1, 0), 2048, 32)
        assert summary["cells"] == 0 and not tifffile.imread(tmp_path / f"{name}_masks.tif").any()
    # and the features step takes zero cells in its stride
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "cell-features",
            str(tmp_path / "blank.tif"),
            str(tmp_path / "blank_masks.tif"),
            "--sample",
            "blank",
            "--out-tsv",
            str(tmp_path / "cells.tsv"),
            "--out-png",
            str(tmp_path / "overlay.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cells.tsv").read_text().splitlines() == [
        "sample\tcell\tarea\tcentroid_row\tcentroid_col\teccentricity\tmean_ch1\tmean_ch2"
    ]


def test_builtin_model_without_weights_fails_with_one_clear_line(demo, tmp_path, monkeypatch):
    import cellpose.models

    from gpubio.cli import main

    monkeypatch.setattr(cellpose.models, "MODEL_DIR", tmp_path / "no-models")
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "segment-cells",
                str(demo / "nuclei2.ome.tif"),
                "--model",
                "cyto3",
                "--out-masks",
                str(tmp_path / "m.tif"),
                "--out-json",
                str(tmp_path / "s.json"),
            ]
        )
    message = str(exit_info.value)
    assert message.startswith("gpubio: segment-cells: cellpose model 'cyto3' needs its weights file 'cyto3'")
    assert "set imaging.segmentation.model to a local model file" in message
    assert not (tmp_path / "m.tif").exists()


def test_bad_imaging_config_stops_before_any_job(workdir):
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["imaging"]["segmentation"]["model"] = "models/missing_model"
    config["imaging"]["registration"]["method"] = "deep"
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "imaging.registration.method" in out and "'deep' is not one of ['elastix', 'learned']" in out
    config["imaging"]["registration"]["method"] = "learned"
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "-n", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "imaging.segmentation.model 'models/missing_model' does not exist" in out


def test_learned_registration_is_a_gpu_job_in_the_dry_run(workdir):
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    config["imaging"]["registration"]["method"] = "learned"
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(workdir, "-n", "-p")
    block = proc.stdout[proc.stdout.index("rule register_image:") :]
    block = block[: block.index("\n\n")]
    assert "gpu=1" in block and "slurm_partition=gpu-" in block
    assert "register-image resources/demo/imaging/nuclei1.tif" in block and "--method learned" in block


def test_learned_registration_command_on_the_cpu_path(demo, truth, tmp_path):
    out = {name: tmp_path / name for name in ("registered.tif", "transform.json", "checkerboard.png")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "--threads",
            "1",
            "--gpus",
            "1",
            "register-image",
            str(demo / "nuclei1.tif"),
            "--reference",
            str(demo / "nuclei1_reference.tif"),
            "--method",
            "learned",
            "--learned-iterations",
            "80",
            "--out-image",
            str(out["registered.tif"]),
            "--out-transform",
            str(out["transform.json"]),
            "--out-png",
            str(out["checkerboard.png"]),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "on the CPU: no GPU found on this node" in proc.stderr
    result = json.loads(out["transform.json"].read_text())
    planted = truth["nuclei1"]["reference_transform"]
    assert result["method"] == "learned" and result["device"] == "cpu"
    assert result["ncc_after"] >= 0.95 > 0.5 > result["ncc_before"]
    assert result["rigid"]["rotation_deg"] == pytest.approx(planted["rotation_deg"], abs=0.2)
    assert result["rigid"]["translation_rc"] == pytest.approx(planted["translation_rc"], abs=0.3)
    assert tifffile.imread(out["registered.tif"]).shape == (2, 256, 256)
    assert out["checkerboard.png"].read_bytes()[:4] == b"\x89PNG"

"""Cellpose 3 restoration before segmentation: the network applied to the normalised input
(checked against the closed form of a hand-built smoothing network), seamless tiles, the
offline weight rules, start-up refusals, segmentation AP with and without restoration on
heavily noisy cells, and one imaging-only workflow run with restoration on.

Test images come from tests/independent/restoration.py (ellipse cells on an uneven
background, 1 channel of cells + 1 of unrelated texture), not from the demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from independent.restoration import (
    noisy_cells,
    smoothing_network_output,
    write_smoothing_network,
)

INTERIOR = 3  # the network's 3 stacked 3 x 3 convolutions: pixels nearer the border see padding


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smoothing_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("restoration-model") / "smoothing_restore"
    write_smoothing_network(path)
    return path


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    image, labels = noisy_cells(shape=(2, 200, 260), n_cells=25, noise=0.6, seed=3)
    path = tmp_path_factory.mktemp("noisy") / "noisy.tif"
    tifffile.imwrite(path, image, metadata={"axes": "CYX"})
    return path, image, labels


def restorer_for(model_spec: str):
    import torch

    from gpubio.imaging.cellpose_models import import_cellpose
    from gpubio.imaging.restoration import CellposeRestorer, resolve_restoration_model

    cellpose = import_cellpose()
    return CellposeRestorer(resolve_restoration_model(model_spec, cellpose), torch.device("cpu"), cellpose)


def normalised(channel: np.ndarray) -> np.ndarray:
    low, high = np.percentile(channel.astype(np.float64), [1, 99])
    return (channel - low) / (high - low)


def test_restoration_is_the_network_applied_to_the_normalised_input(smoothing_model, noisy, tmp_path):
    from gpubio.imaging.restoration import restore_file

    path, image, labels = noisy
    summary = restore_file(path, tmp_path / "restored.tif", restorer_for(str(smoothing_model)), (1, 0), 1024, 32)
    restored = tifffile.imread(tmp_path / "restored.tif")
    assert restored.shape == (1, 200, 260) and restored.dtype == np.float32 and summary["tiles"] == 1
    x = normalised(image[0])
    expected = smoothing_network_output(x)
    inner = (slice(INTERIOR, -INTERIOR), slice(INTERIOR, -INTERIOR))
    assert np.abs(restored[0][inner] - expected[inner]).max() < 1e-4
    # the smoothing network denoises: background noise falls ~4 fold (binomial 7 x 7: 1 / 4.4)
    background = labels == 0
    assert np.std(x[background]) / np.std(restored[0][background]) > 3.0


def test_tiles_stitch_without_seams_and_a_nuclear_channel_is_restored_too(smoothing_model, noisy, tmp_path):
    from gpubio.imaging.restoration import restore_file

    path, image, _ = noisy
    restorer = restorer_for(str(smoothing_model))
    whole = restore_file(path, tmp_path / "whole.tif", restorer, (1, 2), 1024, 32)
    tiled = restore_file(path, tmp_path / "tiled.tif", restorer, (1, 2), 80, 12)
    assert whole["tiles"] == 1 and tiled["tiles"] == 12  # 3 x 4 tiles of a 200 x 260 image
    a, b = tifffile.imread(tmp_path / "whole.tif"), tifffile.imread(tmp_path / "tiled.tif")
    assert a.shape == b.shape == (2, 200, 260)
    assert np.abs(a - b).max() < 1e-4
    inner = (slice(INTERIOR, -INTERIOR), slice(INTERIOR, -INTERIOR))
    expected_nuclear = smoothing_network_output(normalised(image[1]))
    assert np.abs(b[1][inner] - expected_nuclear[inner]).max() < 1e-4


def test_builtin_names_load_from_cellposes_model_folder_and_never_download(
    smoothing_model, noisy, tmp_path, monkeypatch
):
    import cellpose.models

    from gpubio.cli import main

    path, _, _ = noisy
    monkeypatch.setattr(cellpose.models, "MODEL_DIR", tmp_path / "models")
    (tmp_path / "models").mkdir()
    out = {k: str(tmp_path / f"r.{k}") for k in ("tif", "json", "png")}
    args = [
        "restore-image",
        str(path),
        "--model",
        "denoise_cyto3",
        "--out-image",
        out["tif"],
        "--out-json",
        out["json"],
        "--out-png",
        out["png"],
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value)
    assert message.startswith(
        "gpubio: restore-image: restoration model 'denoise_cyto3' needs its weights file 'denoise_cyto3'"
    )
    assert "\n" not in message and str(tmp_path / "models") in message and "imaging.restoration.model" in message
    assert not Path(out["tif"]).exists()

    shutil.copy(smoothing_model, tmp_path / "models" / "denoise_cyto3")  # weights staged by hand: loads offline
    main(args)
    by_name = tifffile.imread(out["tif"])
    summary = json.loads(Path(out["json"]).read_text())
    assert summary["model"] == f"built-in model 'denoise_cyto3' ({tmp_path / 'models' / 'denoise_cyto3'})"
    from gpubio.imaging.restoration import restore_file

    restore_file(path, tmp_path / "by_path.tif", restorer_for(str(smoothing_model)), (1, 0), 1024, 64)
    assert np.array_equal(by_name, tifffile.imread(tmp_path / "by_path.tif"))
    from PIL import Image

    with Image.open(out["png"]) as figure:
        assert figure.format == "PNG" and figure.size[0] > 1.5 * figure.size[1]  # two panels side by side


def test_start_up_refuses_cellpose_4_unknown_names_and_missing_files(tmp_path):
    from gpubio.imaging.settings import config_problems, imaging_settings

    def problems(model, major=3, **extra):
        settings = imaging_settings(
            {
                "imaging": {
                    "samples": "s.tsv",
                    "segmentation": {"model": "cyto3"},
                    "restoration": {"enabled": True, "model": model, **extra},
                }
            }
        )
        return config_problems(settings, "config.yaml", tmp_path, cellpose_major=major)

    assert problems("denoise_cyto3") == [] and problems("deblur_nuclei") == [] and problems("upsample_cyto3") == []
    (line,) = problems("denoise_cyto3", major=4)
    assert line.startswith(
        "config.yaml: imaging.restoration.model: Cellpose 4 (Cellpose-SAM) has no restoration models"
    )
    (line,) = problems("denoise_cyto4")
    assert "unknown restoration model 'denoise_cyto4'" in line and "denoise_cyto3" in line
    (line,) = problems("models/restore.pth")
    assert "imaging.restoration.model 'models/restore.pth' does not exist" in line
    (tmp_path / "my_restorer").write_bytes(b"x")  # a local file named like nothing built in is fine
    assert problems("my_restorer") == []
    (line,) = problems("denoise_cyto3", tile_size=100, tile_overlap=50)
    assert "imaging.restoration.tile_overlap (50) must be less than half of tile_size (100)" in line
    settings = imaging_settings(
        {"imaging": {"samples": "s.tsv", "restoration": {"enabled": False, "model": "nonsense"}}}
    )
    assert all("restoration" not in p for p in config_problems(settings, "config.yaml", tmp_path, cellpose_major=4))


def test_a_restoration_job_under_cellpose_4_fails_with_one_line(smoothing_model):
    import types

    from gpubio.imaging.cellpose_models import ModelError
    from gpubio.imaging.restoration import resolve_restoration_model

    cellpose4 = types.SimpleNamespace(version="4.0.6", models=types.SimpleNamespace(MODEL_DIR="/nonexistent"))
    for spec in (str(smoothing_model), "denoise_cyto3"):  # neither a file nor a built-in name gets through
        with pytest.raises(
            ModelError, match=r"^Cellpose 4 \(Cellpose-SAM\) has no restoration models; install cellpose 3.x"
        ):
            resolve_restoration_model(spec, cellpose4)


def test_restoration_gpu_need_grows_with_the_tile():
    from gpubio.imaging.resources import restoration_mem_mb, restoration_vram_gb

    # (tile + 2 overlap)^2 pixels x 2.5 kB, + 1.1 GB of CUDA context and weights
    assert restoration_vram_gb(1024, 64) == round(1.1 + 1152**2 * 2500 / 1e9, 1) == 4.4
    assert restoration_vram_gb(2048, 64) == 12.9
    assert restoration_mem_mb(512, 0) == 1000 + int(512**2 * 2500 / 1e6)


# --------------------------------------------------------------------------- segmentation with restoration


@pytest.fixture(scope="module")
def segmentation_model(tmp_path_factory) -> Path:
    """A Cellpose 3 model trained here on clean images of the same kind of cells."""
    import torch

    from gpubio.imaging.cellpose_models import (
        intensity_range,
        network_input,
        select_channels,
        train_model,
    )

    images, labels = [], []
    for seed in range(11, 19):
        image, truth = noisy_cells(shape=(2, 128, 128), n_cells=12, noise=0.05, seed=seed)
        selected = select_channels(image, (1, 0))
        images.append(network_input(selected, intensity_range(selected)))
        labels.append(truth)
    torch.manual_seed(0)
    np.random.seed(0)
    work = tmp_path_factory.mktemp("segmentation-model")
    # cells of one brightness and 80 steps: learning them at three contrasts too would need more steps
    result = train_model(
        images, labels, work, "cells", torch.device("cpu"), steps=80, batch_size=4, crop_size=64, contrast_copies=()
    )
    return Path(result["model"])


def test_segmentation_ap_with_restoration_against_without(
    segmentation_model, smoothing_model, tmp_path, record_property
):
    import torch

    from gpubio.imaging.cellpose_models import (
        CellposeSegmenter,
        import_cellpose,
        resolve_model,
    )
    from gpubio.imaging.metrics import average_precision
    from gpubio.imaging.restoration import restore_file
    from gpubio.imaging.tiling import segment_file

    cellpose = import_cellpose()
    segmenter = CellposeSegmenter(
        resolve_model(str(segmentation_model), cellpose), torch.device("cpu"), cellpose=cellpose
    )
    restorer = restorer_for(str(smoothing_model))
    figures = {}
    for noise in (0.05, 0.6):
        image, truth = noisy_cells(shape=(2, 200, 260), n_cells=25, noise=noise, seed=5)
        raw = tmp_path / f"raw_{noise}.tif"
        tifffile.imwrite(raw, image, metadata={"axes": "CYX"})
        segment_file(raw, tmp_path / f"masks_raw_{noise}.tif", segmenter, (1, 0), 1024, 32)
        restore_file(raw, tmp_path / f"restored_{noise}.tif", restorer, (1, 0), 1024, 32)
        segment_file(
            tmp_path / f"restored_{noise}.tif", tmp_path / f"masks_restored_{noise}.tif", segmenter, (1, 0), 1024, 32
        )
        figures[noise] = {
            kind: average_precision(truth, tifffile.imread(tmp_path / f"masks_{kind}_{noise}.tif"))["ap"]
            for kind in ("raw", "restored")
        }
    record_property("ap_at_0.5", json.dumps(figures))
    print(f"AP@0.5 without / with restoration: {figures}")
    assert figures[0.05]["raw"] >= 0.8  # the model segments clean cells
    assert 0.0 <= figures[0.6]["raw"] < figures[0.05]["raw"]  # heavy noise hurts
    assert figures[0.6]["restored"] >= figures[0.6]["raw"] + 0.1  # smoothing gives some of it back


# --------------------------------------------------------------------------- the workflow


@pytest.fixture(scope="module")
def restoration_project(tmp_path_factory, segmentation_model, smoothing_model) -> Path:
    """An imaging-only project with restoration on: two noisy images, one model of each kind."""
    root = tmp_path_factory.mktemp("restoration-project")
    (root / "images").mkdir()
    (root / "models").mkdir()
    for seed, name in ((21, "cells a"), (22, "cells-b")):
        image, _ = noisy_cells(shape=(2, 120, 150), n_cells=10, noise=0.5, seed=seed)
        tifffile.imwrite(root / "images" / f"{name}.tif", image, metadata={"axes": "CYX"})
    shutil.copy(segmentation_model, root / "models" / "segmenter")
    shutil.copy(smoothing_model, root / "models" / "restorer")
    (root / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", root / "config" / "config.yaml")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.pop("genomics")
    config.pop("transcriptomics")
    config["imaging"]["samples"] = "config/imaging.tsv"
    config["imaging"]["segmentation"] |= {"model": "models/segmenter", "tile_size": 128, "tile_overlap": 16}
    config["imaging"]["restoration"] = {
        "enabled": True,
        "model": "models/restorer",
        "tile_size": 96,
        "tile_overlap": 16,
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (root / "config" / "imaging.tsv").write_text(
        "sample\timage\treference_image\nsa\timages/cells a.tif\t\nsb\timages/cells-b.tif\t\n"
    )
    return root


def test_dry_run_shows_segmentation_reading_the_restored_image_and_the_gpu_placement(restoration_project):
    from gpubio.gpu.plan import parse_dry_run

    proc = run_snakemake(restoration_project, "-n", "-p")
    out = proc.stdout
    assert "restore-image 'images/cells a.tif' --model models/restorer --sample sa" in out  # the space is quoted
    assert (
        "segment-cells results/imaging/sa/restored.tif --sample sa --model models/segmenter --no-download-models --channels 1 0"
        in out
    )
    assert "cell-features 'images/cells a.tif' results/imaging/sa/masks.tif" in out  # features: the raw image
    proc = run_snakemake(
        restoration_project, "-n", "--profile", str(REPO / "profiles" / "slurm-gpu"), "--sdm", "env-modules"
    )
    jobs = [job for job in parse_dry_run(proc.stdout) if job.rule == "restore_image"]
    assert len(jobs) == 2
    for job in jobs:  # (96 + 32)^2 px: ~1.1 GB, the cheapest GPU that fits
        assert job.resources["gpu"] == "1"
        assert job.resources["gpu_model"] == "t4" and job.resources["slurm_partition"] == "gpu-t4"


def test_unknown_restoration_model_stops_the_workflow_before_any_job(restoration_project, tmp_path):
    project = tmp_path / "bad"
    shutil.copytree(restoration_project / "config", project / "config")
    (project / "images").symlink_to(restoration_project / "images")
    (project / "models").symlink_to(restoration_project / "models")
    config = yaml.safe_load((project / "config" / "config.yaml").read_text())
    config["imaging"]["restoration"]["model"] = "denoise_cyto9"
    (project / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(project, "-n", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "imaging.restoration.model" in line]
    assert len(lines) == 1 and "unknown restoration model 'denoise_cyto9'" in lines[0]


def test_workflow_with_restoration_writes_the_restored_image_and_the_figure(restoration_project, smoothing_model):
    run_snakemake(restoration_project, "--profile", str(REPO / "profiles" / "local"), "--cores", "2")
    sample = restoration_project / "results" / "imaging" / "sa"
    restored = tifffile.imread(sample / "restored.tif")
    raw = tifffile.imread(restoration_project / "images" / "cells a.tif")
    assert restored.shape == (1, 120, 150)  # channels [1, 0]: the segmentation channel only
    expected = smoothing_network_output(normalised(raw[0]))
    inner = (slice(INTERIOR, -INTERIOR), slice(INTERIOR, -INTERIOR))
    assert np.abs(restored[0][inner] - expected[inner]).max() < 1e-4
    summary = json.loads((sample / "restoration.json").read_text())
    assert summary["tiles"] == 4 and summary["device"] == "cpu"  # 120 x 150 in 96 px tiles
    from PIL import Image

    with Image.open(sample / "restoration.png") as figure:
        assert figure.size[0] > figure.size[1] * 1.5  # two panels side by side
    segmentation = json.loads((sample / "segmentation.json").read_text())
    assert segmentation["image"] == "results/imaging/sa/restored.tif"
    log = (restoration_project / "logs" / "imaging" / "sa" / "restore_image.log").read_text()
    assert "Cellpose restoration on the CPU: no GPU found" in log and "models/restorer" in log
    assert (restoration_project / "results" / "imaging" / "sb" / "cells.tsv").is_file()
    run_snakemake(restoration_project, "--report", "results/report.html")
    html = (restoration_project / "results" / "report.html").read_text(errors="replace")
    assert "restoration.png" in html and "Cellpose 3 image restoration of sample" in html

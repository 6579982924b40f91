"""Imaging on inputs unlike the demo's: real tissue texture with a planted rigid + smooth
warp (registration defaults), zero padding after registration (segmentation's
normalisation), and bad values or corrupt files at start-up (one line each).

Test data comes from tests/independent/imaging.py, made without gpubio.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import REPO, run_snakemake
from independent.imaging import make_pair, noise_scene, padded_copy, tissue_scene


def learned_defaults() -> dict:
    """The learned registration's settings as a user gets them: the schema's defaults."""
    from gpubio.imaging.settings import imaging_settings

    return imaging_settings({})["registration"]["learned"]


def registration_error(result, pair) -> float:
    """Mean |registered - truth| over covered pixels, relative to the truth's spread."""
    inside = result.valid & ~np.isnan(pair.expected[0])
    truth = pair.expected[0][inside]
    return float(np.abs(result.registered[0][inside] - truth).mean() / truth.std())


@pytest.fixture(scope="module")
def warped_pair():
    """Tissue photograph, 7 degrees + (9.5, -12.25) px + a 4 px sinusoidal warp."""
    return make_pair(tissue_scene(seed=0), size=256, rotation_deg=7.0, shift_rc=(9.5, -12.25), warp_px=4.0)


@pytest.fixture(scope="module")
def rigid_pair():
    """Multi-scale noise texture, -7 degrees + (-6.75, 11.5) px, nothing else."""
    return make_pair(noise_scene(seed=4), size=256, rotation_deg=-7.0, shift_rc=(-6.75, 11.5), warp_px=0.0, seed=4)


# --------------------------------------------------------------------------- registration


def test_learned_defaults_fit_a_rigid_plus_smooth_warp(warped_pair):
    import torch

    from gpubio.imaging.registration import ncc, register_learned

    torch.set_num_threads(1)
    pair = warped_pair
    assert ncc(pair.image[0], pair.reference[0]) < 0.6
    learned = learned_defaults()
    result = register_learned(
        pair.reference,
        pair.image,
        transform=learned["transform"],
        deformable=learned["deformable"],
        iterations=learned["iterations"],
        learning_rate=learned["learning_rate"],
        smoothness=learned["smoothness"],
        device="cpu",
    )
    assert ncc(result.registered[0], pair.reference[0], result.valid) >= 0.98
    # against the truth: the registered image is the image seen through the planted transform
    assert registration_error(result, pair) < 0.08
    assert 3.0 < result.details["max_displacement_px"] < 7.0  # the 4 px warp, found by the field


def test_elastix_reference_fits_the_same_pair(warped_pair):
    from gpubio.imaging.registration import ncc, register_elastix

    pair = warped_pair
    result = register_elastix(pair.reference, pair.image, transforms=("rigid", "bspline"), grid_spacing=32)
    assert ncc(result.registered[0], pair.reference[0], result.valid) >= 0.98
    assert registration_error(result, pair) < 0.08


def test_learned_defaults_recover_a_pure_rigid_transform_exactly(rigid_pair):
    import torch

    from gpubio.imaging.registration import register_learned, rigid_parameters

    torch.set_num_threads(1)
    pair = rigid_pair
    learned = learned_defaults()
    result = register_learned(
        pair.reference,
        pair.image,
        deformable=learned["deformable"],
        iterations=learned["iterations"],
        learning_rate=learned["learning_rate"],
        smoothness=learned["smoothness"],
        device="cpu",
    )
    found = rigid_parameters(result.matrix, pair.truth.centre_rc)
    assert found["rotation_deg"] == pytest.approx(-7.0, abs=0.02)
    assert found["translation_rc"] == pytest.approx([-6.75, 11.5], abs=0.05)
    assert np.allclose(result.matrix, pair.truth.matrix(), atol=0.05)
    # the displacement field leaves a rigid pair (nearly) alone
    assert result.details["max_displacement_px"] < 2.0  # against 4-5 px on the warped pair
    assert registration_error(result, pair) < 0.06


def imaging_project(root: Path, rows: list[tuple[str, str, str]], registration: dict | None = None) -> Path:
    """A project with only the imaging module: config, sheet, and the given rows."""
    (root / "config").mkdir(parents=True)
    config = {
        "gpu": {"partitions": str(REPO / "profiles/slurm-gpu/partitions.yaml")},
        "imaging": {
            "samples": "config/imaging.tsv",
            "registration": registration or {},
            "segmentation": {"model": "cyto3"},  # a built-in name: no training set needed
        },
    }
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    lines = ["sample\timage\treference_image"] + ["\t".join(row) for row in rows]
    (root / "config" / "imaging.tsv").write_text("\n".join(lines) + "\n")
    return root


def test_register_rule_with_schema_defaults_fits_the_warp_and_writes_the_footprint(warped_pair, tmp_path):
    pair = warped_pair
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images/tissue.tif", pair.image, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "images/tissue_ref.tif", pair.reference, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "images/plain.tif", pair.image, metadata={"axes": "CYX"})
    root = imaging_project(
        tmp_path,
        [("tissue", "images/tissue.tif", "images/tissue_ref.tif"), ("plain", "images/plain.tif", "")],
        registration={"method": "learned"},
    )
    target = "results/imaging/tissue/transform.json"
    run_snakemake(root, "--profile", str(REPO / "profiles/local"), "--cores", "2", target, timeout=600)
    result = json.loads((root / target).read_text())
    assert result["method"] == "learned"
    assert result["ncc_before"] < 0.6 and result["ncc_after"] >= 0.98
    registered = tifffile.imread(root / "results/imaging/tissue/registered.tif")
    footprint = tifffile.imread(root / "results/imaging/tissue/footprint.tif")
    assert footprint.shape == registered.shape[1:] and footprint.dtype == np.uint8
    assert footprint.mean() == pytest.approx(result["covered_fraction"], abs=1e-9)
    # the planted transform takes the image's corners out of view: about 9% is not covered
    rows, cols = np.indices(footprint.shape)
    tr, tc = pair.truth.apply(rows.astype(float), cols.astype(float))
    inside = (tr >= 0) & (tr <= 255) & (tc >= 0) & (tc <= 255)
    assert 0.85 < inside.mean() < 0.95
    assert (footprint.astype(bool) == inside).mean() > 0.99
    assert not registered[:, footprint == 0].any()
    # segmentation of the registered image normalises over the footprint; unregistered images need none
    commands = run_snakemake(root, "-n", "-p").stdout
    segment = [line for line in commands.splitlines() if "segment-cells" in line]
    assert len(segment) == 2
    registered_line = next(line for line in segment if "tissue/registered.tif" in line)
    plain_line = next(line for line in segment if "images/plain.tif" in line)
    assert "--footprint results/imaging/tissue/footprint.tif" in registered_line
    assert "--footprint" not in plain_line


# --------------------------------------------------------------------------- normalisation after registration


class RecordingSegmenter:
    """Segments by thresholding the network input at 0.5 and keeps what it was given."""

    def __init__(self):
        self.inputs = []

    def segment(self, network_input: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        self.inputs.append(network_input.copy())
        return ndimage.label(network_input[0] > 0.5)[0]  # (channels, Y, X): the segmented channel


def test_normalisation_ignores_the_padding_outside_the_footprint(tmp_path):
    from gpubio.imaging.tiling import segment_file

    # a bright-background image (no pixel near 0), as a registered image of it with a wide
    # zero border around it: the border must not reach the percentiles
    content = (noise_scene(shape=(2, 120, 150), seed=9) * 900 + 3000).astype(np.uint16)
    padded, footprint = padded_copy(content, border=80)
    assert (~footprint).mean() > 0.6
    tifffile.imwrite(tmp_path / "content.tif", content, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "padded.tif", padded, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "footprint.tif", footprint.astype(np.uint8))

    expected = np.percentile(content[0].astype(float), (1, 99))
    plain, with_footprint = RecordingSegmenter(), RecordingSegmenter()
    alone = segment_file(tmp_path / "content.tif", tmp_path / "m1.tif", plain, (1, 0), 2048, 32)
    registered = segment_file(
        tmp_path / "padded.tif",
        tmp_path / "m2.tif",
        with_footprint,
        (1, 0),
        2048,
        32,
        footprint=tmp_path / "footprint.tif",
    )
    assert alone["normalisation"][0] == pytest.approx(expected, rel=1e-6)
    assert np.allclose(registered["normalisation"], alone["normalisation"], rtol=1e-6)
    # without the footprint the zero padding pulls the 1st percentile to 0
    unmasked = segment_file(tmp_path / "padded.tif", tmp_path / "m3.tif", RecordingSegmenter(), (1, 0), 2048, 32)
    assert unmasked["normalisation"][0][0] == 0
    assert expected[0] > 2000
    # the network sees the same values inside, and the same cells come out
    inner = with_footprint.inputs[0][:, 80:200, 80:230]
    assert np.allclose(inner, plain.inputs[0], atol=1e-6)
    masks_alone = tifffile.imread(tmp_path / "m1.tif")
    masks_registered = tifffile.imread(tmp_path / "m2.tif")
    assert masks_alone.max() > 3
    assert np.array_equal(masks_registered[80:200, 80:230] > 0, masks_alone > 0)


# --------------------------------------------------------------------------- start-up checks


def test_negative_training_seed_is_refused_with_one_line(tmp_path):
    from gpubio.config import ConfigError, load_project

    config = {"imaging": {"samples": "config/imaging.tsv", "training": {"seed": -1}}}
    with pytest.raises(ConfigError) as error:
        load_project(config, config_file="config.yaml", workdir=tmp_path)
    assert error.value.problems == [
        "config.yaml: key 'imaging.training.seed' = -1 is out of range (-1 is less than the minimum of 0)"
    ]


def corrupt_images(folder: Path) -> dict[str, Path]:
    """A good TIFF, the same file cut short (two ways), and a text file named .tif."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.tif"
    rng = np.random.default_rng(2)
    tifffile.imwrite(good, rng.integers(0, 4000, (2, 96, 80), dtype=np.uint16), metadata={"axes": "CYX"})
    truncated = folder / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # loses the second page
    plane = folder / "plane.tif"
    tifffile.imwrite(plane, rng.integers(0, 4000, (64, 64), dtype=np.uint16))
    plane_truncated = folder / "plane_truncated.tif"
    plane_truncated.write_bytes(plane.read_bytes()[:-100])  # loses the end of the pixels
    text = folder / "notes.tif"
    text.write_text("sample notes, not an image\n")
    return {"good": good, "truncated": truncated, "plane": plane, "plane_truncated": plane_truncated, "text": text}


def test_image_header_check_names_each_bad_file(tmp_path):
    from gpubio.image_io import tiff_problem

    files = corrupt_images(tmp_path)
    assert tiff_problem(files["good"]) is None and tiff_problem(files["plane"]) is None
    truncated, plane = tiff_problem(files["truncated"]), tiff_problem(files["plane_truncated"])
    size = files["plane_truncated"].stat().st_size
    assert plane.startswith(f"the file is cut short: it has {size} bytes, but its pixel data")
    assert truncated.startswith("the file is cut short")
    text = tiff_problem(files["text"])
    assert text == "not a TIFF file (it starts with 'samp'); give a TIFF or OME-TIFF image"
    for problem in (truncated, plane, text):
        assert "\n" not in problem


def test_corrupt_images_stop_the_workflow_with_one_line_each(tmp_path):
    files = corrupt_images(tmp_path / "images")
    root = imaging_project(
        tmp_path,
        [
            ("a", "images/good.tif", "images/truncated.tif"),
            ("b", "images/notes.tif", ""),
            ("c", "images/good.tif", ""),
        ],
    )
    proc = run_snakemake(root, "-n", check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out
    lines = [line.strip() for line in out.splitlines() if "config/imaging.tsv row" in line]
    assert len(lines) == 2, out
    assert lines[0].startswith("config/imaging.tsv row 1 (line 2, sample 'a'): reference_image 'images/truncated.tif'")
    assert "cut short" in lines[0] and "copy the file again" in lines[0]
    assert lines[1].startswith(
        "config/imaging.tsv row 2 (line 3, sample 'b'): image 'images/notes.tif': not a TIFF file"
    )
    assert files["good"].name not in " ".join(lines)


def test_training_vram_with_the_default_crop_size_is_that_of_the_installed_cellpose():
    """crop_size null (the schema default) used to crash the Snakefile while it sized the GPU."""
    from gpubio.imaging.resources import cellpose_training_vram_gb

    assert cellpose_training_vram_gb(None, 8, major=3) == cellpose_training_vram_gb(224, 8, major=3) == 5.3
    assert cellpose_training_vram_gb(None, 8, major=4) == cellpose_training_vram_gb(256, 8, major=4)


def test_a_job_given_a_bad_image_ends_with_one_line(tmp_path):
    """Inside a job (a file damaged after start-up, or a step run by hand): one line, no traceback."""
    import subprocess
    import sys

    files = corrupt_images(tmp_path)
    qc = subprocess.run(
        [sys.executable, "-m", "gpubio", "image-qc", str(files["plane_truncated"]), "--out", str(tmp_path / "qc.json")],
        capture_output=True,
        text=True,
    )
    assert qc.returncode != 0 and "Traceback" not in qc.stderr
    assert (
        qc.stderr.strip()
        .splitlines()[-1]
        .startswith(f"gpubio: image-qc: {files['plane_truncated']}: the file is cut short")
    )
    assert not (tmp_path / "qc.json").exists()
    register = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "register-image",
            str(files["text"]),
            "--reference",
            str(files["good"]),
            "--out-image",
            str(tmp_path / "r.tif"),
            "--out-transform",
            str(tmp_path / "t.json"),
            "--out-png",
            str(tmp_path / "c.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert register.returncode != 0 and "Traceback" not in register.stderr
    assert register.stderr.strip().splitlines() == [
        f"gpubio: register-image: {files['text']}: not a TIFF file (it starts with 'samp'); give a TIFF or OME-TIFF image"
    ]


def test_segmentation_names_the_image_when_a_channel_is_missing(tmp_path):
    from gpubio.image_io import ImageError
    from gpubio.imaging.tiling import segment_file

    files = corrupt_images(tmp_path)
    with pytest.raises(ImageError) as error:
        segment_file(files["good"], tmp_path / "m.tif", RecordingSegmenter(), (3, 0), 2048, 32)
    assert str(error.value) == (
        f"{files['good']}: channel 3 does not exist: the image has 2 channel(s) "
        "(channels are 1-based; 0 means grayscale / none); fix imaging.segmentation.channels"
    )

"""Training that is judged, and images labs send: validation strips held out of the training
images, the Otsu + watershed baseline on real nuclei, the verdict and its warnings, a short
training run on a real annotated image (tests/data/nuclei, DSB 2018, CC0), a segmentation that
finds no cell where there are nuclei, and bad images refused with one line each."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from conftest import REPO, gpubio
from gpubio.imaging.metrics import average_precision

NUCLEI = REPO / "tests" / "data" / "nuclei"
HALVES = {"left": np.s_[:, :256], "right": np.s_[:, 256:], "top": np.s_[:256], "bottom": np.s_[256:]}


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    """A real fluorescence image of nuclei (512 x 512, uint16) and its expert label image."""
    return tifffile.imread(NUCLEI / "dsb2018_nuclei.tif"), tifffile.imread(NUCLEI / "dsb2018_nuclei_masks.tif")


# --------------------------------------------------------------------------- the classical baseline


def test_otsu_watershed_is_a_fair_baseline_on_real_nuclei(nuclei):
    from gpubio.imaging.classical import otsu_watershed

    image, masks = nuclei
    scores = {name: average_precision(masks[part], otsu_watershed(image[part], 23.5)) for name, part in HALVES.items()}
    # a working classical pipeline: most nuclei found, touching ones split (measured 0.57-0.82)
    assert all(s["ap"] >= 0.5 for s in scores.values()), scores
    assert np.mean([s["ap"] for s in scores.values()]) >= 0.6
    assert all(s["predicted"] >= 0.7 * s["true"] for s in scores.values())


def test_foreground_objects_sees_nuclei_and_not_noise_or_a_flat_image(nuclei):
    from gpubio.imaging.classical import foreground_objects

    image, masks = nuclei
    assert foreground_objects(image, 23.5) >= 0.5 * (len(np.unique(masks)) - 1)
    rng = np.random.default_rng(0)
    noise = rng.poisson(400, (200, 200)) + rng.normal(0, 30, (200, 200))
    assert foreground_objects(noise, 15) == 0
    assert foreground_objects(np.full((64, 64), 400.0), 15) == 0
    assert foreground_objects(np.tile(np.linspace(0, 1000, 300), (300, 1)), 15) == 0


# --------------------------------------------------------------------------- validation images and the verdict


def image_set(*shapes):
    from gpubio.imaging.training import ImageSet

    images = ImageSet()
    for k, (h, w) in enumerate(shapes):
        labels = np.zeros((h, w), np.int32)
        labels[2:6, 2:6] = 1
        images.add(np.full((2, h, w), k, np.float32), labels, f"img{k}.tif")
    return images


def test_validation_is_a_strip_of_each_training_image_along_its_longer_side():
    from gpubio.imaging.training import hold_out

    train, validation = hold_out(image_set((100, 60), (40, 120), (18, 18)), 0.2, diameter=5)
    assert [x.shape for x in train.images] == [(2, 80, 60), (2, 40, 96), (2, 18, 18)]  # too small to cut: whole
    assert [y.shape for y in validation.labels] == [(20, 60), (40, 24)]
    assert validation.names == ["img0.tif rows 80-100", "img1.tif columns 96-120"]
    assert [x[0, 0, 0] for x in validation.images] == [0, 1]  # cut from the right images
    # at least two diameters on each side of the cut
    train, validation = hold_out(image_set((100, 60)), 0.05, diameter=8)
    assert validation.labels[0].shape == (16, 60) and train.labels[0].shape == (84, 60)


def test_the_strip_is_cut_between_cells_where_there_is_room():
    from gpubio.imaging.training import ImageSet, hold_out

    labels = np.zeros((100, 40), np.int32)
    labels[70:84, 5:15] = 1  # across the 80% line: the cut moves below it, to the empty row 84
    labels[86:96, 20:30] = 2
    labels[40:60, 25:35] = 3
    _, validation = hold_out(ImageSet([np.zeros((2, 100, 40))], [labels], ["a"]), 0.2, diameter=6)
    assert validation.names == ["a rows 84-100"] and sorted(np.unique(validation.labels[0])) == [0, 2]
    # no empty line within reach: the cut crosses as few labelled pixels as it can
    labels[:, 5:15] = 0
    labels[60:83, 5:15] = 1
    labels[78:100, 30:38] = 4
    labels[79:81, 0:4] = 5
    _, validation = hold_out(ImageSet([np.zeros((2, 100, 40))], [labels], ["a"]), 0.2, diameter=2)
    assert validation.names == ["a rows 81-100"]  # rows 79-80 hold 22 labelled pixels, 78 and 81-82 hold 18
    assert sorted(np.unique(validation.labels[0])) == [0, 1, 2, 4]


def test_images_too_small_to_hold_out_validation_name_the_fix():
    from gpubio.imaging.cellpose_models import ModelError
    from gpubio.imaging.training import hold_out

    with pytest.raises(ModelError, match=r"too small to hold out validation.*imaging\.training\.validation"):
        hold_out(image_set((30, 30)), 0.2, diameter=10)


def test_scores_pool_every_validation_image():
    from gpubio.imaging.training import pooled_scores

    truth = np.zeros((20, 20), np.int32)
    truth[2:8, 2:8], truth[12:18, 12:18] = 1, 2
    half = truth * (truth == 1)  # finds one of two
    scores = pooled_scores([truth, truth], [truth, half])
    assert scores["ap_50"] == pytest.approx(3 / 4) and scores["objects"] == 4 and scores["predicted"] == 3


def row(model, ap_50, step=None, objects=30):
    return {"model": model, "step": step, "ap_50": ap_50, "ap_75": ap_50 / 2, "objects": objects, "predicted": 30}


def test_a_model_below_the_classical_baseline_is_a_warning_with_what_to_try():
    from gpubio.imaging.training import ImageSet, Judge, verdict

    judge = Judge(ImageSet(), 20.0, {}, "cpu", None)
    judge.rows = [row("otsu_watershed", 0.62), row("trained", 0.2, 25), row("trained", 0.41, 50)]
    (warning,) = verdict(judge)
    assert warning.startswith(
        "the trained model scores AP@0.5 0.41 on the validation images, below the classical Otsu + watershed "
        "baseline (0.62)"
    )
    assert "imaging.training.steps" in warning and "imaging.training.base_model" in warning
    judge.rows[-1]["ap_50"] = 0.9
    assert verdict(judge) == []
    judge.rows.insert(1, row("cyto3", 0.95))
    (warning,) = verdict(judge)
    assert "built-in model cyto3 scores AP@0.5 0.95" in warning and "imaging.segmentation.model: cyto3" in warning
    judge.rows = [row("otsu_watershed", 1.0, objects=0), row("trained", 1.0, 50, objects=0)]
    (warning,) = verdict(judge)
    assert warning.startswith("the validation images hold no labelled object")


# --------------------------------------------------------------------------- a short training on a real image


@pytest.fixture(scope="module")
def short_training(nuclei, tmp_path_factory):
    """train-cellpose with a short schedule (the real one takes minutes) on a real image's corner."""
    image, masks = nuclei
    root = tmp_path_factory.mktemp("training")
    (root / "train").mkdir()
    tifffile.imwrite(root / "train" / "corner.tif", image[:300, :160])
    tifffile.imwrite(root / "train" / "corner_masks.tif", masks[:300, :160])
    out = root / "model"
    proc = gpubio(
        "--threads",
        "2",
        "train-cellpose",
        "--images",
        str(root / "train"),
        "--steps",
        "4",
        "--validate-every",
        "2",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--out",
        str(out / "cellpose_trained"),
        "--out-json",
        str(out / "training.json"),
        "--out-tsv",
        str(out / "validation.tsv"),
        "--out-png",
        str(out / "training.png"),
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stderr


def test_training_is_scored_on_held_out_strips_beside_the_classical_baseline(short_training, nuclei):
    import pandas as pd

    from gpubio.imaging.cellpose_models import median_diameter
    from gpubio.imaging.classical import otsu_watershed

    out, log = short_training
    table = pd.read_csv(out / "validation.tsv", sep="\t")
    assert list(table["model"]) == ["otsu_watershed", "trained", "trained"]  # no built-in weights here
    assert list(table["step"].iloc[1:]) == [3, 4] and list(table["crops_seen"].iloc[1:]) == [6, 8]
    summary = json.loads((out / "training.json").read_text())
    assert summary["validation"]["source"] == "the last 20% of each training image along its longer side"
    (name,) = summary["validation"]["images"]  # 20% of 300 rows, cut between cells near row 240
    cut = int(name.removeprefix("corner.tif rows ").split("-")[0])
    assert name == f"corner.tif rows {cut}-300" and abs(cut - 240) <= 24
    # the baseline row is Otsu + watershed on exactly that strip
    from gpubio.imaging.training import ImageSet, hold_out

    image, masks = nuclei
    diameter = median_diameter([masks[:300, :160]])
    held = hold_out(ImageSet([image[None, :300, :160]], [masks[:300, :160]], ["corner.tif"]), 0.2, diameter)[1]
    expected = average_precision(held.labels[0], otsu_watershed(image[cut:300, :160], diameter))
    assert table["ap_50"].iloc[0] == pytest.approx(expected["ap"], abs=1e-4)
    assert table["objects"].iloc[0] == expected["true"]
    assert summary["steps"] == 4 and summary["crops_seen"] == 8 and len(summary["losses"]) == 4
    assert summary["validation_losses"] and all(v > 0 for _, v in summary["validation_losses"])  # a real test loss
    assert "validation at step 3/4 (6 crops): AP@0.5" in log
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"


def test_a_model_that_learnt_nothing_is_a_warning_in_the_log_and_the_record(short_training):
    out, log = short_training
    summary = json.loads((out / "training.json").read_text())
    (warning,) = summary["warnings"]  # 4 steps of 2 crops cannot beat a threshold
    assert "below the classical Otsu + watershed baseline" in warning
    assert f"WARNING {warning}" in log


def test_a_validation_folder_is_used_whole_and_never_trained_on(nuclei, tmp_path):
    image, masks = nuclei
    for folder, part in (("train", np.s_[:128, :128]), ("held", np.s_[300:364, 300:428])):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "x.tif", image[part])
        tifffile.imwrite(tmp_path / folder / "x_masks.tif", masks[part])
    out = tmp_path / "out"
    proc = gpubio(
        "train-cellpose",
        "--images",
        str(tmp_path / "train"),
        "--validation",
        str(tmp_path / "held"),
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--crop-size",
        "64",
        "--out",
        str(out / "m"),
        "--out-json",
        str(out / "t.json"),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "t.json").read_text())
    assert summary["validation"] == {
        "source": f"folder {tmp_path / 'held'}",
        "images": ["x.tif"],
        "objects": len(np.unique(masks[300:364, 300:428])) - 1,
    }
    assert "training cellpose 3" in proc.stderr and "on 1 image(s) (" in proc.stderr


# --------------------------------------------------------------------------- configuration


def test_real_data_defaults_use_the_generalist_model_and_no_demo_paths():
    from gpubio.imaging.settings import config_problems, imaging_defaults

    defaults = imaging_defaults()
    assert defaults["segmentation"]["model"] == "generalist" and defaults["training"]["images"] == ""
    assert config_problems(defaults, "config.yaml", REPO) == []
    shipped = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["imaging"]
    assert "resources/demo" not in json.dumps(shipped)
    assert shipped["segmentation"]["model"] == "generalist" and shipped["training"]["images"] == ""


def test_trained_model_without_training_images_is_one_start_up_error(tmp_path):
    from gpubio.config import ConfigError
    from gpubio.startup import start_up

    project = imaging_project(tmp_path, ["sample\timage", "a\timages/a.tif"], {"segmentation": {"model": "trained"}})
    tifffile.imwrite(project / "images" / "a.tif", np.ones((32, 32), np.uint16))
    with pytest.raises(ConfigError) as error:
        start_up(project_config(project), "config/config.yaml", project)
    assert error.value.problems == [
        "config/config.yaml: imaging.segmentation.model is 'trained' but imaging.training.images is not set; "
        "set it to a folder of <name>.tif + <name>_masks.tif, or give a built-in model name or a model file"
    ]


def test_a_missing_validation_folder_is_refused_at_start_up(tmp_path):
    from gpubio.imaging.settings import config_problems, imaging_settings

    (tmp_path / "train").mkdir()
    settings = imaging_settings(
        {
            "imaging": {
                "samples": "x.tsv",
                "segmentation": {"model": "trained"},
                "training": {"images": "train", "validation": "held"},
            }
        }
    )
    assert config_problems(settings, "config.yaml", tmp_path)[-1] == (
        "config.yaml: imaging.training.validation: validation folder 'held' does not exist; "
        "set imaging.training.validation to a folder of images and masks"
    )


# --------------------------------------------------------------------------- images labs send


def imaging_project(root: Path, sheet: list[str], imaging: dict | None = None) -> Path:
    (root / "config").mkdir()
    (root / "images").mkdir()
    (root / "config" / "imaging.tsv").write_text("\n".join(sheet) + "\n")
    (root / "config" / "imaging.yaml").write_text(yaml.safe_dump(imaging or {}))
    return root


def project_config(root: Path) -> dict:
    imaging = yaml.safe_load((root / "config" / "imaging.yaml").read_text())
    return {
        "gpu": {"partitions": str(REPO / "profiles/slurm-gpu/partitions.yaml")},
        "imaging": {"samples": "config/imaging.tsv", **imaging},
    }


def test_a_1x1_image_is_refused_at_start_up_with_one_line(tmp_path):
    from gpubio.config import ConfigError
    from gpubio.startup import start_up

    project = imaging_project(
        tmp_path, ["sample\timage\treference_image", "dot\timages/dot.tif\t", "ok\timages/ok.tif\t"]
    )
    tifffile.imwrite(project / "images" / "dot.tif", np.ones((1, 1), np.uint16))
    tifffile.imwrite(project / "images" / "ok.tif", np.ones((2, 64, 48), np.uint16), metadata={"axes": "CYX"})
    with pytest.raises(ConfigError) as error:
        start_up(project_config(project), "config/config.yaml", project)
    assert error.value.problems == [
        "config/imaging.tsv row 1 (line 2, sample 'dot'): image 'images/dot.tif': is only 1 x 1 px, too small to "
        "hold a cell (at least 16 px a side); export the whole image again (a thumbnail or a failed export?)"
    ]


def test_an_all_zero_image_fails_qc_and_segmentation_with_one_line(tmp_path):
    from gpubio.image_io import ImageError
    from gpubio.imaging.tiling import segment_file

    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.zeros((2, 64, 64), np.uint16), metadata={"axes": "CYX"})
    proc = gpubio("image-qc", str(blank), "--out", str(tmp_path / "qc.json"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"gpubio: image-qc: {blank}: every pixel is 0, so there is nothing to segment (an empty or failed export?); "
        "export the image again, or take its row out of the sample sheet"
    )
    assert not (tmp_path / "qc.json").exists()

    class Nothing:
        def segment(self, x):
            return np.zeros(x.shape[1:], np.uint32)

    with pytest.raises(ImageError, match=r"blank.tif: channel 1 is 0, so there is nothing to segment"):
        segment_file(blank, tmp_path / "masks.tif", Nothing(), (1, 0), 2048, 32)
    assert not (tmp_path / "masks.tif").exists()
    # the other channel carries signal: segmenting channel 1 is still refused, the image as a whole is not
    image = np.zeros((2, 64, 64), np.uint16)
    image[1, 10:20, 10:20] = 500
    tifffile.imwrite(tmp_path / "one.tif", image, metadata={"axes": "CYX"})
    with pytest.raises(ImageError, match="channel 1 is 0"):
        segment_file(tmp_path / "one.tif", tmp_path / "masks.tif", Nothing(), (1, 0), 2048, 32)
    assert segment_file(tmp_path / "one.tif", tmp_path / "masks.tif", Nothing(), (2, 0), 2048, 32)["cells"] == 0


def test_no_cell_found_where_there_are_nuclei_is_a_warning_naming_the_sample(nuclei, tmp_path):
    from gpubio.imaging.tiling import no_cell_warning, segment_file

    image, _ = nuclei
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "noise.tif", rng.poisson(300, (128, 128)).astype(np.uint16))

    class Nothing:
        def segment(self, x):
            return np.zeros(x.shape[1:], np.uint32)

    records = {}
    for name in ("nuclei", "noise"):
        summary = segment_file(tmp_path / f"{name}.tif", tmp_path / f"{name}_masks.tif", Nothing(), (1, 0), 2048, 32)
        warning = no_cell_warning(summary, name)
        records[name] = summary | {"warnings": [warning] if warning else [], "model": "m", "device": "cpu"}
        (tmp_path / name).mkdir()
        (tmp_path / name / "segmentation.json").write_text(json.dumps(records[name]))
    assert records["nuclei"]["foreground_objects"] > 40 and records["noise"]["foreground_objects"] == 0
    (warning,) = records["nuclei"]["warnings"]
    assert warning.startswith(f"sample nuclei: Cellpose found no cell in {tmp_path / 'nuclei.tif'}, but ")
    assert "imaging.segmentation.diameter" in warning and "cellprob_threshold" in warning
    assert records["noise"]["warnings"] == []
    # the report's table names the sample and the warning
    proc = gpubio(
        "segmentation-summary",
        str(tmp_path / "nuclei" / "segmentation.json"),
        str(tmp_path / "noise" / "segmentation.json"),
        "--out-tsv",
        str(tmp_path / "summary.tsv"),
    )
    assert proc.returncode == 0, proc.stderr
    import pandas as pd

    table = pd.read_csv(tmp_path / "summary.tsv", sep="\t", keep_default_na=False)
    assert list(table["sample"]) == ["nuclei", "noise"] and list(table["cells"]) == [0, 0]
    assert table["warning"].tolist() == [warning, ""]
    assert f"WARNING {warning}" in proc.stderr


def test_a_reference_of_another_size_is_registered_onto_its_grid_with_a_note(tmp_path):
    rng = np.random.default_rng(3)
    reference = rng.integers(100, 4000, (1, 72, 90), dtype=np.uint16)
    image = np.zeros((1, 60, 100), np.uint16)
    image[:, :, :90] = reference[:, 6:66]
    tifffile.imwrite(tmp_path / "image.tif", image, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "reference.tif", reference, metadata={"axes": "CYX"})
    out = {name: tmp_path / name for name in ("registered.tif", "transform.json", "checkerboard.png")}
    proc = gpubio(
        "register-image",
        str(tmp_path / "image.tif"),
        "--reference",
        str(tmp_path / "reference.tif"),
        "--method",
        "learned",
        "--no-deformable",
        "--learned-iterations",
        "5",
        "--out-image",
        str(out["registered.tif"]),
        "--out-transform",
        str(out["transform.json"]),
        "--out-png",
        str(out["checkerboard.png"]),
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "note: the image is 60 x 100 px and its reference 72 x 90 px: the image is registered onto the reference's "
        "pixel grid (1 px = 1 px), so the registered image, its masks and cells are 72 x 90 px" in proc.stderr
    )
    assert tifffile.imread(out["registered.tif"]).shape == (1, 72, 90)
    result = json.loads(out["transform.json"].read_text())
    assert result["image_shape"] == [60, 100] and result["reference_shape"] == [72, 90]

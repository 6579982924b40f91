"""Imaging units: reading windows, tiling and stitching, registration against the planted
transform, per-cell features against scikit-image, Cellpose version dispatch (fake modules),
model errors, configuration checks and the GPU needs of the rules."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from gpubio.image_io import LabelImage, TiffImage, read_image
from gpubio.imaging import cellpose_models as cm
from gpubio.imaging.metrics import average_precision
from gpubio.imaging.tiling import segment_tiled, stitch_tile, tile_grid


@pytest.fixture(scope="module")
def demo(demo_data) -> Path:
    return demo_data / "resources" / "demo" / "imaging"


# --------------------------------------------------------------------------- io


@pytest.mark.parametrize(
    "kind",
    ["contiguous", "tiled-zlib", "rgb", "grey", "big-endian"],
)
def test_tiff_windows_equal_the_whole_image(tmp_path, kind):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (3, 150, 230), dtype=np.uint16)
    path = tmp_path / f"{kind}.tif"
    if kind == "contiguous":
        tifffile.imwrite(path, data, metadata={"axes": "CYX"})
    elif kind == "tiled-zlib":
        tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", metadata={"axes": "CYX"})
    elif kind == "rgb":
        tifffile.imwrite(path, np.moveaxis(data, 0, -1).copy(), photometric="rgb")
    elif kind == "grey":
        data = data[:1]
        tifffile.imwrite(path, data[0])
    else:
        tifffile.imwrite(path, data, byteorder=">", metadata={"axes": "CYX"})
    image = TiffImage(path)
    whole, _ = read_image(str(path))
    assert image.shape == whole.shape == data.shape
    assert np.array_equal(image.region(17, 123, 33, 201), data[:, 17:123, 33:201])
    assert np.array_equal(image.strided(7), data[:, ::7, ::7])


def test_label_image_writes_windows_into_a_tiff(tmp_path):
    labels = LabelImage(tmp_path / "masks.tif", (120, 90))
    block = np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) + 1
    labels.write(50, 20, block)
    assert np.array_equal(labels.read(50, 80, 20, 60), block)
    full = tifffile.imread(tmp_path / "masks.tif")
    assert full.dtype == np.uint32 and full.shape == (120, 90)
    assert full.sum() == block.sum() and np.array_equal(full[50:80, 20:60], block)


# --------------------------------------------------------------------------- tiling


def blobs(shape=(400, 520), n=60, seed=3) -> tuple[np.ndarray, np.ndarray]:
    """A (1, Y, X) image of separated discs and its label image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    rr, cc = np.indices(shape)
    centres = []
    while len(centres) < n:
        cy, cx = rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)
        if all(np.hypot(cy - y, cx - x) > 16 for y, x in centres):
            centres.append((cy, cx))
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[np.hypot(rr - cy, cc - cx) <= 6] = k
    return (labels > 0).astype(np.uint16)[None] * 1000, labels


class ArrayImage:
    def __init__(self, data):
        self.data, self.shape = data, data.shape

    def region(self, y0, y1, x0, x1):
        return self.data[:, y0:y1, x0:x1]


def threshold_segment(block):
    return ndimage.label(block[0] > 500)[0].astype(np.uint32)


def test_tile_grid_covers_the_image_once_with_overlap():
    tiles = tile_grid(1000, 700, 256, 40)
    owned = np.zeros((1000, 700), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        owned[y0:y1, x0:x1] += 1
        oy0, oy1, ox0, ox1 = t.outer
        assert oy0 == max(0, y0 - 40) and oy1 == min(1000, y1 + 40) and ox1 == min(700, x1 + 40)
        assert y1 - y0 <= 256 and x1 - x0 <= 256
    assert (owned == 1).all() and len(tiles) == 4 * 3
    assert len(tile_grid(200, 200, 256, 40)) == 1


@pytest.mark.parametrize("tile_size, overlap", [(1024, 0), (100, 20), (64, 16)])
def test_tiled_segmentation_keeps_every_border_cell_once(tmp_path, tile_size, overlap):
    image, truth = blobs()
    out = LabelImage(tmp_path / "masks.tif", truth.shape)
    summary = segment_tiled(ArrayImage(image), out, threshold_segment, tile_size, overlap)
    masks = tifffile.imread(tmp_path / "masks.tif")
    assert summary["cells"] == truth.max() == len(np.unique(masks)) - 1
    assert average_precision(truth, masks)["ap"] == 1.0  # each disc whole, once, even across borders
    if tile_size < 400:
        assert summary["tiles"] > 1


def test_segment_file_holds_one_tile_at_a_time(tmp_path):
    """From a tiled TIFF to a label TIFF: the segmenter never sees more than one tile."""
    from gpubio.imaging.tiling import segment_file

    image, truth = blobs(shape=(700, 900), n=150)
    tifffile.imwrite(tmp_path / "image.tif", image, tile=(128, 128), compression="zlib", metadata={"axes": "CYX"})

    class Recorder:
        shapes: list = []

        def segment(self, x):
            self.shapes.append(x.shape)
            assert x.dtype == np.float32 and x.shape[0] == 2 and x.max() <= 1.0  # normalised network input
            return ndimage.label(x[0] > 0.5)[0]

    recorder = Recorder()
    summary = segment_file(tmp_path / "image.tif", tmp_path / "masks.tif", recorder, (1, 0), 256, 32)
    assert summary["tiles"] == len(recorder.shapes) == 3 * 4
    assert max(h for _, h, _ in recorder.shapes) <= 256 + 2 * 32 and max(w for *_, w in recorder.shapes) <= 225 + 64
    assert summary["cells"] == 150 and average_precision(truth, tifffile.imread(tmp_path / "masks.tif"))["ap"] == 1.0


def test_stitching_drops_a_second_copy_of_a_written_cell():
    tile = tile_grid(40, 80, 40, 10)[1]  # core x 40..80, outer x 30..80
    local = np.zeros((40, 50), np.uint32)
    local[10:20, 8:16] = 1  # centroid at x = 41.5: owned by this tile
    existing = np.zeros_like(local)
    existing[10:20, 6:16] = 7  # ...but the neighbour already wrote it
    merged, next_label, added = stitch_tile(tile, local, existing, next_label=8)
    assert added == 0 and next_label == 8 and np.array_equal(merged, existing)
    merged, next_label, added = stitch_tile(tile, local, np.zeros_like(local), next_label=8)
    assert added == 1 and next_label == 9 and set(np.unique(merged)) == {0, 8}


# --------------------------------------------------------------------------- registration


@pytest.fixture(scope="module")
def pair(demo):
    image, _ = read_image(str(demo / "nuclei1.tif"))
    reference, _ = read_image(str(demo / "nuclei1_reference.tif"))
    truth = json.loads((demo / "truth.json").read_text())["nuclei1"]["reference_transform"]
    return image, reference, truth


def assert_recovers(result, reference, truth):
    from gpubio.imaging.registration import ncc, rigid_parameters

    found = rigid_parameters(result.matrix, truth["centre_rc"])
    assert found["rotation_deg"] == pytest.approx(truth["rotation_deg"], abs=0.2)
    assert found["translation_rc"] == pytest.approx(truth["translation_rc"], abs=0.3)
    assert ncc(result.registered[0], reference[0], result.valid) >= 0.95
    assert result.valid.mean() > 0.9


def test_elastix_recovers_the_planted_rigid_transform(pair):
    from gpubio.imaging.registration import ncc, register_elastix

    image, reference, truth = pair
    assert ncc(image[0], reference[0]) < 0.5
    result = register_elastix(reference, image, transforms=("translation", "rigid"))
    assert result.details["transforms"] == ["TranslationTransform", "EulerTransform"]
    assert_recovers(result, reference, truth)
    assert result.registered.shape == image.shape and not result.registered[:, ~result.valid].any()


def test_elastix_matrix_composes_maps_like_transformix(pair, tmp_path):
    """Two linear maps of very different size: the composed matrix must match transformix's field."""
    import itk

    from gpubio.imaging.registration import _to_unit, elastix_linear_matrix, elastix_parameter_object

    image, reference, _ = pair
    fixed = itk.image_view_from_array(np.ascontiguousarray(_to_unit(reference[0])))
    moving = itk.image_view_from_array(np.ascontiguousarray(_to_unit(image[0])))
    parameters = elastix_parameter_object(("translation", "rigid"), 32, 100)
    _, result = itk.elastix_registration_method(fixed, moving, parameter_object=parameters, log_to_console=False)
    maps = [{k: list(v) for k, v in result.GetParameterMap(i).items()} for i in range(2)]
    matrix = elastix_linear_matrix(maps)
    # transformix also writes deformationField.nii, by default into the working directory
    field = itk.transformix_deformation_field(moving, result, output_directory=str(tmp_path))
    field = itk.array_from_image(field)  # (Y, X, [dx, dy])
    for r, c in [(0, 0), (0, 255), (255, 0), (200, 100)]:
        expected = (r + field[r, c][1], c + field[r, c][0])
        assert (matrix @ (r, c, 1))[:2] == pytest.approx(expected, abs=0.02)


def test_learned_registration_recovers_the_transform_and_improves_ncc(pair):
    import torch

    from gpubio.imaging.registration import register_learned

    image, reference, truth = pair
    torch.set_num_threads(1)
    result = register_learned(reference, image, transform="rigid", deformable=True, iterations=100, device="cpu")
    assert_recovers(result, reference, truth)
    assert result.details["max_displacement_px"] < 1.0  # the planted transform is rigid: little left to deform
    affine = register_learned(reference, image, transform="affine", deformable=False, iterations=100, device="cpu")
    assert_recovers(affine, reference, truth)


def test_checkerboard_alternates_the_two_images():
    from gpubio.imaging.registration import checkerboard

    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    board = checkerboard(ramp, 1 - ramp, squares=4)  # squares of 16 px
    assert np.allclose(board[:16, :16], np.clip((ramp[:16, :16] - 0.01) / 0.98, 0, 1), atol=0.02)
    assert np.allclose(board[:16, 16:32], np.clip((1 - ramp[:16, 16:32] - 0.01) / 0.98, 0, 1), atol=0.02)
    assert np.allclose(board[16:32, 16:32], np.clip((ramp[16:32, 16:32] - 0.01) / 0.98, 0, 1), atol=0.02)


# --------------------------------------------------------------------------- features


def test_cell_features_equal_regionprops(demo):
    from skimage.measure import regionprops_table

    from gpubio.imaging.features import cell_features

    table = cell_features(TiffImage(demo / "nuclei1.tif"), TiffImage(demo / "nuclei1_masks.tif"), "nuclei1", block=100)
    labels = tifffile.imread(demo / "nuclei1_masks.tif")
    image = tifffile.imread(demo / "nuclei1.tif")
    props = regionprops_table(
        labels,
        intensity_image=np.moveaxis(image, 0, -1),
        properties=("label", "area", "centroid", "eccentricity", "intensity_mean"),
    )
    assert len(table) == 40 and list(table["cell"]) == list(props["label"])
    for ours, theirs in [
        ("area", "area"),
        ("centroid_row", "centroid-0"),
        ("centroid_col", "centroid-1"),
        ("eccentricity", "eccentricity"),
        ("mean_ch1", "intensity_mean-0"),
        ("mean_ch2", "intensity_mean-1"),
    ]:
        assert np.allclose(table[ours], props[theirs]), ours


def test_average_precision_counts_matches_misses_and_extras():
    truth = np.zeros((20, 20), int)
    truth[2:6, 2:6], truth[10:14, 10:14], truth[15:19, 2:6] = 1, 2, 3
    pred = np.zeros_like(truth)
    pred[2:6, 2:6] = 5  # exact
    pred[10:14, 11:14] = 6  # IoU 0.75
    pred[0:2, 15:19] = 7  # extra
    result = average_precision(truth, pred)
    assert (result["tp"], result["fp"], result["fn"]) == (2, 1, 1) and result["ap"] == pytest.approx(0.5)


# --------------------------------------------------------------------------- Cellpose versions


class FakeModel:
    """Records how it is built and called; 'segments' by thresholding the first channel."""

    calls: list = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        FakeModel.calls.append(("init", kwargs))
        self.net = types.SimpleNamespace(diam_mean=np.float32(kwargs.get("diam_mean", 30.0)))

    def eval(self, x, **kwargs):
        FakeModel.calls.append(("eval", {"shape": x.shape, **kwargs}))
        return ndimage.label(x[..., 0] > 0.5)[0], None, None


def fake_cellpose(version: str, model_dir: Path, names=("cyto3", "nuclei")) -> types.ModuleType:
    saved = []

    def train_seg(net, **kwargs):
        saved.append(kwargs)
        path = Path(kwargs["save_path"]) / "models" / kwargs["model_name"]
        path.write_bytes(b"weights")
        return path, np.linspace(1, 0.1, kwargs["n_epochs"]), None

    module = types.ModuleType("cellpose")
    module.version = version
    module.models = types.SimpleNamespace(CellposeModel=FakeModel, MODEL_DIR=model_dir, MODEL_NAMES=list(names))
    module.train = types.SimpleNamespace(train_seg=train_seg, saved=saved)
    return module


@pytest.fixture
def weights(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    for name in ("cyto3", "nucleitorch_0", "cpsam"):
        (tmp_path / "models" / name).write_bytes(b"w")
    return tmp_path / "models"


def test_version_dispatch_cellpose3(weights):
    FakeModel.calls = []
    cp = fake_cellpose("3.1.1.3", weights)
    assert cm.major_version(cp) == 3 and cm.builtin_models(cp) == ("cyto3", "nuclei")
    choice = cm.resolve_model("nuclei", cp)
    assert choice.builtin and choice.path == weights / "nucleitorch_0"
    seg = cm.CellposeSegmenter(choice, "cpu", cellpose=cp, diameter=17, batch_size=4)
    x = np.zeros((2, 32, 32), np.float32)
    x[0, 4:10, 4:10] = 1
    labels = seg.segment(x)
    (_, init), (_, call) = FakeModel.calls
    assert init == {"gpu": False, "device": "cpu", "model_type": "nuclei", "nchan": 2}
    assert call["channels"] == [1, 2] and call["channel_axis"] == -1 and call["shape"] == (32, 32, 2)
    assert call["normalize"] is False and call["diameter"] == 17 and call["batch_size"] == 4
    assert labels.max() == 1 and labels.dtype == np.uint32


def test_version_dispatch_cellpose4(weights):
    FakeModel.calls = []
    cp = fake_cellpose("4.0.7", weights)
    assert cm.major_version(cp) == 4 and cm.builtin_models(cp) == ("cpsam",)
    choice = cm.resolve_model("cpsam", cp)
    seg = cm.CellposeSegmenter(choice, "cuda", cellpose=cp)
    x = np.zeros((2, 32, 32), np.float32)
    x[0, 4:10, 4:10] = 1
    seg.segment(x)
    (_, init), (_, call) = FakeModel.calls
    assert init == {"gpu": True, "device": "cuda", "pretrained_model": str(weights / "cpsam")}  # no nchan
    assert "channels" not in call and call["shape"] == (32, 32, 3)  # Cellpose-SAM: 3 channels, no `channels`
    assert call["diameter"] is None  # 0 = the model's own


@pytest.mark.parametrize("version, extra", [("3.1.1.3", {"channels": None}), ("4.0.7", {})])
def test_training_dispatch(tmp_path, weights, version, extra):
    FakeModel.calls = []
    cp = fake_cellpose(version, weights)
    images = [np.full((2, 40, 40), 0.5, np.float32)]
    labels = [np.zeros((40, 40), np.int32)]
    labels[0][5:12, 5:12], labels[0][20:30, 20:30] = 1, 2
    result = cm.train_model(images, labels, tmp_path / "work", "m", "cpu", cellpose=cp, steps=3, crop_size=32)
    kwargs = cp.train.saved[0]
    assert (kwargs["n_epochs"], kwargs["bsize"], kwargs["normalize"]) == (3, 32, False)
    assert kwargs["nimg_per_epoch"] == kwargs["batch_size"] == 8  # an epoch is one step of one batch
    assert kwargs["test_data"] is None
    # learning rate and weight decay left unset: each version's own (Cellpose 3.1's train_seg; Cellpose-SAM's)
    expected = {"3": (0.005, 1e-5), "4": (5e-5, 0.1)}[version[0]]
    assert (kwargs["learning_rate"], kwargs["weight_decay"]) == expected
    assert {k: kwargs[k] for k in extra} == extra and ("channels" in kwargs) == bool(extra)
    init = FakeModel.calls[0][1]
    if version.startswith("3"):  # from scratch, sized to the training objects
        assert init["pretrained_model"] is False and init["nchan"] == 2
        assert init["diam_mean"] == pytest.approx(result["diameter"])
        assert kwargs["train_data"][0].shape == (2, 40, 40)
        # each image also at half and double contrast, with its labels
        assert [float(x.max()) for x in kwargs["train_data"]] == [0.5, 0.25, 1.0]
        assert len(kwargs["train_labels"]) == 3 and all(y is labels[0] for y in kwargs["train_labels"])
        cm.train_model(images, labels, tmp_path / "work2", "m", "cpu", cellpose=cp, steps=3, object_diameter=17)
        assert FakeModel.calls[-1][1]["diam_mean"] == 17
        assert cp.train.saved[-1]["bsize"] == 128  # as many diameters as Cellpose's 224 px crops of 30 px cells
    else:  # Cellpose-SAM is fine-tuned from cpsam, on 3 channels
        assert init["pretrained_model"] == str(weights / "cpsam") and "nchan" not in init
        assert kwargs["train_data"][0].shape == (3, 40, 40)
        cm.train_model(images, labels, tmp_path / "work2", "m", "cpu", cellpose=cp, steps=3, object_diameter=17)
        assert cp.train.saved[-1]["bsize"] == 256  # Cellpose-SAM's own
    assert Path(result["model"]).read_bytes() == b"weights" and len(result["losses"]) == 3


def test_generalist_is_the_installed_versions_general_purpose_model(weights):
    assert cm.resolve_model("generalist", fake_cellpose("3.1.1.3", weights)).path == weights / "cyto3"
    assert cm.resolve_model("generalist", fake_cellpose("4.0.7", weights)).path == weights / "cpsam"
    with pytest.raises(cm.ModelError, match=r"cellpose model 'cyto3' needs its weights file 'cyto3'"):
        cm.resolve_model("generalist", fake_cellpose("3.1.1.3", weights.parent / "empty"))


def test_model_errors_say_what_to_do(tmp_path, weights):
    cp3 = fake_cellpose("3.1.1.3", tmp_path / "empty")
    with pytest.raises(cm.ModelError, match=r"cyto3.*not there.*model file.*download_models"):
        cm.resolve_model("cyto3", cp3)
    assert cm.resolve_model("cyto3", cp3, allow_download=True).builtin
    with pytest.raises(cm.ModelError, match=r"'cpsam' needs cellpose 4.x"):
        cm.resolve_model("cpsam", cp3)
    with pytest.raises(cm.ModelError, match=r"'cyto3' needs cellpose 3.x"):
        cm.resolve_model("cyto3", fake_cellpose("4.0.7", weights))
    with pytest.raises(cm.ModelError, match="does not exist; fix the path"):
        cm.resolve_model("models/mine.pt", cp3)
    with pytest.raises(cm.ModelError, match="unknown cellpose model 'cytoo'"):
        cm.resolve_model("cytoo", cp3)
    local = tmp_path / "my_model"
    local.write_bytes(b"w")
    assert cm.resolve_model(str(local), cp3) == cm.ModelChoice(name="my_model", path=local, builtin=False)
    with pytest.raises(cm.ModelError, match="too old"):
        cm.major_version(fake_cellpose("2.2", weights))


def test_real_cellpose3_builds_an_untrained_network_offline():
    cp = cm.import_cellpose()
    assert cm.major_version(cp) == 3
    model = cp.models.CellposeModel(gpu=False, pretrained_model=False, nchan=2)
    assert sum(p.numel() for p in model.net.parameters()) > 1e6


def test_network_input_selects_and_scales_channels():
    image = np.stack([np.arange(100.0).reshape(10, 10), np.full((10, 10), 5.0), np.ones((10, 10))])
    selected = cm.select_channels(image, (1, 0))
    assert selected.shape == (2, 10, 10) and not selected[1].any()
    x = cm.network_input(selected, cm.intensity_range(selected))
    assert x[0].min() < 0.01 and x[0].max() > 0.99 and not x[1].any()  # a channel without range stays 0
    assert np.allclose(cm.select_channels(image, (0, 3))[0], image.mean(axis=0))
    with pytest.raises(ValueError, match="channel 4 does not exist"):
        cm.select_channels(image, (4, 0))


def test_training_set_pairs_and_errors(tmp_path):
    folder = tmp_path / "train"
    folder.mkdir()
    for name in ("a", "b"):
        tifffile.imwrite(folder / f"{name}.tif", np.zeros((2, 8, 8), np.uint16))
        tifffile.imwrite(folder / f"{name}_masks.tif", np.zeros((8, 8), np.uint16))
    assert [p.name for p, _ in cm.read_training_set(folder)] == ["a.tif", "b.tif"]
    tifffile.imwrite(folder / "c.tif", np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(cm.ModelError, match=r"no masks for c.tif; each image <name>.tif needs <name>_masks.tif"):
        cm.read_training_set(folder)
    with pytest.raises(cm.ModelError, match="does not exist"):
        cm.read_training_set(tmp_path / "nowhere")


# --------------------------------------------------------------------------- config and GPU needs


def settings(**changes):
    from gpubio.imaging.settings import imaging_settings

    config = {"imaging": {"samples": "config/imaging.tsv"}}
    for key, value in changes.items():
        section, name = key.split("__")
        config["imaging"].setdefault(section, {})[name] = value
    return imaging_settings(config)


def test_config_problems_name_the_key_and_the_fix(tmp_path):
    from gpubio.imaging.settings import config_problems

    assert config_problems(settings(), "config.yaml", tmp_path) == []  # the generalist model needs nothing
    problems = config_problems(settings(segmentation__model="trained"), "config.yaml", tmp_path)
    assert problems == [
        "config.yaml: imaging.segmentation.model is 'trained' but imaging.training.images is not set; "
        "set it to a folder of <name>.tif + <name>_masks.tif, or give a built-in model name or a model file"
    ]
    problems = config_problems(
        settings(segmentation__model="models/mine", segmentation__tile_size=100, segmentation__tile_overlap=60),
        "config.yaml",
        tmp_path,
    )
    assert any("imaging.segmentation.model 'models/mine' does not exist" in p for p in problems)
    assert any("tile_overlap (60) must be less than half of tile_size (100)" in p for p in problems)
    (tmp_path / "train").mkdir()
    tifffile.imwrite(tmp_path / "train" / "x.tif", np.zeros((8, 8), np.uint16))
    problems = config_problems(
        settings(segmentation__model="trained", training__images="train"), "config.yaml", tmp_path
    )
    assert problems == [
        "config.yaml: imaging.training.images: training folder 'train': no masks for x.tif; "
        "each image <name>.tif needs <name>_masks.tif (a label image) next to it"
    ]
    assert config_problems(settings(segmentation__model="cyto3"), "config.yaml", tmp_path) == []


def test_rule_options_spell_out_the_settings():
    from gpubio.imaging.settings import registration_options, segmentation_options, training_options

    assert (
        registration_options(settings())
        == "--method elastix --channel 1 --transforms rigid bspline --grid-spacing 32 --elastix-iterations 0"
    )
    learned = settings(registration__method="learned")
    assert registration_options(learned).startswith(
        "--method learned --channel 1 --learned-transform rigid --deformable"
    )
    assert "--tile-size 2048 --tile-overlap 64" in segmentation_options(settings())
    assert training_options(settings()) == (
        "--no-download-models --channels 1 0 --diameter 0 --flow-threshold 0.4 --cellprob-threshold 0 --min-size 15"
        " --validation-fraction 0.2 --base-model none --steps 400 --validate-every 50 --batch-size 4"
        " --network-diameter 17 --contrast-copies 0.5 2 --seed 0"
    )
    assert "--validate-every 50 --learning-rate 0.01 --batch-size" in training_options(
        settings(training__learning_rate=0.01)
    )
    assert "--validation held --validation-fraction" in training_options(settings(training__validation="held"))


def test_cellpose_vram_grows_with_tile_and_batch_size():
    from gpubio.imaging.resources import cellpose_mem_mb, cellpose_vram_gb

    base = cellpose_vram_gb(2048, 8, major=3)
    assert cellpose_vram_gb(8192, 8, major=3) > base + 3  # a 8k tile's flows: +4 GB
    assert cellpose_vram_gb(2048, 32, major=3) > base + 3
    assert cellpose_vram_gb(2048, 8, major=4) > base + 4  # Cellpose-SAM's transformer
    assert cellpose_vram_gb(2048, 8, model="cpsam", major=3) == cellpose_vram_gb(2048, 8, major=4)
    assert cellpose_mem_mb(8192) > cellpose_mem_mb(2048)


def test_noise_traced_as_an_object_is_dropped_and_a_faint_real_cell_kept(tmp_path):
    """In a field where nothing stands out of the background, a network may trace a blob in
    the noise: segment-cells keeps only objects that differ from the background themselves."""
    from gpubio.imaging.tiling import segment_file

    rng = np.random.default_rng(1)
    noise = rng.normal(400, 30, (2, 160, 160))
    yy, xx = np.mgrid[:160, :160]
    cell = (yy - 40) ** 2 + (xx - 40) ** 2 <= 8**2  # a real cell, 1.5 noise deviations brighter
    blob = (yy - 110) ** 2 + (xx - 110) ** 2 <= 8**2  # the noise's own texture
    image = noise.copy()
    image[0][cell] += 45
    tifffile.imwrite(tmp_path / "faint.tif", np.clip(image, 0, None).astype(np.uint16), metadata={"axes": "CYX"})

    class Traces:  # a segmenter that finds both places, as a network might
        def segment(self, x):
            return (cell * 1 + blob * 2).astype(np.uint32)[: x.shape[1], : x.shape[2]]

    summary = segment_file(tmp_path / "faint.tif", tmp_path / "masks.tif", Traces(), (1, 0), 2048, 32)
    masks = tifffile.imread(tmp_path / "masks.tif")
    assert summary["foreground_objects"] == 0  # Otsu sees nothing: a faint, sparse image
    assert summary["cells"] == 1 and summary["noise_objects_dropped"] == 1
    assert masks[cell].min() == 1 and not masks[blob].any() and set(np.unique(masks)) == {0, 1}

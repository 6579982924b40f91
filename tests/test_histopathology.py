"""Histopathology science on a synthetic pyramidal slide with planted tissue: tissue detection
(IoU), the tile grid (count, coordinates, tissue fractions), region-by-region reading (peak
memory), the weights layout and tokenizer, and zero-shot probabilities."""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
import torch

from independent.histopathology import (
    DOWNSAMPLES,
    HEIGHT,
    MPP,
    WIDTH,
    expected_tiles,
    level0,
    planted_mask,
    write_slide,
)
from tiny_vlm import CLASSES, write_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    write_slide(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model") / "tiny_conch"
    write_tiny_model(directory, level0())
    return directory


def test_slide_levels_and_resolution_come_from_the_file(slide_path):
    from gpubio.histopathology.slide import Slide

    with Slide(slide_path) as slide:
        assert slide.dimensions == (WIDTH, HEIGHT) and slide.mpp == pytest.approx(MPP)
        assert [lvl.downsample for lvl in slide.levels] == [float(d) for d in DOWNSAMPLES]
        pixels = slide.region(1, 100, 50, 40, 30)  # level 1 coordinates
        truth = level0()[200:320, 400:560]  # the same window at level 0 (4x)
        assert pixels.shape == (30, 40, 3)
        assert np.abs(pixels.astype(float).mean(axis=(0, 1)) - truth.astype(float).mean(axis=(0, 1))).max() < 3
        # a window reaching past the edge is white glass there
        edge = slide.region(2, 250, 0, 20, 10)
        assert (edge[:, 6:] == 255).all() and edge[:, :6].max() < 255


def test_tissue_detection_recovers_the_planted_regions(slide_path):
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tissue import detect_tissue

    with Slide(slide_path) as slide:
        thumbnail, downsample = slide.thumbnail()
    mask, threshold = detect_tissue(thumbnail, MPP * downsample, min_saturation=0.05, min_area_um2=10000)
    truth = planted_mask(int(downsample))
    assert downsample == 16 and mask.shape == truth.shape
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou >= 0.9, iou
    assert threshold >= 0.05


def test_small_specks_are_dropped_and_blank_glass_has_no_tissue():
    from gpubio.histopathology.tissue import detect_tissue

    rng = np.random.default_rng(3)
    glass = np.clip(rng.normal(244, 2, (120, 160, 3)), 0, 255).astype(np.uint8)
    mask, _ = detect_tissue(glass, 4.0)
    assert not mask.any()
    specked = glass.copy()
    specked[10:14, 10:14] = (200, 60, 160)  # 16 px of 16 µm² = 256 µm²: dust
    specked[50:100, 60:140] = (214, 150, 214)  # 4000 px = 64000 µm²: tissue
    mask, _ = detect_tissue(specked, 4.0, min_area_um2=10000)
    assert mask.sum() == 50 * 80 and mask[50:100, 60:140].all()


@pytest.mark.parametrize("magnification, tile_size, min_fraction", [(20, 224, 0.6), (10, 256, 0.5), (20, 448, 0.3)])
def test_tile_grid_matches_the_planted_geometry(slide_path, magnification, tile_size, min_fraction):
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tiling import target_mpp, tile_grid
    from gpubio.histopathology.tissue import detect_tissue

    with Slide(slide_path) as slide:
        thumbnail, downsample = slide.thumbnail()
        mask, _ = detect_tissue(thumbnail, MPP * downsample)
        tiles = tile_grid(slide, mask, downsample, target_mpp(magnification, None), tile_size, min_fraction)
    side = round(tile_size * (10 / magnification) / MPP)  # level-0 px of one tile
    expected = expected_tiles(side, min_fraction)
    assert [(x, y) for x, y, _ in expected] == list(zip(tiles["x"], tiles["y"]))
    assert tiles["tissue_fraction"].to_numpy() == pytest.approx([f for _, _, f in expected], abs=0.02)
    assert (tiles["size_level0"] == side).all()
    # the finest level that is not finer than needed: 0.5 µm/px -> level 0 (2x), 1 µm/px -> level 1 (4x)
    assert set(tiles["level"]) == {0 if magnification == 20 else 1}


def test_the_20x_grid_of_224_px_tiles_has_23_tiles(slide_path):
    """The geometry by hand: 12 whole tiles of 'nuclei'; 'fibres' spans 3 x 5 tiles, of which
    the 4 corners are 9/16 covered (below 0.6) and the edges 3/4."""
    assert len(expected_tiles(448, 0.6)) == 12 + 15 - 4


def test_reading_tiles_never_loads_level_0_whole(slide_path):
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tiling import read_tile, tile_grid
    from gpubio.histopathology.tissue import detect_tissue

    level0_bytes = WIDTH * HEIGHT * 3
    tracemalloc.start()
    try:
        with Slide(slide_path) as slide:
            thumbnail, downsample = slide.thumbnail()
            mask, _ = detect_tissue(thumbnail, MPP * downsample)
            tiles = tile_grid(slide, mask, downsample, 0.5, 224, 0.6)
            means = [read_tile(slide, r.x, r.y, r.level, r.size_level0, 224).mean() for r in tiles.itertuples()]
        _, tiled_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        with Slide(slide_path) as slide:  # the measurement sees a whole-level read
            slide.region(0, 0, 0, WIDTH, HEIGHT)
        _, whole_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(means) == 23 and all(m < 240 for m in means)  # every tile shows tissue
    assert whole_peak >= level0_bytes
    # a 448 px tile touches at most 3 x 3 file tiles (~1.8 MB decoded); measured ~5 MB in all
    assert tiled_peak < level0_bytes / 4, (tiled_peak, level0_bytes)


def test_tiles_are_read_at_the_target_resolution(slide_path):
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tiling import read_tile

    full = level0()
    with Slide(slide_path) as slide:
        tile = read_tile(slide, 896, 448, 0, 448, 224)  # 0.5 µm/px from level 0
        coarse = read_tile(slide, 896, 448, 1, 896, 224)  # 1 µm/px from level 1
    blocks = full[448:896, 896:1344].reshape(224, 2, 224, 2, 3).astype(float).mean(axis=(1, 3))
    assert tile.shape == coarse.shape == (224, 224, 3)
    assert np.abs(tile - blocks).max() <= 1
    blocks4 = full[448:1344, 896:1792].reshape(224, 4, 224, 4, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(coarse - blocks4).max() <= 1


def test_released_layout_round_trip_and_tokenizer(model_dir, tmp_path):
    from gpubio.histopathology.model import ModelError, load_model

    loaded = load_model(model_dir)
    saved = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    assert json.loads((model_dir / "conch_ViT-B-16.json").read_text())["embed_dim"] == 16
    assert set(loaded.model.state_dict()) == set(saved)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    tokens = loaded.tokenizer.encode(["Purple NUCLEI", "an H&E image of tumor tissue with dense purple nuclei"], 12)
    # <start_of_text> words <end_of_text>, lower-cased, padded with <pad> = 0; a long text is cut with its end kept
    words = tokens[0][(tokens[0] > 2)]
    assert tokens[0].tolist() == [1, *words.tolist(), 2] + [0] * (10 - len(words))
    assert loaded.tokenizer.tokenizer.decode(words).strip() == "purple nuclei"
    assert tokens[1, 0] == 1 and tokens[1, -1] == 2 and (tokens[1] != 0).all()
    # a text's embedding does not depend on the other texts of its batch
    alone, together = loaded.embed_texts(["purple nuclei"]), loaded.embed_texts(["stroma", "purple nuclei"])
    assert alone.shape == (1, 16) and np.allclose(alone[0], together[1], atol=1e-6)

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("conch_ViT-B-16.json", "conch_byte_level_bpe_uncased.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelError, match="missing pytorch_model.bin"):
        load_model(broken)
    torch.save({k: v for k, v in saved.items() if not k.startswith("text.")}, broken / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"weights of CONCH's image and text towers are missing \(e.g. text\."):
        load_model(broken)


def test_zero_shot_probabilities_by_hand():
    from gpubio.histopathology.zero_shot import class_embeddings, class_probabilities

    prompts = {"a": np.array([[2.0, 0, 0], [0, 3.0, 0]]), "b": np.array([[0, 0, 5.0]])}
    names, classes = class_embeddings(prompts)
    assert names == ["a", "b"]
    assert classes == pytest.approx(np.array([[1 / math.sqrt(2), 1 / math.sqrt(2), 0], [0, 0, 1]]))
    tiles = np.array([[1.0, 0, 0], [0, 0, 4.0], [1.0, 1.0, math.sqrt(2)]])
    p = class_probabilities(tiles, classes, logit_scale=10.0)
    cos_a = 1 / math.sqrt(2)
    first = math.exp(10 * cos_a) / (math.exp(10 * cos_a) + 1)
    assert p[0] == pytest.approx([first, 1 - first])
    assert p[1] == pytest.approx([1 / (1 + math.exp(10)), 1 - 1 / (1 + math.exp(10))])
    assert p[2] == pytest.approx([0.5, 0.5])  # cosine 1/sqrt(2) with both classes


def test_the_tiny_model_labels_the_planted_textures(model_dir):
    from gpubio.histopathology.model import load_model
    from gpubio.histopathology.zero_shot import class_embeddings, class_probabilities
    from tiny_vlm import training_tiles

    model = load_model(model_dir)
    tiles, truth = training_tiles(level0(), 10, np.random.default_rng(99))  # places unseen in training
    names, classes = class_embeddings({name: model.embed_texts(texts) for name, texts in CLASSES.items()})
    p = class_probabilities(model.embed_images(tiles), classes, model.logit_scale)
    assert (p.argmax(axis=1) == truth).mean() >= 0.9


def test_a_single_level_slide_is_reduced_block_by_block(tmp_path):
    """Without a pyramid the thumbnail is made from level 0 in blocks, never read whole."""
    import tifffile

    from gpubio.histopathology.slide import Slide
    from independent.histopathology import reduce

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (600, 9000, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "flat.tif", image, photometric="rgb", tile=(256, 256))
    with Slide(tmp_path / "flat.tif", mpp=0.5) as slide:
        assert len(slide.levels) == 1 and slide.file_mpp is None and slide.mpp == 0.5
        thumbnail, downsample = slide.thumbnail()
    assert downsample == 3 and thumbnail.shape == (200, 3000, 3)  # 9000 px / 4096 -> factor 3
    assert np.abs(thumbnail.astype(int) - reduce(image, 3)).max() <= 1


@pytest.mark.parametrize(
    "name, options, mpp",
    [
        ("ome.ome.tif", {"metadata": {"axes": "YXS", "PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"}}, 0.5),
        (
            "aperio.svs",
            {
                "description": "Aperio Image Library v12.0.15\r\n512x512 (256x256) JPEG/RGB|AppMag = 20|MPP = 0.4990",
                "metadata": None,
            },
            0.499,
        ),
        ("inch.tif", {"resolution": (50800, 50800), "resolutionunit": "INCH"}, 0.5),
        ("unknown.tif", {"resolution": (72, 72), "resolutionunit": "INCH"}, None),  # a default, not a scan's
    ],
)
def test_the_resolution_is_read_from_each_kind_of_file(tmp_path, name, options, mpp):
    import tifffile

    from gpubio.histopathology.slide import Slide, slide_problem

    tifffile.imwrite(
        tmp_path / name, np.full((512, 512, 3), 200, np.uint8), photometric="rgb", tile=(256, 256), **options
    )
    with Slide(tmp_path / name) as slide:
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    assert (slide_problem(tmp_path / name, None) is None) == (mpp is not None)
    assert slide_problem(tmp_path / name, 0.25) is None  # the sheet's mpp makes any of them usable


def test_a_fluorescence_image_is_not_taken_for_a_slide(tmp_path):
    import tifffile

    from gpubio.histopathology.slide import slide_problem

    tifffile.imwrite(tmp_path / "cells.tif", np.zeros((2, 256, 256), np.uint16), metadata={"axes": "CYX"})
    assert slide_problem(tmp_path / "cells.tif", 0.25) == (
        "the first image is CYX (2, 256, 256), not an RGB slide (Y, X, 3 samples); give a brightfield (H&E) whole-slide image"
    )

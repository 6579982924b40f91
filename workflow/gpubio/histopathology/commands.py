"""Histopathology subcommands of `python -m gpubio`."""

from __future__ import annotations

import json
import logging
import time

log = logging.getLogger("gpubio")


def _tile_slide(args) -> None:
    import numpy as np
    import tifffile

    from gpubio.atomic import atomic_path, write_text_atomic
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tiling import target_mpp, tile_grid
    from gpubio.histopathology.tissue import detect_tissue

    with Slide(args.slide, args.mpp) as slide:
        thumbnail, downsample = slide.thumbnail()
        thumbnail_mpp = slide.mpp * downsample if slide.mpp else None
        mask, threshold = detect_tissue(thumbnail, thumbnail_mpp, args.min_saturation, args.min_area_um2)
        tile_mpp = target_mpp(args.magnification, args.target_mpp)
        tiles = tile_grid(slide, mask, downsample, tile_mpp, args.tile_size, args.min_tissue_fraction)
        levels = [[lvl.width, lvl.height, round(lvl.downsample, 4)] for lvl in slide.levels]
        summary = {
            "slide": args.slide,
            "levels": levels,
            "mpp": slide.mpp,
            "mpp_source": "sheet" if args.mpp else "file",
            "tile_mpp": tile_mpp,
            "tile_size": args.tile_size,
            "tile_size_level0": int(round(args.tile_size * tile_mpp / slide.mpp)),
            "read_level": int(tiles["level"].iloc[0]) if len(tiles) else None,
            "thumbnail_downsample": downsample,
            "saturation_threshold": round(threshold, 4),
            "tissue_fraction": round(float(mask.mean()), 4),
            "tiles": len(tiles),
        }
    log.info(
        "%s: %d x %d px at %.3g µm/px (%s), %d level(s); tissue %.1f%% of the thumbnail; %d tiles at %.3g µm/px",
        args.slide,
        levels[0][0],
        levels[0][1],
        summary["mpp"],
        summary["mpp_source"],
        len(levels),
        100 * summary["tissue_fraction"],
        len(tiles),
        tile_mpp,
    )
    if tiles.empty:
        raise SystemExit(
            f"gpubio: tile-slide: {args.slide}: no tile has tissue on >= {args.min_tissue_fraction:g} of its area; "
            "check the slide, or lower histopathology.tiling.min_tissue_fraction / tissue.min_saturation"
        )
    with atomic_path(args.out_mask) as tmp:
        tifffile.imwrite(tmp, mask.astype(np.uint8), metadata={"downsample": downsample})
    with atomic_path(args.out_tiles) as tmp:
        tiles.to_csv(tmp, sep="\t", index=False)
    write_text_atomic(args.out_json, json.dumps(summary, indent=2) + "\n")


def _embed_tiles(args) -> None:
    import anndata as ad
    import numpy as np
    import pandas as pd

    from gpubio.atomic import atomic_path
    from gpubio.gpu.job import step_torch_device
    from gpubio.histopathology.model import load_model
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.tiling import read_tile

    tiles = pd.read_csv(args.tiles, sep="\t")
    device = step_torch_device("tile embedding", args.threads)
    model = load_model(args.model, device)
    start, batches = time.perf_counter(), []
    with Slide(args.slide, args.mpp) as slide:
        for first in range(0, len(tiles), args.batch_size):
            chunk = tiles.iloc[first : first + args.batch_size]
            pixels = np.stack(
                [read_tile(slide, r.x, r.y, r.level, r.size_level0, args.tile_size) for r in chunk.itertuples()]
            )
            batches.append(model.embed_images(pixels))
    embeddings = np.concatenate(batches).astype(np.float32)
    log.info(
        "embedded %d tiles in %.1f s on %s (batch size %d, model %s)",
        len(tiles),
        time.perf_counter() - start,
        device,
        args.batch_size,
        args.model,
    )
    obs = tiles.copy()
    obs.index = [f"{x}_{y}" for x, y in zip(obs["x"], obs["y"])]
    adata = ad.AnnData(X=embeddings, obs=obs)
    adata.uns["histopathology"] = {
        "slide": args.slide,
        "sample": args.sample,
        "model": args.model,
        "device": str(device),
        "tile_size": args.tile_size,
        "embedding": "projected image embedding (not normalised)",
    }
    with atomic_path(args.out) as tmp:
        adata.write_h5ad(tmp)


def _zero_shot_labels(args) -> None:
    import anndata as ad
    import tifffile

    from gpubio.atomic import atomic_path
    from gpubio.gpu.job import step_torch_device
    from gpubio.histopathology.model import load_model
    from gpubio.histopathology.plots import write_heatmap_png
    from gpubio.histopathology.slide import Slide
    from gpubio.histopathology.zero_shot import class_embeddings, class_probabilities, label_table, slide_fractions

    prompts = {name: texts for name, *texts in args.class_prompts}
    model = load_model(args.model, step_torch_device("prompt embedding", args.threads))
    names, classes = class_embeddings({name: model.embed_texts(texts) for name, texts in prompts.items()})
    adata = ad.read_h5ad(args.embeddings)
    probabilities = class_probabilities(adata.X, classes, model.logit_scale)
    labels = label_table(adata.obs, names, probabilities)
    fractions = slide_fractions(labels, names)
    log.info(
        "%s: %d tiles; %s (logit scale %.3g)",
        args.sample,
        len(labels),
        ", ".join(f"{n} {f:.1%}" for n, f in fractions.items()),
        model.logit_scale,
    )
    with atomic_path(args.out_tsv) as tmp:
        labels.to_csv(tmp, sep="\t", index=False)
    mask = tifffile.imread(args.mask).astype(bool)
    with Slide(args.slide, args.mpp) as slide:
        thumbnail, downsample = slide.thumbnail()
    title = f"{args.sample}: " + ", ".join(f"{n} {f:.0%}" for n, f in fractions.items())
    write_heatmap_png(args.out_png, thumbnail, mask, downsample, labels, names, title)


def _slide_fractions(args) -> None:
    import pandas as pd

    from gpubio.atomic import atomic_path
    from gpubio.histopathology.plots import write_fractions_png

    rows = []
    for sample, path in zip(args.samples, args.labels):
        labels = pd.read_csv(path, sep="\t")
        names = [c[2:] for c in labels.columns if c.startswith("p_")]
        counts = labels["label"].value_counts()
        rows.append(
            {"sample": sample, "tiles": len(labels), **{n: round(counts.get(n, 0) / len(labels), 6) for n in names}}
        )
    table = pd.DataFrame(rows)
    with atomic_path(args.out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    write_fractions_png(args.out_png, table)


def register(sub) -> None:
    from gpubio.steps import add_step_options

    slide_help = "the whole-slide image (SVS, pyramidal TIFF, OME-TIFF)"
    mpp_help = "microns per pixel at level 0 (the sheet's mpp); default: what the file says"

    p = sub.add_parser("tile-slide", help="tissue detection on a thumbnail and the tile grid over the tissue")
    p.add_argument("slide", help=slide_help)
    p.add_argument("--mpp", type=float, help=mpp_help)
    add_step_options(p, "tile-slide")  # --target-mpp, when given, is used instead of --magnification
    p.add_argument("--out-tiles", required=True)
    p.add_argument("--out-mask", required=True)
    p.add_argument("--out-json", required=True)
    p.set_defaults(func=_tile_slide)

    p = sub.add_parser("embed-tiles", help="image embeddings of a slide's tiles with a local vision-language model")
    p.add_argument("slide", help=slide_help)
    p.add_argument("tiles", help="tiles.tsv of tile-slide")
    p.add_argument("--mpp", type=float, help=mpp_help)
    p.add_argument("--sample", required=True)
    p.add_argument(
        "--model", required=True, help="CONCH weights directory: pytorch_model.bin, conch_byte_level_bpe_uncased.json"
    )
    add_step_options(p, "embed-tiles")
    p.add_argument("--out", required=True, help="the .h5ad (X: embeddings; obs: x, y, level, tissue_fraction)")
    p.set_defaults(func=_embed_tiles)

    p = sub.add_parser("zero-shot-labels", help="tile labels from text prompts; the slide heatmap")
    p.add_argument("slide", help=slide_help)
    p.add_argument("embeddings", help="embeddings.h5ad of embed-tiles")
    p.add_argument("mask", help="tissue mask of tile-slide")
    p.add_argument("--mpp", type=float, help=mpp_help)
    p.add_argument("--sample", required=True)
    p.add_argument("--model", required=True)
    p.add_argument(
        "--class",
        dest="class_prompts",
        nargs="+",
        action="append",
        required=True,
        metavar="NAME PROMPT",
        help="a class name and its prompt(s); repeat per class",
    )
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=_zero_shot_labels)

    p = sub.add_parser("slide-fractions", help="per-slide class fractions of all slides: table and figure")
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--labels", nargs="+", required=True, help="labels.tsv per sample, in the order of --samples")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=_slide_fractions)

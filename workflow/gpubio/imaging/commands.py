"""Imaging subcommands of `python -m gpubio`."""

from __future__ import annotations

import json
import logging

log = logging.getLogger("gpubio")


def _image_qc(args) -> None:
    from gpubio.imaging.qc import write_image_qc

    result = write_image_qc(args.image, args.out, args.max_saturated_fraction)
    log.info("image QC: %s x %d channels", result["shape"], result["channels"])
    if result["saturation_flag"]:
        log.warning("saturated pixels above %.3g in %s", args.max_saturated_fraction, args.image)


def _register_image(args) -> None:
    import numpy as np

    from gpubio.atomic import write_text_atomic
    from gpubio.image_io import read_image, write_image
    from gpubio.imaging.registration import (
        ncc,
        on_grid,
        register_elastix,
        register_learned,
        rigid_parameters,
        write_checkerboard_png,
    )

    image, _ = read_image(args.image)
    reference, _ = read_image(args.reference)
    channel = args.channel - 1
    for name, data in (("image", image), ("reference", reference)):
        if not 0 <= channel < data.shape[0]:
            raise SystemExit(
                f"gpubio: register-image: channel {args.channel} does not exist in the {name} ({data.shape[0]} channel(s))"
            )
    size, grid = image.shape[1:], reference.shape[1:]
    if size != grid:  # accepted (README, Imaging: Inputs): the reference's grid is the result's
        log.info(
            "note: the image is %d x %d px and its reference %d x %d px: the image is registered onto the "
            "reference's pixel grid (1 px = 1 px), so the registered image, its masks and cells are %d x %d px; "
            "image parts outside the reference are cut off, reference pixels it does not cover are 0 (footprint.tif)",
            *size,
            *grid,
            *grid,
        )
    if args.method == "elastix":
        log.info(
            "registration: itk-elastix, transforms %s on %d CPU thread(s)",
            args.parameter_files or args.transforms,
            args.threads,
        )
        result = register_elastix(
            reference,
            image,
            channel=channel,
            transforms=args.transforms,
            grid_spacing=args.grid_spacing,
            iterations=args.elastix_iterations or None,  # 0: elastix's own default
            parameter_files=args.parameter_files or (),
            threads=args.threads,
        )
    else:
        from gpubio.gpu.job import step_torch_device

        device = step_torch_device("learned registration", args.threads)
        result = register_learned(
            reference,
            image,
            channel=channel,
            transform=args.learned_transform,
            deformable=args.deformable,
            iterations=args.learned_iterations,
            learning_rate=args.learning_rate,
            smoothness=args.smoothness,
            device=device,
        )
    fixed = reference[channel]
    before = ncc(on_grid(image[channel], fixed.shape), fixed)
    after = ncc(result.registered[channel], fixed, result.valid)
    centre = [(fixed.shape[0] - 1) / 2, (fixed.shape[1] - 1) / 2]
    log.info(
        "NCC with the reference: %.4f before, %.4f after (%.1f%% of the reference covered)",
        before,
        after,
        100 * result.valid.mean(),
    )
    dtype = image.dtype
    registered = result.registered
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        registered = np.clip(np.rint(registered), info.min, info.max)
    write_image(args.out_image, registered.astype(dtype))
    if args.out_footprint:  # which pixels the image covers: segmentation normalises over these only
        write_image(args.out_footprint, result.valid.astype(np.uint8), axes="YX")
    summary = {
        "method": result.method,
        "image": args.image,
        "reference": args.reference,
        "image_shape": list(size),
        "reference_shape": list(grid),
        "channel": args.channel,
        "ncc_before": before,
        "ncc_after": after,
        "covered_fraction": float(result.valid.mean()),
        "matrix_rc": result.matrix.tolist(),
        "matrix_meaning": "reference pixel (r, c) shows the image at matrix_rc @ (r, c, 1), plus any local deformation",
        "rigid": rigid_parameters(result.matrix, centre),
        **result.details,
    }
    write_text_atomic(args.out_transform, json.dumps(summary, indent=2) + "\n")
    write_checkerboard_png(
        args.out_png,
        fixed,
        on_grid(image[channel], fixed.shape),
        result.registered[channel],
        before,
        after,
        title=f"{args.sample or args.image}: {result.method} registration to the reference",
    )


def _train_cellpose(args) -> None:
    import shutil
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from gpubio.atomic import atomic_path, scratch_dir, write_text_atomic
    from gpubio.imaging import training as judged
    from gpubio.imaging.cellpose_models import (
        ModelChoice,
        import_cellpose,
        load_training_set,
        median_diameter,
        resolve_model,
        train_model,
    )

    channels = tuple(args.channels)
    pairs, images, labels = load_training_set(args.images, channels)
    train = judged.ImageSet(images, labels, [p.name for p, _ in pairs])
    diameter = median_diameter(labels)
    if args.validation:
        held, held_images, held_labels = load_training_set(args.validation, channels, "imaging.training.validation")
        validation = judged.ImageSet(held_images, held_labels, [p.name for p, _ in held])
        source = f"folder {args.validation}"
    elif args.validation_fraction > 0:
        train, validation = judged.hold_out(train, args.validation_fraction, diameter)
        source = f"the last {args.validation_fraction:.0%} of each training image along its longer side"
    else:
        validation, source = None, "none (imaging.training.validation_fraction: 0)"
    from gpubio.gpu.job import step_torch_device

    device = step_torch_device("Cellpose training", args.threads)
    cellpose = import_cellpose()
    base = None if args.base_model in ("", "none") else resolve_model(args.base_model, cellpose, args.download_models)
    log.info(
        "training cellpose %s on %d image(s) (%d objects, median diameter %.1f px), %s, %d steps of %d crops; "
        "validation: %s%s",
        cellpose.version,
        len(train.images),
        train.objects(),
        diameter,
        f"from {base.describe()}" if base else "from scratch",
        args.steps,
        args.batch_size,
        source,
        f" ({len(validation.images)} image(s), {validation.objects()} objects)" if validation else "",
    )
    judge = None
    if validation:
        settings = {
            "diameter": args.diameter,
            "flow_threshold": args.flow_threshold,
            "cellprob_threshold": args.cellprob_threshold,
            "min_size": args.min_size,
        }
        judge = judged.Judge(validation, diameter, settings, device, cellpose)
        classical = judge.classical()
        log.info(
            "validation, classical Otsu + watershed: AP@0.5 %.3f, AP@0.75 %.3f", classical["ap_50"], classical["ap_75"]
        )
        builtin = judged.builtin_baseline(args.base_model, cellpose, args.download_models)
        if builtin:
            row = judge.cellpose_model(builtin.name, builtin, diameter=args.diameter or diameter)
            log.info("validation, built-in %s: AP@0.5 %.3f, AP@0.75 %.3f", builtin.name, row["ap_50"], row["ap_75"])

    def validate(path: Path, step: int) -> None:
        row = judge.cellpose_model(
            judged.TRAINED, ModelChoice(path.name, path, builtin=False), step=step, crops_seen=step * args.batch_size
        )
        log.info(
            "validation at step %d/%d (%d crops): AP@0.5 %.3f, AP@0.75 %.3f (%d of %d objects predicted)",
            step,
            args.steps,
            step * args.batch_size,
            row["ap_50"],
            row["ap_75"],
            row["predicted"],
            row["objects"],
        )

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    out = Path(args.out)
    start = time.perf_counter()
    with scratch_dir(out, "train") as work:  # also removes what a killed training left
        result = train_model(
            train.images,
            train.labels,
            work,
            model_name=out.name,
            device=device,
            base_model=base,
            cellpose=cellpose,
            steps=args.steps,
            learning_rate=args.learning_rate,
            weight_decay=args.weight_decay,
            batch_size=args.batch_size,
            crop_size=args.crop_size,
            object_diameter=args.network_diameter,
            contrast_copies=tuple(args.contrast_copies),
            validation=(validation.images, validation.labels) if validation else None,
            checkpoint_every=args.validate_every if judge else 0,
            on_checkpoint=validate if judge else None,
        )
        with atomic_path(out) as tmp:
            shutil.move(result["model"], tmp)
    seconds = time.perf_counter() - start
    losses = result["losses"]
    log.info("trained in %.1f s; loss %.4f -> %.4f; model %s", seconds, losses[0], losses[-1], out)
    rows = judge.rows if judge else []
    previous = 0
    for row in (r for r in rows if r["model"] == judged.TRAINED):  # mean training loss since the last checkpoint
        row["train_loss"] = float(np.mean(losses[previous : row["step"]]))
        previous = row["step"]
    warnings = (
        judged.verdict(judge)
        if judge
        else [
            "the trained model was not judged: there are no validation images (imaging.training.validation is empty "
            "and validation_fraction is 0); set one of them to see how well it segments"
        ]
    )
    for warning in warnings:
        log.warning("%s", warning)
    summary = {
        "model": str(out),
        "images": [str(p) for p, _ in pairs],
        "objects": int(sum(len(np.unique(lab)) - 1 for lab in labels)),
        "median_diameter_px": result["diameter"],
        "network_diameter_px": result["network_diameter"],
        "validation": {
            "source": source,
            "images": validation.names if validation else [],
            "objects": validation.objects() if validation else 0,
        },
        "scores": rows,
        "warnings": warnings,
        "cellpose_version": cellpose.version,
        "base_model": base.describe() if base else None,
        "device": str(device),
        "steps": args.steps,
        "crops_seen": args.steps * args.batch_size,
        "learning_rate": result["learning_rate"],
        "weight_decay": result["weight_decay"],
        "batch_size": args.batch_size,
        "crop_size": result["crop_size"],
        "seconds": round(seconds, 2),
        "losses": losses,
        "validation_losses": result["validation_losses"],
    }
    write_text_atomic(args.out_json, json.dumps(summary, indent=2) + "\n")
    if args.out_tsv:
        judged.write_validation_table(rows, args.out_tsv)
    if args.out_png:
        title = (
            f"Cellpose training: {len(train.images)} image(s), {args.steps} steps x {args.batch_size} crops; "
            f"validation: {len(validation.images) if validation else 0} image(s)"
        )
        judged.write_training_png(args.out_png, losses, judge, warnings, title)


def _segment_cells(args) -> None:
    from gpubio.atomic import write_text_atomic
    from gpubio.gpu.job import step_torch_device
    from gpubio.imaging.cellpose_models import CellposeSegmenter, import_cellpose, resolve_model
    from gpubio.imaging.tiling import no_cell_warning, segment_file

    device = step_torch_device("Cellpose segmentation", args.threads)
    cellpose = import_cellpose()
    choice = resolve_model(args.model, cellpose, args.download_models)
    log.info("cellpose %s, %s", cellpose.version, choice.describe())
    segmenter = CellposeSegmenter(
        choice,
        device,
        cellpose=cellpose,
        diameter=args.diameter,
        flow_threshold=args.flow_threshold,
        cellprob_threshold=args.cellprob_threshold,
        batch_size=args.batch_size,
        min_size=args.min_size,
    )
    summary = segment_file(
        args.image,
        args.out_masks,
        segmenter,
        tuple(args.channels),
        args.tile_size,
        args.tile_overlap,
        footprint=args.footprint,
        diameter=args.diameter,
    )
    summary |= {"model": choice.describe(), "cellpose_version": cellpose.version, "device": str(device)}
    log.info(
        "%d cells in %.1f s (%.3g megapixels/s)", summary["cells"], summary["seconds"], summary["megapixels_per_s"]
    )
    warning = no_cell_warning(summary, args.sample or args.image)
    summary["warnings"] = [warning] if warning else []
    if warning:
        log.warning("%s", warning)
    write_text_atomic(args.out_json, json.dumps(summary, indent=2) + "\n")


def _segmentation_summary(args) -> None:
    from pathlib import Path

    import pandas as pd

    from gpubio.atomic import atomic_path

    rows = []
    for path in args.records:
        record = json.loads(Path(path).read_text())
        rows.append(
            {
                "sample": Path(path).parent.name,
                "cells": record["cells"],
                "foreground_objects": record.get("foreground_objects"),
                "model": record.get("model"),
                "device": record.get("device"),
                "seconds": record.get("seconds"),
                "warning": " | ".join(record.get("warnings", [])),
            }
        )
        for warning in record.get("warnings", []):
            log.warning("%s", warning)
    with atomic_path(args.out_tsv) as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
    log.info("%d sample(s), %d with a warning", len(rows), sum(bool(r["warning"]) for r in rows))


def _restore_image(args) -> None:
    from gpubio.atomic import write_text_atomic
    from gpubio.gpu.job import step_torch_device
    from gpubio.imaging.cellpose_models import import_cellpose
    from gpubio.imaging.restoration import (
        CellposeRestorer,
        resolve_restoration_model,
        restore_file,
        write_restoration_png,
    )

    device = step_torch_device("Cellpose restoration", args.threads)
    cellpose = import_cellpose()
    choice = resolve_restoration_model(args.model, cellpose, args.download_models)
    log.info("cellpose %s, restoration %s", cellpose.version, choice.describe())
    restorer = CellposeRestorer(choice, device, cellpose, diameter=args.diameter)
    channels = tuple(args.channels)
    summary = restore_file(
        args.image, args.out_image, restorer, channels, args.tile_size, args.tile_overlap, footprint=args.footprint
    )
    summary |= {"model": choice.describe(), "cellpose_version": cellpose.version, "device": str(device)}
    log.info("restored in %.1f s (%.3g megapixels/s)", summary["seconds"], summary["megapixels_per_s"])
    write_text_atomic(args.out_json, json.dumps(summary, indent=2) + "\n")
    title = f"{args.sample or args.image}: restoration with {choice.name}"
    write_restoration_png(args.out_png, args.image, args.out_image, channels, summary["normalisation"], title)


def _cell_features(args) -> None:
    from gpubio.atomic import atomic_path
    from gpubio.image_io import TiffImage
    from gpubio.imaging.features import cell_features, write_overlay_png

    image, masks = TiffImage(args.image), TiffImage(args.masks)
    table = cell_features(image, masks, args.sample)
    with atomic_path(args.out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    channel = max(args.channel, 1) - 1
    write_overlay_png(args.out_png, image, masks, channel, f"{args.sample}: {len(table)} cells")
    log.info("%s: %d cells measured", args.sample, len(table))


def register(sub) -> None:
    from gpubio.steps import add_step_options

    # every setting's option, default and help come from the schema (gpubio.steps)
    p = sub.add_parser("image-qc", help="shape, channels, intensity range and saturation of an image")
    p.add_argument("image")
    p.add_argument("--out", required=True)
    add_step_options(p, "image-qc")
    p.set_defaults(func=_image_qc)

    p = sub.add_parser("register-image", help="register an image to its reference (itk-elastix or learned, torch)")
    p.add_argument("image")
    p.add_argument("--reference", required=True)
    p.add_argument("--sample", default="")
    add_step_options(p, "register-image")  # the settings of both methods; --method picks one
    p.add_argument("--out-image", required=True)
    p.add_argument("--out-transform", required=True)
    p.add_argument("--out-png", required=True)
    p.add_argument("--out-footprint", help="also write the pixels the image covers (uint8 TIFF, 1 = covered)")
    p.set_defaults(func=_register_image)

    model_help = "built-in name (cyto3, nuclei; cpsam with Cellpose 4) or a model file"
    p = sub.add_parser(
        "train-cellpose",
        help="train a Cellpose model on a folder of <name>.tif + <name>_masks.tif, judged on validation images",
    )
    p.add_argument("--images", required=True, help="the training folder")
    add_step_options(p, "train-cellpose")  # training settings, and segmentation's for validation
    p.add_argument("--out", required=True, help="the model file")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-tsv", help="validation scores of the model and the baselines")
    p.add_argument("--out-png", help="training loss and validation scores")
    p.set_defaults(func=_train_cellpose)

    p = sub.add_parser("segment-cells", help="Cellpose segmentation, tiled for large images")
    p.add_argument("image")
    p.add_argument("--sample", default="", help="the sample's name, for its warnings")
    p.add_argument("--model", required=True, help=model_help)
    add_step_options(p, "segment-cells")
    p.add_argument("--footprint", help="a registered image's footprint: normalise over its covered pixels only")
    p.add_argument("--out-masks", required=True)
    p.add_argument("--out-json", required=True)
    p.set_defaults(func=_segment_cells)

    p = sub.add_parser("segmentation-summary", help="cells per sample and segmentation warnings, one table")
    p.add_argument("records", nargs="+", help="segmentation.json files (results/imaging/<sample>/)")
    p.add_argument("--out-tsv", required=True)
    p.set_defaults(func=_segmentation_summary)

    p = sub.add_parser("restore-image", help="Cellpose 3 image restoration (denoise, deblur, upsample), tiled")
    p.add_argument("image")
    p.add_argument("--model", required=True, help="built-in restoration model (denoise_cyto3, ...) or a model file")
    p.add_argument("--sample", default="")
    add_step_options(p, "restore-image")
    p.add_argument("--footprint", help="a registered image's footprint: normalise over its covered pixels only")
    p.add_argument("--out-image", required=True, help="float32 TIFF: restored segmentation (and nuclear) channel")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-png", required=True, help="raw and restored side by side")
    p.set_defaults(func=_restore_image)

    p = sub.add_parser("cell-features", help="per-cell area, centroid, eccentricity, channel means; QC overlay")
    p.add_argument("image")
    p.add_argument("masks")
    p.add_argument("--sample", required=True)
    p.add_argument("--channel", type=int, default=1, help="1-based channel shown in the overlay")
    p.add_argument("--out-tsv", required=True)
    p.add_argument("--out-png", required=True)
    p.set_defaults(func=_cell_features)

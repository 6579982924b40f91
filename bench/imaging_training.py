"""Cellpose training on real nuclei with the shipped settings: train on one half of an
annotated fluorescence image, segment the other half, score both against the expert masks.

The training settings are the ones a lab gets: the schema's defaults with the `imaging:`
section of config/config.yaml on top (`--config` for another file), turned into the command
line the workflow's rule runs (`gpubio train-cellpose`, with its validation strips and
baselines); the held-out half is segmented by the rule's own command (`gpubio
segment-cells`). Each half is scored with average precision at IoU 0.5 and 0.75 against its
masks, and so is a classical Otsu + watershed segmentation of the same half (told the
training cells' median diameter, as the trained model is), the baseline the model must beat.

Images: the bundled DSB 2018 nuclei image (tests/data/nuclei, CC0), any `--pair IMAGE MASKS`
(TIFFs: a 2D image and its label image), or `--dsb DIR`: a sample folder of the Data Science
Bowl 2018 stage 1 training set (images/<id>.png, masks/*.png, one mask per nucleus; CC0).
`--split` chooses the halves: lr (train on the left half, score the right), rl, tb, bt.

    python bench/imaging_training.py [--pair IMAGE MASKS ...] [--dsb DIR ...] [--split lr ...]
                                     [--threads 2] [--config config/config.yaml]
                                     [--out bench/results/imaging_training.md] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

NUCLEI = REPO / "tests" / "data" / "nuclei"
SPLITS = {"lr": ("left", "right"), "rl": ("right", "left"), "tb": ("top", "bottom"), "bt": ("bottom", "top")}


def half(array, name: str):
    h, w = array.shape[-2:]
    return {
        "left": array[..., :, : w // 2],
        "right": array[..., :, w // 2 :],
        "top": array[..., : h // 2, :],
        "bottom": array[..., h // 2 :, :],
    }[name]


def read_dsb_sample(folder: Path):
    """A DSB 2018 stage 1 sample: the image's first channel (grey) and a label image of its masks."""
    import imageio.v3 as iio
    import numpy as np

    image = iio.imread(next((folder / "images").glob("*.png")))
    image = image[..., 0] if image.ndim == 3 else image
    labels = np.zeros(image.shape, np.uint16)
    for k, mask in enumerate(sorted((folder / "masks").glob("*.png")), start=1):
        labels[iio.imread(mask) > 0] = k
    return image, labels


def gpubio(args: list[str], threads: int, log: Path) -> float:
    """Run `python -m gpubio` with its output in `log`; the wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "gpubio", "--threads", str(threads), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHONPATH": str(REPO / "workflow")},
        )
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(args[:2])} failed; see {log}")
    return time.perf_counter() - start


def run_case(name: str, image, masks, split: str, settings: dict, threads: int, work: Path) -> dict:
    import numpy as np
    import tifffile

    from gpubio.imaging.cellpose_models import median_diameter
    from gpubio.imaging.classical import otsu_watershed
    from gpubio.imaging.metrics import average_precision
    from gpubio.imaging.settings import segmentation_options, training_options

    train_part, test_part = SPLITS[split]
    case = work / f"{name}-{split}"
    (case / "train").mkdir(parents=True)
    tifffile.imwrite(case / "train" / "half.tif", half(image, train_part))
    tifffile.imwrite(case / "train" / "half_masks.tif", half(masks, train_part))
    tifffile.imwrite(case / "test.tif", half(image, test_part))
    truth = half(masks, test_part)
    model = case / "model" / "cellpose_trained"
    options = shlex.split(training_options(settings))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    train_s = gpubio(
        ["train-cellpose", "--images", str(case / "train"), *options, "--out", str(model)]
        + ["--out-json", str(case / "model" / "training.json"), "--out-tsv", str(case / "model" / "validation.tsv")]
        + ["--out-png", str(case / "model" / "training.png")],
        threads,
        case / "train.log",
    )
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()[0]
    segment_s = gpubio(
        ["segment-cells", str(case / "test.tif"), "--sample", name, "--model", str(model)]
        + shlex.split(segmentation_options(settings))
        + ["--out-masks", str(case / "masks.tif"), "--out-json", str(case / "segmentation.json")],
        threads,
        case / "segment.log",
    )
    predicted = tifffile.imread(case / "masks.tif")
    diameter = median_diameter([np.asarray(half(masks, train_part), dtype=np.int64)])
    classical = otsu_watershed(half(image, test_part), diameter)
    training = json.loads((case / "model" / "training.json").read_text())
    final = [row for row in training["scores"] if row["model"] == "trained"]
    result = {
        "image": name,
        "split": f"{train_part} -> {test_part}",
        "train_objects": int(len(np.unique(half(masks, train_part))) - 1),
        "test_objects": int(len(np.unique(truth)) - 1),
        "diameter_px": round(diameter, 1),
        "train_s": round(train_s, 1),
        "train_cpu_s": round(
            (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime), 1
        ),
        "load": [round(load_before, 1), round(load_after, 1)],
        "segment_s": round(segment_s, 1),
        "validation_ap_50": round(final[-1]["ap_50"], 3) if final else None,
        "warnings": training["warnings"],
    }
    for t in (0.5, 0.75):
        key = round(t * 100)
        result[f"trained_ap_{key}"] = round(average_precision(truth, predicted, t)["ap"], 3)
        result[f"otsu_ap_{key}"] = round(average_precision(truth, classical, t)["ap"], 3)
    result["passes"] = result["trained_ap_50"] >= 0.80 and result["trained_ap_50"] - result["otsu_ap_50"] >= 0.10
    print(json.dumps(result), flush=True)
    return result


def write_report(path: Path, results: list[dict], command: str, settings: dict, threads: int) -> None:
    t = settings["training"]
    lines = [
        "# Imaging: Cellpose training on real nuclei, with the shipped settings",
        "",
        f"`{command}` on {platform.machine()} with {os.cpu_count()} CPU cores, {threads} torch thread(s)"
        f" (Python {platform.python_version()}); device: cpu.",
        "",
        "Each case trains a Cellpose model on one half of a real fluorescence image of nuclei with expert masks",
        "(`gpubio train-cellpose`, the rule's command, with the schema defaults and config/config.yaml's `imaging:`",
        f"settings: {t['steps']} steps of {t['batch_size']} crops, crop size {t['crop_size'] or 'default'}, network",
        f"diameter {t['network_diameter']} px, learning rate {t['learning_rate'] or 'default'}, from"
        f" {'scratch' if t['base_model'] == 'none' else t['base_model']}; the last"
        f" {t['validation_fraction']:.0%} of the training half is held out for validation), then segments the other",
        "half (`gpubio segment-cells`, the shipped segmentation settings) and scores it against its masks:",
        "average precision (AP = TP / (TP + FP + FN)) at IoU 0.5 and 0.75. The baseline is Otsu's threshold +",
        "a distance-transform watershed (`gpubio.imaging.classical`) on the same half, told the training",
        "cells' median diameter. The issue's bar: AP@0.5 >= 0.80 and >= 0.10 above the baseline.",
        "",
        "| image | split | cells train / test | diameter (px) | train (s) | train CPU (s) | load before / after"
        " | validation AP@0.5 | AP@0.5 trained | AP@0.5 Otsu | AP@0.75 trained | AP@0.75 Otsu | bar met |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['image']} | {r['split']} | {r['train_objects']} / {r['test_objects']} | {r['diameter_px']}"
            f" | {r['train_s']:.0f} | {r['train_cpu_s']:.0f} | {r['load'][0]} / {r['load'][1]}"
            f" | {r['validation_ap_50']} | {r['trained_ap_50']:.3f} | {r['otsu_ap_50']:.3f}"
            f" | {r['trained_ap_75']:.3f} | {r['otsu_ap_75']:.3f} | {'yes' if r['passes'] else 'no'} |"
        )
    warned = [r for r in results if r["warnings"]]
    if warned:
        lines += ["", "Warnings of the training step:"]
        lines += [f"- {r['image']} ({r['split']}): {w}" for r in warned for w in r["warnings"]]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    import numpy as np
    import tifffile
    import yaml

    from gpubio.imaging.settings import imaging_settings

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pair", nargs=2, action="append", metavar=("IMAGE", "MASKS"), default=[])
    parser.add_argument("--dsb", type=Path, action="append", default=[], help="a DSB 2018 stage 1 sample folder")
    parser.add_argument("--split", action="append", choices=sorted(SPLITS), help="default: lr")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "config.yaml")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "imaging_training.md")
    parser.add_argument("--keep", type=Path, help="keep each case's model, logs and masks in this folder")
    args = parser.parse_args()

    settings = imaging_settings(yaml.safe_load(args.config.read_text()))
    cases = [(Path(i).stem, tifffile.imread(i), tifffile.imread(m)) for i, m in args.pair]
    cases += [(d.name[:12], *read_dsb_sample(d)) for d in args.dsb]
    if not cases:
        cases = [
            (
                "dsb2018_nuclei",
                tifffile.imread(NUCLEI / "dsb2018_nuclei.tif"),
                tifffile.imread(NUCLEI / "dsb2018_nuclei_masks.tif"),
            )
        ]
    results = []
    with tempfile.TemporaryDirectory(prefix="gpubio-training-bench-") as work:
        work = args.keep or Path(work)
        for name, image, masks in cases:
            for split in args.split or ["lr"]:
                results.append(
                    run_case(name, np.asarray(image), np.asarray(masks), split, settings, args.threads, work)
                )
    command = shlex.join(["python", "bench/imaging_training.py", *sys.argv[1:]])
    write_report(args.out, results, command, settings, args.threads)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

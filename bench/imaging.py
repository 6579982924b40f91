"""Tiled Cellpose segmentation on the CPU: time and peak memory against image size.

Synthetic 2-channel nuclei images (the demo's nuclei: radii 6-10 px) of 1k, 4k and 8k px per
side are segmented by the workflow's own command, `python -m gpubio segment-cells`, with
the demo's trained model (trained here first, as the demo does, unless --model is given),
each size in a fresh process. Time is wall time of that process; memory its peak resident
set (from wait4). The large images are written as tiled, compressed TIFFs (as microscopes
write whole slides), so the reader never holds a whole plane; the masks go to disk tile
by tile. The expected cell count is known (a 1k block of nuclei repeated), so the tiled
result is checked too. With a GPU, the same runs on it give GPU megapixels/s (--device).

    python bench/imaging.py [--sizes 1024 4096 8192] [--tile-size 2048] [--threads 2]
                            [--model PATH] [--out bench/results/imaging.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

BLOCK = 1024  # side of the block of nuclei the large images repeat
DEMO_DIAMETER = 15.5  # the demo model's training objects (radii 6-10 px)


def make_block(scale: float, seed: int = 0):
    """(2, 1024, 1024) uint16 nuclei `scale` x the demo's size, and their count."""
    import numpy as np

    from gpubio.demo.imaging import random_nuclei, render, to_image

    rng = np.random.default_rng(seed)
    n = int(600 / scale**2)
    nuclei = random_nuclei(rng, (BLOCK, BLOCK), n, radius=(6.0 * scale, 10.0 * scale), margin=4.0 * scale)
    labels, brightness = render(nuclei, (BLOCK, BLOCK))
    return to_image(rng, labels, brightness), len(nuclei)


def write_image(path: Path, block, size: int) -> None:
    """The block repeated to size x size, written tile by tile as a tiled zlib TIFF."""
    import numpy as np
    import tifffile

    reps = size // BLOCK

    def tiles():  # channel by channel, tiles row by row (planar TIFF)
        for plane in block:
            for ty in range(0, size, 512):
                for tx in range(0, size, 512):
                    yield plane[ty % BLOCK : ty % BLOCK + 512, tx % BLOCK : tx % BLOCK + 512]

    assert reps * BLOCK == size
    tifffile.imwrite(
        path, tiles(), shape=(2, size, size), dtype=np.uint16, tile=(512, 512), compression="zlib",
        metadata={"axes": "CYX"}, photometric="minisblack", planarconfig="separate",
    )  # fmt: skip


def train_demo_model(workdir: Path, threads: int) -> Path:
    """The demo's model, trained with the demo's settings (config/config.yaml)."""
    import numpy as np
    import yaml

    from gpubio.demo.imaging import make_imaging
    from gpubio.imaging.settings import imaging_settings, training_options

    make_imaging(workdir / "demo", np.random.default_rng([1, 2]))
    settings = imaging_settings(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    model = workdir / "cellpose_trained"
    cmd = [sys.executable, "-m", "gpubio", "--threads", str(threads), "train-cellpose", "--images",
           str(workdir / "demo" / "train"), *training_options(settings).split(), "--out", str(model),
           "--out-json", str(workdir / "training.json")]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=os.environ | {"PYTHONPATH": str(REPO / "workflow")})
    print(f"trained the demo model in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def segment(image: Path, model: Path, out: Path, args, log: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (MB) and the summary of one segment-cells process."""
    cmd = [sys.executable, "-m", "gpubio", "--threads", str(args.threads), "--gpus", "1", "segment-cells", str(image),
           "--model", str(model), "--channels", "1", "0", "--diameter", f"{DEMO_DIAMETER * args.scale:g}",
           "--tile-size", str(args.tile_size), "--tile-overlap", str(args.tile_overlap),
           "--out-masks", str(out), "--out-json", str(out.with_suffix(".json"))]  # fmt: skip
    start = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(REPO / "workflow")})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"segment-cells failed on {image}; see {log}")
    return seconds, usage.ru_maxrss / 1024, json.loads(out.with_suffix(".json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--tile-size", type=int, default=2048)
    parser.add_argument("--tile-overlap", type=int, default=64)
    parser.add_argument(
        "--scale", type=float, default=2.0,
        help="nuclei this many times the demo's size; Cellpose scales the image down by as much before its "
        "network (--diameter), which keeps the run short on a few CPU cores",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, help="a trained Cellpose model (default: train the demo's)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/imaging.md")
    parser.add_argument("--workdir", type=Path, help="keep images and masks here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gpubio-bench-imaging-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model or train_demo_model(workdir, args.threads)
        block, per_block = make_block(args.scale)
        rows = []
        for size in args.sizes:
            image = workdir / f"nuclei_{size}.tif"
            write_image(image, block, size)
            masks = workdir / f"masks_{size}.tif"
            seconds, peak_mb, summary = segment(image, model, masks, args, workdir / f"segment_{size}.log")
            expected = per_block * (size // BLOCK) ** 2
            rows.append({
                "side_px": size, "megapixels": size * size / 1e6, "tiles": summary["tiles"],
                "cells": summary["cells"], "expected": expected, "seconds": seconds,
                "segment_seconds": summary["seconds"], "mpx_per_s": size * size / 1e6 / summary["seconds"],
                "peak_mb": peak_mb, "device": summary["device"], "image_mb": image.stat().st_size / 1e6,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
            for path in (image, masks):
                path.unlink()
        write_report(args, rows)


def write_report(args, rows) -> None:
    lines = [
        "# Imaging: tiled Cellpose segmentation, time and memory against image size",
        "",
        f"`python bench/imaging.py --sizes {' '.join(map(str, args.sizes))} --tile-size {args.tile_size} "
        f"--threads {args.threads}` on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"({platform.python_version()}); device: {rows[0]['device']}.",
        "",
        "The demo's trained Cellpose 3 model, the workflow's own `gpubio segment-cells`, one fresh process per",
        f"size; tiles of {args.tile_size} px with {args.tile_overlap} px overlap; images are tiled zlib TIFFs of a",
        f"repeated 1k block of nuclei {args.scale:g} x the demo's size (Cellpose scales them down to the model's",
        "size before its network, `--diameter`), so the planted count, and the count the 1k image gives, are",
        "known for every size.",
        "",
        "| side (px) | megapixels | tiles | cells | planted | 1k result x blocks | wall (s) | segmentation (s) "
        "| megapixels/s | peak RSS (MB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    one_block = next((r["cells"] for r in rows if r["side_px"] == BLOCK), None)
    for r in rows:
        blocks = (r["side_px"] // BLOCK) ** 2
        lines.append(
            f"| {r['side_px']} | {r['megapixels']:.1f} | {r['tiles']} | {r['cells']} | {r['expected']} | "
            f"{one_block * blocks if one_block else '-'} | {r['seconds']:.0f} | {r['segment_seconds']:.0f} | "
            f"{r['mpx_per_s']:.3f} | {r['peak_mb']:.0f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()

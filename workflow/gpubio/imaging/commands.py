"""Imaging subcommands of `python -m gpubio`."""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")


def _image_qc(args) -> None:
    from gpubio.imaging.qc import write_image_qc

    result = write_image_qc(args.image, args.out, args.max_saturated_fraction)
    log.info("image QC: %s x %d channels", result["shape"], result["channels"])
    if result["saturation_flag"]:
        log.warning("saturated pixels above %.3g in %s", args.max_saturated_fraction, args.image)


def register(sub) -> None:
    p = sub.add_parser("image-qc", help="shape, channels, intensity range and saturation of an image")
    p.add_argument("image")
    p.add_argument("--out", required=True)
    p.add_argument("--max-saturated-fraction", type=float, default=0.01)
    p.set_defaults(func=_image_qc)

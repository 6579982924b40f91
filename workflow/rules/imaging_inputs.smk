# Imaging: settings, targets and input functions (get_*) of workflow/rules/imaging.smk.

from gpubio.imaging.resources import (
    cellpose_mem_mb,
    cellpose_training_vram_gb,
    cellpose_vram_gb,
    registration_mem_mb,
    registration_vram_gb,
    restoration_mem_mb,
    restoration_vram_gb,
)
from gpubio.imaging.settings import (
    cellpose_model,
    image_qc_options,
    registration_options,
    restoration_enabled,
    restoration_options,
    segmentation_options,
    training_files,
    training_options,
    uses_trained_model,
)

# learned registration is the GPU option; elastix runs on CPUs
IMAGING = STARTUP.settings["imaging"]
IMAGING_REGISTRATION_GPUS = 1 if IMAGING["registration"]["method"] == "learned" else 0
IMAGING_CELLPOSE_MODEL = cellpose_model(IMAGING)


def imaging_targets():
    """Per-sample QC, masks, cells and overlays; registration outputs of samples with a
    reference image; the model trained here, when segmentation uses one."""
    samples = PROJECT.samples("imaging")
    per_sample = [
        "qc.json",
        "cells.tsv",
        "overlay.png",
        "masks.tif",
        "segmentation.json",
    ]
    registered = ["registered.tif", "transform.json", "checkerboard.png"]
    trained = ["cellpose_trained", "training.json", "validation.tsv", "training.png"]
    return (
        expand("results/imaging/{sample}/{name}", sample=samples, name=per_sample)
        + ["results/imaging/segmentation_summary.tsv"]
        + [
            f"results/imaging/{sample}/{name}"
            for sample in samples
            if has_reference_image(sample)
            for name in registered
        ]
        + [
            f"results/imaging/model/{name}"
            for name in (trained if uses_trained_model(IMAGING) else [])
        ]
        + (
            expand(
                "results/imaging/{sample}/{name}",
                sample=samples,
                name=("restored.tif", "restoration.json", "restoration.png"),
            )
            if restoration_enabled(IMAGING)
            else []
        )
    )


IMAGING_RESTORATION_MODEL = IMAGING["restoration"]["model"]
DOMAIN_TARGETS["imaging"] = imaging_targets


def get_image(wildcards):
    return sheet_row("imaging", wildcards.sample)["image"]


def get_reference_image(wildcards):
    return sheet_row("imaging", wildcards.sample)["reference_image"]


def has_reference_image(sample):
    return bool(sheet_row("imaging", sample).get("reference_image"))


def get_segmentation_image(wildcards):
    """The registered image for samples with a reference, else the image itself."""
    if has_reference_image(wildcards.sample):
        return f"results/imaging/{wildcards.sample}/registered.tif"
    return get_image(wildcards)


def get_image_to_segment(wildcards):
    """The restored image when restoration is on, else the (registered) image itself."""
    if restoration_enabled(IMAGING):
        return f"results/imaging/{wildcards.sample}/restored.tif"
    return get_segmentation_image(wildcards)


def get_restoration_model(wildcards):
    """A restoration model file is an input; built-in names live in Cellpose's model folder."""
    return (
        [IMAGING_RESTORATION_MODEL] if os.path.isfile(IMAGING_RESTORATION_MODEL) else []
    )


def get_segmentation_footprint(wildcards):
    """The pixels a registered image covers (segmentation normalises over these only)."""
    if has_reference_image(wildcards.sample):
        return f"results/imaging/{wildcards.sample}/footprint.tif"
    return []


def footprint_option(wildcards, input):
    """segment-cells' --footprint for registered images (quoted: it is a shell word)."""
    return quote_option("--footprint", input.footprint or None)


def get_cellpose_model(wildcards):
    """The model file segmentation reads (trained here, or local); none for built-in names."""
    if uses_trained_model(IMAGING) or os.path.isfile(IMAGING_CELLPOSE_MODEL):
        return [IMAGING_CELLPOSE_MODEL]
    return []


def get_training_files(wildcards):
    return training_files(IMAGING)


def get_segmentation_records(wildcards):
    return expand(
        "results/imaging/{sample}/segmentation.json", sample=PROJECT.samples("imaging")
    )

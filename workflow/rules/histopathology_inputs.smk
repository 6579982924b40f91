# Histopathology: settings, targets and input functions (get_*) of workflow/rules/histopathology.smk.

from gpubio.histopathology.settings import (
    class_options,
    embedding_options,
    tile_embedding_vram_gb,
    tiling_options,
)

HISTOPATHOLOGY = STARTUP.settings["histopathology"]


def histopathology_targets():
    """Per slide: tiles, embeddings, zero-shot labels and heatmap; the class fractions of all."""
    return expand(
        "results/histopathology/{sample}/{name}",
        sample=PROJECT.samples("histopathology"),
        name=("tiles.tsv", "embeddings.h5ad", "labels.tsv", "heatmap.png"),
    ) + [
        "results/histopathology/class_fractions.tsv",
        "results/histopathology/class_fractions.png",
    ]


DOMAIN_TARGETS["histopathology"] = histopathology_targets


def get_slide(wildcards):
    return sheet_row("histopathology", wildcards.sample)["slide"]


def slide_mpp_option(wildcards):
    """--mpp from the sheet, when given (else the slide's own resolution is used)."""
    mpp = sheet_row("histopathology", wildcards.sample).get("mpp") or ""
    return quote_option("--mpp", mpp)


def get_slide_labels(wildcards):
    return expand(
        "results/histopathology/{sample}/labels.tsv",
        sample=PROJECT.samples("histopathology"),
    )

# Transcriptomics: settings, targets and input functions (get_*) of workflow/rules/transcriptomics.smk.

from gpubio.transcriptomics.settings import annotation_steps

TRANSCRIPTOMICS = STARTUP.settings["transcriptomics"]
TRANSCRIPTOMICS_STEPS = annotation_steps(TRANSCRIPTOMICS)
# size of what the integration step will read (cells x genes), for its VRAM and memory
TRANSCRIPTOMICS_INPUT_MB = STARTUP.input_mb["transcriptomics"]


def transcriptomics_targets():
    """Per-sample QC and cells, the atlas with its labels, embeddings and figures, and the
    spatial statistics of every sample with coordinates."""
    samples = PROJECT.samples("transcriptomics")
    return (
        expand(
            "results/transcriptomics/{sample}/{name}",
            sample=samples,
            name=["qc.json", "filtered.h5ad"],
        )
        + [
            "results/transcriptomics/integrated.h5ad",
            "results/transcriptomics/atlas.h5ad",
            "results/transcriptomics/markers.tsv",
            "results/transcriptomics/plots/umap.png",
            "results/transcriptomics/plots/qc_violins.png",
            "results/transcriptomics/plots/markers_dotplot.png",
        ]
        + [
            f"results/transcriptomics/annotation/{method}.tsv"
            for method in ("celltypist", "scanvi")
            if TRANSCRIPTOMICS_STEPS[method]
        ]
        + (
            ["results/transcriptomics/celltypist/model.pkl"]
            if TRANSCRIPTOMICS_STEPS["train_celltypist"]
            else []
        )
        + (
            ["results/transcriptomics/embeddings.h5ad"]
            if TRANSCRIPTOMICS_STEPS["embeddings"]
            else []
        )
        + [
            f"results/transcriptomics/spatial/{sample}.{ext}"
            for sample in samples
            if sheet_row("transcriptomics", sample).get("spatial")
            for ext in ("tsv", "png")
        ]
    )


DOMAIN_TARGETS["transcriptomics"] = transcriptomics_targets


def get_counts(wildcards):
    return sheet_row("transcriptomics", wildcards.sample)["counts"]


# What the integration step reads of each sample: cell QC's filtered cells, unless a step
# between them (declared beside its rule in transcriptomics.smk) hands on its own file.
CELLS_TO_INTEGRATE = "results/transcriptomics/{sample}/filtered.h5ad"


def get_filtered_cells(wildcards):
    """Every sample's cells as integration reads them: the integration step reads them all."""
    return expand(CELLS_TO_INTEGRATE, sample=PROJECT.samples("transcriptomics"))


def get_celltypist_model(wildcards):
    """The configured CellTypist model file, else the one trained on the reference."""
    model = TRANSCRIPTOMICS["annotation"]["celltypist"]["model"]
    return model or "results/transcriptomics/celltypist/model.pkl"


def get_atlas_inputs(wildcards):
    """The integrated cells plus the label tables and embeddings of the steps that run."""
    labels = [
        f"results/transcriptomics/annotation/{method}.tsv"
        for method in ("celltypist", "scanvi")
        if TRANSCRIPTOMICS_STEPS[method]
    ]
    embeddings = ["results/transcriptomics/embeddings.h5ad"]
    return {
        "integrated": "results/transcriptomics/integrated.h5ad",
        "labels": labels,
        "embeddings": embeddings if TRANSCRIPTOMICS_STEPS["embeddings"] else [],
    }


def get_interactions(wildcards):
    """Ligand-receptor pairs for ligrec, when configured."""
    interactions = TRANSCRIPTOMICS["spatial"]["interactions"]
    return [interactions] if interactions else []


def get_coordinates(wildcards):
    return sheet_row("transcriptomics", wildcards.sample)["spatial"]

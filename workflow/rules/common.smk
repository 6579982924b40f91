# Sample sheets, input functions (get_*) and wildcard constraints shared by every module.
import os

from gpubio.config import ConfigError, load_project
from gpubio.gpu import (
    CatalogueError,
    InventoryError,
    PlacementError,
    configure_site,
    cpu_resources,
    gpu_resources,
)

CONFIG_FILE = (workflow.overwrite_configfiles or ["config/config.yaml"])[-1]

try:
    PROJECT = load_project(config, config_file=str(CONFIG_FILE), workdir=os.getcwd())
except ConfigError as error:
    # one line per problem, before any job is built
    raise WorkflowError(error.report()) from None

# The site GPU jobs are placed on. Rules declare needs; the partitions file says what exists.
try:
    SITE = configure_site(
        partitions_file=config["gpu"]["partitions"],
        catalogue_overrides=config["gpu"]["catalogue"],
    )
except (CatalogueError, InventoryError, PlacementError) as error:
    raise WorkflowError(f"gpubio: {error}") from None

# passed to every GPU step: fail instead of running the CPU path when no GPU is found
REQUIRE_GPU = "--require-gpu" if config["gpu"]["require"] else ""


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",
    domain="genomics|transcriptomics|imaging",


def sheet_row(domain, sample):
    return PROJECT.sheets[domain].loc[sample]


# What the default target asks of each active module. Patterns expanded over its samples, and
# files made once per module. A new step adds its outputs here.
SAMPLE_TARGETS = {
    "genomics": ["results/genomics/{sample}/read_qc.json"],
    "transcriptomics": ["results/transcriptomics/{sample}/qc.json"],
    "imaging": ["results/imaging/{sample}/qc.json"],
}
MODULE_TARGETS = {
    domain: [f"results/{domain}/qc_summary.tsv", f"results/{domain}/qc_summary.png"]
    for domain in SAMPLE_TARGETS
}


def get_final_outputs():
    """Every active module's targets, and the GPU plan."""
    targets = []
    for domain in SAMPLE_TARGETS:
        if PROJECT.active(domain):
            targets += expand(SAMPLE_TARGETS[domain], sample=PROJECT.samples(domain))
            targets += MODULE_TARGETS[domain]
    return targets + ["results/gpu_plan.tsv"]


def get_qc_files(wildcards):
    """Per-sample QC JSON files of one module (the first per-sample target)."""
    pattern = SAMPLE_TARGETS[wildcards.domain][0]
    return expand(pattern, sample=PROJECT.samples(wildcards.domain))


# ---------------------------------------------------------------- genomics


def get_reads(wildcards):
    """FASTQ mate(s) or BAM of a genomics sample."""
    row = sheet_row("genomics", wildcards.sample)
    if row.get("pod5"):
        raise WorkflowError(
            f"{config['genomics']['samples']}: sample '{wildcards.sample}' starts at POD5, which needs "
            "the basecalling step; this version reads FASTQ or BAM: give fastq_1 or bam instead"
        )
    if row.get("bam"):
        return [row["bam"]]
    return [row["fastq_1"]] + ([row["fastq_2"]] if row.get("fastq_2") else [])


# ---------------------------------------------------------------- transcriptomics


def get_counts(wildcards):
    return sheet_row("transcriptomics", wildcards.sample)["counts"]


# ---------------------------------------------------------------- imaging


def get_image(wildcards):
    return sheet_row("imaging", wildcards.sample)["image"]

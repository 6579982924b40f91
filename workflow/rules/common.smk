# Sample sheets, input functions (get_*) and wildcard constraints shared by every module.
import os
import sys

from gpubio import dag_memory
from gpubio.config import ConfigError
from gpubio.gpu import (
    BalancedGroup,
    PlacementError,
    check_declared_needs,
    cpu_resources,
    gpu_resources,
    input_files_mb,
    planned_job_problems,
)
from gpubio.shell import (
    quote_extra_options,
    quote_option,
    quote_option_list,
    settings_options,
)
from gpubio.gpu.retry import snakemake_job_files
from gpubio.startup import (
    ENV_RUN_SIZES,
    job_run,
    module_summary,
    sizes_for_jobs,
    start_up,
)

# Collect cyclic garbage less often while the DAG is built (gpubio/dag_memory.py); the
# thresholds are back before the first job runs (onstart below).
GC_THRESHOLDS = dag_memory.collect_less()

# the config's layers, base first: config/config.yaml, then each --configfile laid over it
# (named as the user would: from the working directory when inside it)
CONFIG_FILES = ["config/config.yaml"] + [
    path if os.path.relpath(path).startswith("..") else os.path.relpath(path)
    for path in map(str, workflow.overwrite_configfiles)
]
CONFIG_FILE = CONFIG_FILES[-1]

# One pass over config, sheets, partitions and needs files and input headers; every problem
# is one line, all raised together before any job is built. A cluster job (Snakemake started
# again inside it) checks only its own samples' rows and takes the input sizes the scheduling
# process found, which its jobs inherit through the environment.
try:
    # (positional: a line starting with `workdir=` would read as Snakemake's directive)
    STARTUP = start_up(
        config,
        CONFIG_FILE,
        os.getcwd(),
        workflow.resource_settings.nodes,
        CONFIG_FILES,
        job_files=snakemake_job_files(workflow),
        job=None if workflow.is_main_process else job_run(sys.argv[1:]),
    )
except ConfigError as error:
    raise WorkflowError(error.report()) from None
for line in STARTUP.warnings:  # inputs the run copes with, said before it starts
    print(f"gpubio: warning: {line}", file=sys.stderr)
if workflow.is_main_process:
    os.environ[ENV_RUN_SIZES] = sizes_for_jobs(STARTUP)
dag_memory.freeze()  # what the start-up pass read lives for the whole run
PROJECT = STARTUP.project
# The settings the rules read: each section with every schema default, also for modules
# that are off. Rules never read raw config.
GPU = STARTUP.settings["gpu"]
GENOMICS = STARTUP.settings["genomics"]
TRANSCRIPTOMICS = STARTUP.settings["transcriptomics"]
IMAGING = STARTUP.settings["imaging"]
# The site GPU jobs are placed on. Rules declare needs; the partitions file says what exists.
SITE = STARTUP.site
# which modules run, and why the others do not (an empty sheet is the usual reason)
print(module_summary(PROJECT, os.getcwd()), file=sys.stderr)
if SITE.local is not None:  # a local run: say which GPUs judge its needs
    print(SITE.local.summary(), file=sys.stderr)
elif SITE.cpu_jobs_note():  # a cluster without CPU partitions: say where CPU jobs go
    print(f"gpubio: {SITE.cpu_jobs_note()}", file=sys.stderr)

# On a cluster the short CPU steps of one genomics sample run as one job (rules read_qc,
# sort_bam, alignment_qc, call_bcftools). A local run has no use for groups (Snakemake runs
# grouped jobs one by one there), and a group costs the DAG work at every start.
GENOMICS_SAMPLE_GROUP = None if SITE.local is not None else "genomics_sample"

# passed to every GPU step: fail instead of running the CPU path when no GPU is found
REQUIRE_GPU = "--require-gpu" if GPU["require"] else ""


onstart:
    dag_memory.restore(GC_THRESHOLDS)
    # Jobs the site cannot take (a CPU job no CPU partition holds, a GPU job gpu.require
    # refuses here) stop the run before its first job; checked once the DAG says which jobs
    # run, so a rule without jobs (a module that is off) is never named.
    JOB_PROBLEMS = planned_job_problems(workflow.dag.needrun_jobs(), SITE)
    if JOB_PROBLEMS:
        raise WorkflowError(ConfigError(JOB_PROBLEMS).report())


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",
    domain="genomics|transcriptomics|imaging",


# Input functions run for every job: a dict lookup per row, not a pandas .loc each time.
SHEET_ROWS = {
    domain: sheet.to_dict("index") for domain, sheet in PROJECT.sheets.items()
}


def sheet_row(domain, sample):
    return SHEET_ROWS[domain][sample]


# What the default target asks of each active module: each domain's section below declares
# its targets once, in one function (<domain>_targets), registered here by domain.
DOMAIN_TARGETS = {}


GPU_REPORT_TARGETS = [
    "results/gpu_plan.tsv",
    "results/gpu_plan.partitions.tsv",
    "results/gpu_plan.samples.tsv",
    "results/gpu_usage.tsv",
    "results/gpu_usage_models.tsv",
    "results/gpu_usage.png",
]


# modules whose per-sample qc.json files make a QC summary table and figure
QC_SUMMARY_DOMAINS = ("genomics", "transcriptomics", "imaging")


def get_module_outputs(wildcards=None):
    """Every active module's targets, and its QC summary."""
    targets = []
    for domain, domain_targets in DOMAIN_TARGETS.items():
        if PROJECT.active(domain):
            targets += domain_targets()
            if domain in QC_SUMMARY_DOMAINS:
                targets += [
                    f"results/{domain}/qc_summary.{ext}" for ext in ("tsv", "png")
                ]
    return targets


def get_final_outputs():
    """Every active module's targets, the GPU plan, and what the GPU jobs used; nothing when
    every module is off (the start-up line says why)."""
    targets = get_module_outputs()
    return targets + GPU_REPORT_TARGETS if targets else []


def get_usage_record_folders(wildcards):
    """The record folders under benchmarks/ of the samples (and POD5 runs) in the sheets now: a
    sample removed from its sheet keeps its records there (for gpubio calibrate), not its rows
    in the report."""
    return [
        f"{domain}/{sample}"
        for domain in DOMAIN_TARGETS
        for sample in PROJECT.samples(domain)
    ] + [f"genomics/runs/{run}" for run in GENOMICS_RUNS]


def usage_record(step):
    """Where a GPU step writes what it used (gpubio.gpu.usage), next to its benchmark file."""
    return f"benchmarks/{step}.gpu.json"


def get_qc_files(wildcards):
    """Per-sample QC JSON files of one module (every module writes results/<domain>/<sample>/qc.json)."""
    return expand(
        "results/{domain}/{sample}/qc.json",
        domain=wildcards.domain,
        sample=PROJECT.samples(wildcards.domain),
    )


# ---------------------------------------------------------------- genomics
from gpubio.genomics.align import is_aligned_bam
from gpubio.genomics.basecall import shard_count, shard_names, shard_work
from gpubio.genomics.sheet import (
    BASECALL_OPTIONS,
    FINISH_VARIANTS_OPTIONS,
    VARIANT_EFFECTS_OPTIONS,
    caller_for,
    sequencing_runs,
)
from gpubio.genomics.variants import parabricks_memory_options

GENOMICS_SHEET = PROJECT.sheets.get("genomics")
GENOMICS_REFERENCE = GENOMICS["reference"] or "reference.fa"
GENOMICS_RUNS = sequencing_runs(GENOMICS_SHEET)


def genomics_targets():
    """Every documented genomics output, so a run restores one an interrupted job removed."""
    per_sample = [
        "read_qc.json",
        "qc.json",
        "coverage.tsv",
        "aligned.bam",
        "aligned.bam.bai",
        "variants.vcf.gz",
        "variants.vcf.gz.tbi",
    ]
    if GENOMICS["variant_effects"]["enabled"]:
        per_sample.append("variant_effects.tsv")
    return (
        expand(
            "results/genomics/{sample}/{name}",
            sample=PROJECT.samples("genomics"),
            name=per_sample,
        )
        + [
            "results/genomics/read_qc.png",
            "results/genomics/coverage.png",
            "results/genomics/variants.png",
            "results/genomics/variant_summary.tsv",
        ]
        + [
            f"results/genomics/{sample}/reads.bam"
            for run in GENOMICS_RUNS.values()
            for sample in run.barcodes
        ]
    )


DOMAIN_TARGETS["genomics"] = genomics_targets


def genomics_platform(wildcards):
    return sheet_row("genomics", wildcards.sample)["platform"]


def genomics_run(sample):
    """The sequencing run (POD5 input) a sample comes from, or None."""
    return next((r for r in GENOMICS_RUNS.values() if sample in r.barcodes), None)


def get_reads(wildcards):
    """FASTQ mate(s), the sheet's BAM, or the basecalled reads of a POD5 sample."""
    row = sheet_row("genomics", wildcards.sample)
    if row.get("pod5"):
        return [f"results/genomics/{wildcards.sample}/reads.bam"]
    if row.get("bam"):
        return [row["bam"]]
    return [row["fastq_1"]] + ([row["fastq_2"]] if row.get("fastq_2") else [])


def get_pod5(wildcards):
    return GENOMICS_RUNS[wildcards.run].pod5


def get_pod5_shards(wildcards):
    """Basecalled BAM of every shard of a run; the count follows the POD5 size and shard_size_mb."""
    count = shard_count(get_pod5(wildcards), GENOMICS["basecall"]["shard_size_mb"])
    return expand(
        "results/genomics/runs/{run}/basecalls/{shard}.bam",
        run=wildcards.run,
        shard=shard_names(count),
    )


def get_shard_count(wildcards):
    return shard_count(get_pod5(wildcards), GENOMICS["basecall"]["shard_size_mb"])


def get_run_reads(wildcards):
    """Where a POD5 sample's reads are: its run's merged BAM, or the run's demux directory."""
    run = genomics_run(wildcards.sample)
    if run.barcoded:
        return f"results/genomics/runs/{run.name}/demux"
    return f"results/genomics/runs/{run.name}/basecalled.bam"


def get_barcode_option(wildcards):
    barcode = genomics_run(wildcards.sample).barcodes[wildcards.sample]
    return quote_option("--barcode", barcode)


def get_unsorted_alignment(wildcards):
    """The sheet's BAM when it is aligned already, else the aligner's unsorted output."""
    row = sheet_row("genomics", wildcards.sample)
    if row.get("bam") and is_aligned_bam(row["bam"]):
        return row["bam"]
    if row["platform"] == "ont" and GENOMICS["align"]["ont"] == "dorado":
        return f"results/genomics/{wildcards.sample}/dorado.unsorted.bam"
    return f"results/genomics/{wildcards.sample}/mappy.unsorted.bam"


def get_raw_calls(wildcards):
    """The chosen caller's raw VCF for a sample (genomics.variants.caller per platform)."""
    caller = caller_for(GENOMICS, genomics_platform(wildcards))
    return {
        "bcftools": "results/genomics/{sample}/calls.bcftools.vcf.gz",
        "deepvariant_gpu": "results/genomics/{sample}/calls.parabricks.vcf",
        "deepvariant": "results/genomics/{sample}/calls.deepvariant.vcf.gz",
        "clair3": "results/genomics/{sample}/clair3/merge_output.vcf.gz",
    }[caller].format(sample=wildcards.sample)


def get_genomics_plot_inputs(wildcards):
    samples = PROJECT.samples("genomics")
    inputs = {
        "qc": expand("results/genomics/{sample}/qc.json", sample=samples),
        "coverage": expand("results/genomics/{sample}/coverage.tsv", sample=samples),
        "vcf": expand("results/genomics/{sample}/variants.vcf.gz", sample=samples),
    }
    if GENOMICS["variant_effects"]["enabled"]:
        inputs["effects"] = expand(
            "results/genomics/{sample}/variant_effects.tsv", sample=samples
        )
    return inputs


# ---------------------------------------------------------------- transcriptomics
from gpubio.transcriptomics.settings import annotation_steps

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


def get_filtered_cells(wildcards):
    """Every sample's QC-filtered cells: the integration step reads them all."""
    return expand(
        "results/transcriptomics/{sample}/filtered.h5ad",
        sample=PROJECT.samples("transcriptomics"),
    )


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


# ---------------------------------------------------------------- imaging
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
    IMAGE_QC_OPTIONS,
    cellpose_model,
    registration_options,
    restoration_enabled,
    restoration_options,
    segmentation_options,
    training_files,
    training_options,
    uses_trained_model,
)

# learned registration is the GPU option; elastix runs on CPUs
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


# ---------------------------------------------------------------- histopathology
from gpubio.histopathology.settings import (
    class_options,
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

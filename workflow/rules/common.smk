# Sample sheets, input functions (get_*) and wildcard constraints shared by every module.
import os

from gpubio.config import ConfigError, load_project
from gpubio.gpu.calibrate import NeedsError
from gpubio.gpu import (
    CatalogueError,
    InventoryError,
    PlacementError,
    configure_site,
    cpu_resources,
    gpu_resources,
)
from gpubio.shell import (
    extra_options_problems,
    quote_extra_options,
    quote_option,
    quote_option_list,
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
        needs_file=config["gpu"]["needs"],
        kind=config["gpu"]["site"],
        remote_jobs=workflow.resource_settings.nodes,
        require=config["gpu"]["require"],
    )
except (CatalogueError, InventoryError, NeedsError, PlacementError) as error:
    raise WorkflowError(f"gpubio: {error}") from None
if SITE.local is not None:
    print(SITE.local.summary(), file=sys.stderr)

# passed to every GPU step: fail instead of running the CPU path when no GPU is found
REQUIRE_GPU = "--require-gpu" if config["gpu"]["require"] else ""


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",
    domain="genomics|transcriptomics|imaging",


# Input functions run for every job: a dict lookup per row, not a pandas .loc each time.
SHEET_ROWS = {
    domain: sheet.to_dict("index") for domain, sheet in PROJECT.sheets.items()
}


def sheet_row(domain, sample):
    return SHEET_ROWS[domain][sample]


# What the default target asks of each active module. Patterns expanded over its samples, and
# files made once per module. A new step adds its outputs here.
SAMPLE_TARGETS = {
    "genomics": [
        "results/genomics/{sample}/read_qc.json",
        "results/genomics/{sample}/qc.json",
        "results/genomics/{sample}/aligned.bam",
        "results/genomics/{sample}/aligned.bam.bai",
        "results/genomics/{sample}/variants.vcf.gz",
        "results/genomics/{sample}/variants.vcf.gz.tbi",
    ],
    "transcriptomics": ["results/transcriptomics/{sample}/qc.json"],
    "imaging": [
        "results/imaging/{sample}/qc.json",
        "results/imaging/{sample}/cells.tsv",
        "results/imaging/{sample}/overlay.png",
    ],
}
MODULE_TARGETS = {
    domain: [f"results/{domain}/qc_summary.tsv", f"results/{domain}/qc_summary.png"]
    for domain in SAMPLE_TARGETS
}


GPU_REPORT_TARGETS = [
    "results/gpu_plan.tsv",
    "results/gpu_plan.partitions.tsv",
    "results/gpu_usage.tsv",
    "results/gpu_usage_models.tsv",
    "results/gpu_usage.png",
]


def get_module_outputs(wildcards=None):
    """Every active module's targets."""
    targets = []
    for domain in SAMPLE_TARGETS:
        if PROJECT.active(domain):
            targets += expand(SAMPLE_TARGETS[domain], sample=PROJECT.samples(domain))
            targets += MODULE_TARGETS[domain]
    return targets


def get_final_outputs():
    """Every active module's targets, the GPU plan, and what the GPU jobs used."""
    return get_module_outputs() + GPU_REPORT_TARGETS


def usage_record(step):
    """Where a GPU step writes what it used (gpubio.gpu.usage), next to its benchmark file."""
    return f"benchmarks/{step}.gpu.json"


def get_qc_files(wildcards):
    """Per-sample QC JSON files of one module (the first per-sample target)."""
    pattern = SAMPLE_TARGETS[wildcards.domain][0]
    return expand(pattern, sample=PROJECT.samples(wildcards.domain))


# ---------------------------------------------------------------- genomics
from gpubio.genomics.align import is_aligned_bam
from gpubio.genomics.basecall import shard_count, shard_names
from gpubio.genomics.sheet import (
    caller_for,
    genomics_settings,
    sequencing_runs,
    sheet_problems,
)
from gpubio.genomics.variants import parabricks_memory_options

GENOMICS = genomics_settings(config)
GENOMICS_SHEET = PROJECT.sheets.get("genomics")
GENOMICS_REFERENCE = GENOMICS.get("reference") or "reference.fa"
GENOMICS_RUNS = sequencing_runs(GENOMICS_SHEET)
_genomics_problems = sheet_problems(
    GENOMICS_SHEET, GENOMICS["samples"], GENOMICS, str(CONFIG_FILE)
) + extra_options_problems(
    {"genomics": GENOMICS},
    [
        "genomics.basecall.options",
        "genomics.align.dorado_options",
        "genomics.variants.bcftools_options",
        "genomics.variants.parabricks.options",
        "genomics.variants.deepvariant.options",
        "genomics.variants.clair3.options",
    ],
    str(CONFIG_FILE),
)
if _genomics_problems:
    raise WorkflowError(ConfigError(_genomics_problems).report())
if GENOMICS["variant_effects"]["enabled"]:
    SAMPLE_TARGETS["genomics"].append("results/genomics/{sample}/variant_effects.tsv")
MODULE_TARGETS["genomics"] += [
    "results/genomics/read_qc.png",
    "results/genomics/coverage.png",
    "results/genomics/variants.png",
    "results/genomics/variant_summary.tsv",
]
# Every documented output is a target, so a run restores one an interrupted job removed.
SAMPLE_TARGETS["genomics"].append("results/genomics/{sample}/coverage.tsv")
MODULE_TARGETS["genomics"] += [
    f"results/genomics/{sample}/reads.bam"
    for run in GENOMICS_RUNS.values()
    for sample in run.barcodes
]


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
from gpubio.transcriptomics.settings import (
    annotation_steps,
    config_problems as transcriptomics_config_problems,
    transcriptomics_settings,
)
from gpubio.transcriptomics.sizing import survey_count_files

TRANSCRIPTOMICS = transcriptomics_settings(config)
TRANSCRIPTOMICS_STEPS = annotation_steps(TRANSCRIPTOMICS)
# size of what the integration step will read (cells x genes), for its VRAM and memory
TRANSCRIPTOMICS_INPUT_MB = 0.0
if PROJECT.active("transcriptomics"):
    _transcriptomics_problems = transcriptomics_config_problems(
        TRANSCRIPTOMICS, str(CONFIG_FILE), os.getcwd()
    )
    # unreadable or processed count files join the config problems, one line each
    TRANSCRIPTOMICS_INPUT_MB, _count_file_problems = survey_count_files(
        PROJECT.sheets["transcriptomics"]["counts"].to_dict(),
        TRANSCRIPTOMICS["samples"],
    )
    _transcriptomics_problems += _count_file_problems
    if _transcriptomics_problems:
        raise WorkflowError(ConfigError(_transcriptomics_problems).report())
    SAMPLE_TARGETS["transcriptomics"].append(
        "results/transcriptomics/{sample}/filtered.h5ad"
    )
    MODULE_TARGETS["transcriptomics"] += [
        "results/transcriptomics/integrated.h5ad",
        *[
            f"results/transcriptomics/annotation/{method}.tsv"
            for method in ("celltypist", "scanvi")
            if TRANSCRIPTOMICS_STEPS[method]
        ],
        *(
            ["results/transcriptomics/celltypist/model.pkl"]
            if TRANSCRIPTOMICS_STEPS["train_celltypist"]
            else []
        ),
        *(
            ["results/transcriptomics/embeddings.h5ad"]
            if TRANSCRIPTOMICS_STEPS["embeddings"]
            else []
        ),
        "results/transcriptomics/atlas.h5ad",
        "results/transcriptomics/markers.tsv",
        "results/transcriptomics/plots/umap.png",
        "results/transcriptomics/plots/qc_violins.png",
        "results/transcriptomics/plots/markers_dotplot.png",
    ]
    MODULE_TARGETS["transcriptomics"] += [
        f"results/transcriptomics/spatial/{sample}.{ext}"
        for sample in PROJECT.samples("transcriptomics")
        if sheet_row("transcriptomics", sample).get("spatial")
        for ext in ("tsv", "png")
    ]


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
)
from gpubio.imaging.settings import (
    cellpose_model,
    config_problems as imaging_config_problems,
    imaging_settings,
    registration_options,
    segmentation_options,
    training_files,
    training_options,
    uses_trained_model,
)
from gpubio.imaging.sheet import image_file_problems

IMAGING = imaging_settings(config)
if PROJECT.active("imaging"):
    _imaging_problems = imaging_config_problems(IMAGING, str(CONFIG_FILE))
    _imaging_problems += image_file_problems(
        PROJECT.sheets["imaging"], IMAGING["samples"], os.getcwd()
    )
    if _imaging_problems:
        raise WorkflowError(ConfigError(_imaging_problems).report())
# learned registration is the GPU option; elastix runs on CPUs
IMAGING_REGISTRATION_GPUS = 1 if IMAGING["registration"]["method"] == "learned" else 0
IMAGING_CELLPOSE_MODEL = cellpose_model(IMAGING)
SAMPLE_TARGETS["imaging"] += [
    "results/imaging/{sample}/masks.tif",
    "results/imaging/{sample}/segmentation.json",
]
if PROJECT.active("imaging"):
    MODULE_TARGETS["imaging"] += [
        f"results/imaging/{sample}/{name}"
        for sample in PROJECT.samples("imaging")
        if sheet_row("imaging", sample).get("reference_image")
        for name in ("registered.tif", "transform.json", "checkerboard.png")
    ]
    if uses_trained_model(IMAGING):
        MODULE_TARGETS["imaging"] += [
            "results/imaging/model/cellpose_trained",
            "results/imaging/model/training.json",
            "results/imaging/model/training_loss.png",
        ]


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

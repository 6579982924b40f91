# Genomics: settings, targets and input functions (get_*) of workflow/rules/genomics.smk.

from gpubio.genomics.align import is_aligned_bam
from gpubio.genomics.basecall import shard_count, shard_names, shard_work
from gpubio.genomics.sheet import (
    caller_for,
    sequencing_runs,
)
from gpubio.genomics.variants import parabricks_memory_options

GENOMICS = STARTUP.settings["genomics"]
GENOMICS_SHEET = PROJECT.sheets.get("genomics")
GENOMICS_REFERENCE = GENOMICS["reference"] or "reference.fa"
GENOMICS_RUNS = sequencing_runs(GENOMICS_SHEET)
# a POD5 run's basecalling jobs keep their usage records in its own folder
USAGE_RECORD_FOLDERS += [f"genomics/runs/{run}" for run in GENOMICS_RUNS]


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

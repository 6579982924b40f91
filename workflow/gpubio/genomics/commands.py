"""Genomics subcommands of `python -m gpubio`."""

from __future__ import annotations

import logging

log = logging.getLogger("gpubio")


def _read_qc(args) -> None:
    from gpubio.genomics.read_qc import write_read_qc

    result = write_read_qc(args.reads, args.out)
    log.info("read QC: %d reads, N50 %d, mean quality %.2f", result["reads"], result["n50"], result["mean_quality"])


def _pod5_shard_plan(args) -> None:
    from gpubio.genomics.basecall import plan_shards

    plan_shards(args.table, args.shards, args.out)


def _merge_basecalls(args) -> None:
    from gpubio.genomics.basecall import merge_unaligned_bams

    merge_unaligned_bams(args.bams, args.out, args.threads)


def _sample_reads(args) -> None:
    from gpubio.genomics.basecall import sample_reads

    sample_reads(args.source, args.sample, args.out, args.barcode, args.threads)


def _align_reads(args) -> None:
    from gpubio.genomics.align import align_reads

    align_reads(args.reads, args.reference, args.platform, args.sample, args.out, args.threads)


def _sort_bam(args) -> None:
    from gpubio.genomics.align import sort_and_index

    sort_and_index(args.bam, args.out, args.sample, args.platform, args.threads)


def _alignment_qc(args) -> None:
    from gpubio.genomics.alignment_qc import write_alignment_qc

    write_alignment_qc(args.bam, args.read_qc, args.out_json, args.out_coverage)


def _call_bcftools(args) -> None:
    from gpubio.genomics.variants import call_bcftools

    call_bcftools(args.bam, args.reference, args.platform, args.out, args.threads, args.options)


def _finish_variants(args) -> None:
    from gpubio.genomics.variants import finish_calls

    finish_calls(args.calls, args.reference, args.sample, args.min_qual, args.out, args.threads)


def _variant_effects(args) -> None:
    from gpubio.genomics.effects import load_effect_model, read_variants, score_variants, write_effects
    from gpubio.gpu.job import torch_device

    device = torch_device("variant effects", args.threads)
    model = load_effect_model(
        args.family, args.weights, args.sequence_length, device, head=args.head, track_names=args.track_names or None
    )
    variants = list(read_variants(args.vcf))
    rows = score_variants(model, args.reference, variants, args.batch_size)
    write_effects(rows, args.out, model.columns)
    log.info("scored %d PASS variants in batches of %d with %s", len(rows), args.batch_size, args.family)


def _genomics_plots(args) -> None:
    from gpubio.genomics.plots import plot_coverage, plot_read_qc, plot_variants

    plot_read_qc(args.qc, args.out_read_qc)
    plot_coverage(args.coverage, args.out_coverage)
    plot_variants(args.vcf, args.min_qual, args.effects or [], args.out_variants, args.out_summary)


def register(sub) -> None:
    from gpubio.steps import add_step_options

    # settings' options, defaults and help come from the schema (gpubio.steps)
    p = sub.add_parser("read-qc", help="read count, N50 and base quality of FASTQ/BAM files")
    p.add_argument("reads", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_read_qc)

    p = sub.add_parser("pod5-shard-plan", help="assign the reads of a `pod5 view` table to N balanced shards")
    p.add_argument("table", help="pod5 view output with read_id and num_samples")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--out", required=True, help="table for `pod5 subset --table ... --columns shard`")
    p.set_defaults(func=_pod5_shard_plan)

    p = sub.add_parser("merge-basecalls", help="merge basecalled shard BAMs, keeping read groups and tags")
    p.add_argument("bams", nargs="+")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge_basecalls)

    p = sub.add_parser("sample-reads", help="a sample's basecalled reads (its demux barcode), SM set to the sample")
    p.add_argument("source", help="merged BAM of the run, or dorado demux output directory")
    p.add_argument("--sample", required=True)
    p.add_argument("--barcode", help="barcode of the sample (source is then the demux directory)")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_sample_reads)

    p = sub.add_parser("align-reads", help="align FASTQ or unaligned BAM with minimap2 (mappy) into an unsorted BAM")
    p.add_argument("reads", nargs="+")
    p.add_argument("--reference", required=True)
    p.add_argument("--platform", required=True, choices=["illumina", "ont"])
    p.add_argument("--sample", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_align_reads)

    p = sub.add_parser("sort-bam", help="coordinate-sort and index an aligned BAM (adds a read group if none)")
    p.add_argument("bam")
    p.add_argument("--sample", required=True)
    p.add_argument("--platform", required=True, choices=["illumina", "ont"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=_sort_bam)

    p = sub.add_parser("alignment-qc", help="mapped fraction, depth and coverage profile of an aligned BAM")
    p.add_argument("bam")
    p.add_argument("--read-qc", help="read QC JSON to merge in")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-coverage", required=True)
    p.set_defaults(func=_alignment_qc)

    p = sub.add_parser("call-bcftools", help="bcftools mpileup + call (embedded in pysam)")
    p.add_argument("bam")
    p.add_argument("--reference", required=True)
    p.add_argument("--platform", required=True, choices=["illumina", "ont"])
    p.add_argument("--options", default="", help="extra bcftools mpileup options")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_call_bcftools)

    p = sub.add_parser("finish-variants", help="normalise calls, flag QUAL < min as LowQual, bgzip and index")
    p.add_argument("calls")
    p.add_argument("--reference", required=True)
    p.add_argument("--sample", required=True)
    add_step_options(p, "finish-variants")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_finish_variants)

    p = sub.add_parser("variant-effects", help="score PASS variants with a sequence model (ref vs alt windows)")
    p.add_argument("--vcf", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--weights", required=True, help="local weights directory")
    add_step_options(p, "variant-effects")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_variant_effects)

    p = sub.add_parser("genomics-plots", help="read QC, coverage and variant figures for the report")
    p.add_argument("--qc", nargs="+", required=True)
    p.add_argument("--coverage", nargs="+", required=True)
    p.add_argument("--vcf", nargs="+", required=True)
    p.add_argument("--effects", nargs="*")
    add_step_options(p, "genomics-plots")
    p.add_argument("--out-read-qc", required=True)
    p.add_argument("--out-coverage", required=True)
    p.add_argument("--out-variants", required=True)
    p.add_argument("--out-summary", required=True)
    p.set_defaults(func=_genomics_plots)

# Genomics: POD5 -> dorado basecalling (sharded over GPUs) -> demux -> alignment -> read and
# alignment QC -> variant calling (bcftools / Parabricks / DeepVariant / Clair3) ->
# normalised, QUAL-filtered VCF -> variant effects (Enformer). Entry at POD5, FASTQ or BAM.


# this domain's settings, targets and input functions
include: "genomics_inputs.smk"


# On a cluster the short CPU steps of one genomics sample run as one job (rules read_qc,
# sort_bam, alignment_qc, call_bcftools). A local run has no use for groups (Snakemake runs
# grouped jobs one by one there), and a group costs the DAG work at every start.
GENOMICS_SAMPLE_GROUP = None if SITE.local is not None else "genomics_sample"


wildcard_constraints:
    run="[A-Za-z0-9._-]+",
    shard="shard[0-9]+",


# Every tool that reads the reference gets its index as an input, so it is made once.
rule reference_index:
    input:
        GENOMICS_REFERENCE,
    output:
        f"{GENOMICS_REFERENCE}.fai",
    log:
        "logs/genomics/reference_index.log",
    benchmark:
        "benchmarks/genomics/reference_index.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "reference_index", mem_mb=2000, runtime=30),
    shell:
        "python -c 'import pysam, sys; pysam.faidx(sys.argv[1])' {input:q} > {log} 2>&1"


# ---------------------------------------------------------------- basecalling (POD5 input)


rule pod5_read_table:
    input:
        get_pod5,
    output:
        temp("results/genomics/runs/{run}/pod5_reads.tsv"),
    log:
        "logs/genomics/runs/{run}/pod5_read_table.log",
    benchmark:
        "benchmarks/genomics/runs/{run}/pod5_read_table.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "pod5_read_table", mem_mb=2000, runtime=60),
    shell:
        "pod5 view {input:q} --recursive --include read_id,num_samples --threads {threads}"
        " --output {output} > {log} 2>&1"


# Shards are balanced by signal length; each one is basecalled as its own GPU job.
rule pod5_shards:
    input:
        pod5=get_pod5,
        table="results/genomics/runs/{run}/pod5_reads.tsv",
    output:
        plan="results/genomics/runs/{run}/shard_plan.tsv",
        shards=temp(directory("results/genomics/runs/{run}/pod5_shards")),
    log:
        "logs/genomics/runs/{run}/pod5_shards.log",
    benchmark:
        "benchmarks/genomics/runs/{run}/pod5_shards.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "pod5_shards", mem_mb=4000, runtime=120),
    params:
        shards=get_shard_count,
    shell:
        "(python -m gpubio pod5-shard-plan {input.table:q} --shards {params.shards} --out {output.plan}"
        " && pod5 subset {input.pod5:q} --recursive --table {output.plan} --columns shard"
        " --template '{{shard}}.pod5' --threads {threads} --output {output.shards}) > {log} 2>&1"


# With gpu.balance the shards of all runs are placed together, spread over the site's GPU
# types by GPU counts and speeds to finish soonest; without it each goes to the fastest GPU.
BASECALL_PLACEMENT = (
    dict(
        policy="balanced",
        group=BalancedGroup(
            jobs=lambda: shard_work(
                {name: run.pod5 for name, run in GENOMICS_RUNS.items()},
                GENOMICS["basecall"]["shard_size_mb"],
            ),
            key=lambda wildcards: f"{wildcards.run}/{wildcards.shard}",
        ),
    )
    if GPU["balance"]
    else dict(policy="fastest")
)


# dorado on the GPU(s) this job holds (--device cuda:all), or on the CPU (-x cpu).
rule basecall:
    input:
        "results/genomics/runs/{run}/pod5_shards",
    output:
        temp("results/genomics/runs/{run}/basecalls/{shard}.bam"),
    log:
        "logs/genomics/runs/{run}/basecall_{shard}.log",
    benchmark:
        "benchmarks/genomics/runs/{run}/basecall_{shard}.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://nanoporetech/dorado:shae423e761540b9d08b526a1eb32faf498f32e8f22"
    envmodules:
        GENOMICS["modules"]["dorado"],
    threads: 8
    resources:
        **gpu_resources(
            SITE,
            "basecall",
            gpus=1,
            vram_gb=8,
            min_compute_capability=6.0,
            mem_mb=32000,
            runtime=720,
            **BASECALL_PLACEMENT,
        ),
    params:
        usage=usage_record("genomics/runs/{run}/basecall_{shard}"),
        model=GENOMICS["basecall"]["model"],
        flags=step_options(GENOMICS, "dorado-basecaller"),
        options=quote_extra_options(GENOMICS["basecall"]["options"]),
    shell:
        gpu_step() + " tool-on-device"
        " --gpu-args='--device cuda:all' --cpu-args='-x cpu' --stdout {output} --"
        " dorado basecaller {params.model:q} {input:q}/{wildcards.shard}.pod5 {params.flags}"
        " {params.options} > {log} 2>&1"


rule merge_basecalls:
    input:
        get_pod5_shards,
    output:
        temp("results/genomics/runs/{run}/basecalled.bam"),
    log:
        "logs/genomics/runs/{run}/merge_basecalls.log",
    benchmark:
        "benchmarks/genomics/runs/{run}/merge_basecalls.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "merge_basecalls", mem_mb=2000, runtime=120),
    shell:
        "python -m gpubio --threads {threads} merge-basecalls {input:q} --out {output} > {log} 2>&1"


# Reads were classified while basecalling (--kit-name); demux only splits them by barcode.
rule demux:
    input:
        "results/genomics/runs/{run}/basecalled.bam",
    output:
        temp(directory("results/genomics/runs/{run}/demux")),
    log:
        "logs/genomics/runs/{run}/demux.log",
    benchmark:
        "benchmarks/genomics/runs/{run}/demux.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://nanoporetech/dorado:shae423e761540b9d08b526a1eb32faf498f32e8f22"
    envmodules:
        GENOMICS["modules"]["dorado"],
    threads: 4
    resources:
        **cpu_resources(SITE, "demux", mem_mb=8000, runtime=240),
    shell:
        "dorado demux --no-classify --output-dir {output} --threads {threads} {input:q} > {log} 2>&1"


rule sample_reads:
    input:
        get_run_reads,
    output:
        "results/genomics/{sample}/reads.bam",
    log:
        "logs/genomics/{sample}/sample_reads.log",
    benchmark:
        "benchmarks/genomics/{sample}/sample_reads.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "sample_reads", mem_mb=2000, runtime=120),
    params:
        barcode=get_barcode_option,
    shell:
        "python -m gpubio --threads {threads} sample-reads {input:q} --sample {wildcards.sample}"
        " {params.barcode} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- reads and alignment
# On a cluster the short CPU steps of one sample (read QC, sort + index, alignment QC,
# bcftools) run as one job (GENOMICS_SAMPLE_GROUP): one submission and one Snakemake
# start-up instead of four, and a failure costs that sample alone. Local runs have no groups.


rule read_qc:
    input:
        get_reads,
    output:
        "results/genomics/{sample}/read_qc.json",
    log:
        "logs/genomics/{sample}/read_qc.log",
    benchmark:
        "benchmarks/genomics/{sample}/read_qc.tsv"
    group:
        GENOMICS_SAMPLE_GROUP
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "read_qc", mem_mb=1000, runtime=30),
    shell:
        "python -m gpubio --threads {threads} read-qc {input:q} --out {output} > {log} 2>&1"


rule align_mappy:
    input:
        reads=get_reads,
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/mappy.unsorted.bam"),
    log:
        "logs/genomics/{sample}/align_mappy.log",
    benchmark:
        "benchmarks/genomics/{sample}/align_mappy.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 4
    resources:
        **cpu_resources(SITE, "align_mappy", mem_mb=8000, runtime=240),
    params:
        platform=genomics_platform,
    shell:
        "python -m gpubio --threads {threads} align-reads {input.reads:q} --reference {input.reference:q}"
        " --platform {params.platform:q} --sample {wildcards.sample} --out {output} > {log} 2>&1"


rule align_dorado:
    input:
        reads=get_reads,
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/dorado.unsorted.bam"),
    log:
        "logs/genomics/{sample}/align_dorado.log",
    benchmark:
        "benchmarks/genomics/{sample}/align_dorado.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://nanoporetech/dorado:shae423e761540b9d08b526a1eb32faf498f32e8f22"
    envmodules:
        GENOMICS["modules"]["dorado"],
    threads: 8
    resources:
        **cpu_resources(SITE, "align_dorado", mem_mb=16000, runtime=240),
    params:
        options=quote_extra_options(GENOMICS["align"]["dorado_options"]),
    shell:
        "dorado aligner --threads {threads} {params.options} {input.reference:q} {input.reads:q}"
        " > {output} 2> {log}"


rule sort_bam:
    input:
        get_unsorted_alignment,
    output:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
    log:
        "logs/genomics/{sample}/sort_bam.log",
    benchmark:
        "benchmarks/genomics/{sample}/sort_bam.tsv"
    group:
        GENOMICS_SAMPLE_GROUP
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "sort_bam", mem_mb=4000, runtime=120),
    params:
        platform=genomics_platform,
    shell:
        "python -m gpubio --threads {threads} sort-bam {input:q} --sample {wildcards.sample}"
        " --platform {params.platform:q} --out {output.bam} > {log} 2>&1"


rule alignment_qc:
    input:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
        read_qc="results/genomics/{sample}/read_qc.json",
    output:
        json="results/genomics/{sample}/qc.json",
        coverage="results/genomics/{sample}/coverage.tsv",
    log:
        "logs/genomics/{sample}/alignment_qc.log",
    benchmark:
        "benchmarks/genomics/{sample}/alignment_qc.tsv"
    group:
        GENOMICS_SAMPLE_GROUP
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "alignment_qc", mem_mb=2000, runtime=60),
    shell:
        "python -m gpubio --threads {threads} alignment-qc {input.bam:q} --read-qc {input.read_qc:q}"
        " --out-json {output.json} --out-coverage {output.coverage} > {log} 2>&1"


# ---------------------------------------------------------------- variant calling


rule call_bcftools:
    input:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/calls.bcftools.vcf.gz"),
    log:
        "logs/genomics/{sample}/call_bcftools.log",
    benchmark:
        "benchmarks/genomics/{sample}/call_bcftools.tsv"
    group:
        GENOMICS_SAMPLE_GROUP
    conda:
        "../../envs/genomics.yaml"
    threads: 2
    resources:
        **cpu_resources(SITE, "call_bcftools", mem_mb=4000, runtime=240),
    params:
        platform=genomics_platform,
        options=quote_option(
            "--options",
            quote_extra_options(GENOMICS["variants"]["bcftools_options"]),
            joined=True,
        ),
    shell:
        "python -m gpubio --threads {threads} call-bcftools {input.bam:q} --reference {input.reference:q}"
        " --platform {params.platform:q} {params.options} --out {output} > {log} 2>&1"


# Parabricks DeepVariant: GPU only (no CPU path of its own; pick deepvariant for CPU nodes).
rule call_parabricks:
    input:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/calls.parabricks.vcf"),
    log:
        "logs/genomics/{sample}/call_parabricks.log",
    benchmark:
        "benchmarks/genomics/{sample}/call_parabricks.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://nvcr.io/nvidia/clara/clara-parabricks:4.5.1-1"
    envmodules:
        GENOMICS["modules"]["parabricks"],
    threads: 16
    resources:
        **gpu_resources(
            SITE,
            "call_parabricks",
            gpus=GENOMICS["variants"]["parabricks"]["gpus"],
            vram_gb=16,
            policy="cheapest",
            mem_mb=64000,
            runtime=240,
        ),
    params:
        usage=usage_record("genomics/{sample}/call_parabricks"),
        mode=lambda wc: {"illumina": "shortread", "ont": "ont"}[genomics_platform(wc)],
        # the GPU the job was placed on (its resources placed it before params are read)
        memory=lambda wc, resources: parabricks_memory_options(
            SITE.job_placement("call_parabricks", wc)
        ),
        options=quote_extra_options(GENOMICS["variants"]["parabricks"]["options"]),
    shell:
        gpu_step(require=True) + " tool-on-device"
        " --gpu-args= --cpu-args= -- pbrun deepvariant --ref {input.reference:q} --in-bam {input.bam:q} --out-variants {output}"
        " --mode {params.mode} --num-gpus {resources.gpu} {params.memory} {params.options}"
        " > {log} 2>&1"


rule call_deepvariant:
    input:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/calls.deepvariant.vcf.gz"),
    log:
        "logs/genomics/{sample}/call_deepvariant.log",
    benchmark:
        "benchmarks/genomics/{sample}/call_deepvariant.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://google/deepvariant:1.9.0"
    envmodules:
        GENOMICS["modules"]["deepvariant"],
    threads: 8
    resources:
        **cpu_resources(SITE, "call_deepvariant", mem_mb=32000, runtime=1440),
    params:
        model_type=lambda wc: GENOMICS["variants"]["deepvariant"]["model_type"][
            genomics_platform(wc)
        ],
        workdir="results/genomics/{sample}/deepvariant_tmp",
        options=quote_extra_options(GENOMICS["variants"]["deepvariant"]["options"]),
    shell:
        "run_deepvariant --model_type={params.model_type:q} --ref={input.reference:q}"
        " --reads={input.bam:q} --output_vcf={output} --num_shards={threads}"
        " --sample_name={wildcards.sample} --intermediate_results_dir={params.workdir}"
        " {params.options} > {log} 2>&1 && rm -rf {params.workdir}"


rule call_clair3:
    input:
        bam="results/genomics/{sample}/aligned.bam",
        bai="results/genomics/{sample}/aligned.bam.bai",
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        temp("results/genomics/{sample}/clair3/merge_output.vcf.gz"),
    log:
        "logs/genomics/{sample}/call_clair3.log",
    benchmark:
        "benchmarks/genomics/{sample}/call_clair3.tsv"
    conda:
        "../../envs/genomics.yaml"
    container:
        "docker://hkubal/clair3:v1.2.0"
    envmodules:
        GENOMICS["modules"]["clair3"],
    threads: 8
    resources:
        **cpu_resources(SITE, "call_clair3", mem_mb=32000, runtime=720),
    params:
        platform=lambda wc: {"illumina": "ilmn", "ont": "ont"}[genomics_platform(wc)],
        model=GENOMICS["variants"]["clair3"]["model"],
        outdir=subpath(output[0], parent=True),
        options=quote_extra_options(GENOMICS["variants"]["clair3"]["options"]),
    shell:
        "run_clair3.sh --bam_fn={input.bam:q} --ref_fn={input.reference:q} --threads={threads}"
        " --platform={params.platform} --model_path={params.model:q} --output={params.outdir}"
        " --sample_name={wildcards.sample} {params.options} > {log} 2>&1"


# Every caller ends here: normalised against the reference, QUAL-filtered, bgzipped, indexed.
rule finish_variants:
    input:
        calls=get_raw_calls,
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
    output:
        vcf="results/genomics/{sample}/variants.vcf.gz",
        tbi="results/genomics/{sample}/variants.vcf.gz.tbi",
    log:
        "logs/genomics/{sample}/finish_variants.log",
    benchmark:
        "benchmarks/genomics/{sample}/finish_variants.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "finish_variants", mem_mb=2000, runtime=60),
    params:
        options=step_options(GENOMICS, "finish-variants"),
    shell:
        "python -m gpubio --threads {threads} finish-variants {input.calls:q} --reference {input.reference:q}"
        " --sample {wildcards.sample} {params.options} --out {output.vcf} > {log} 2>&1"


# ---------------------------------------------------------------- variant effects
from gpubio.genomics.effects import effect_vram_gb


rule variant_effects:
    input:
        vcf="results/genomics/{sample}/variants.vcf.gz",
        tbi="results/genomics/{sample}/variants.vcf.gz.tbi",
        reference=GENOMICS_REFERENCE,
        fai=f"{GENOMICS_REFERENCE}.fai",
        weights=GENOMICS["variant_effects"]["weights"] or [],
    output:
        "results/genomics/{sample}/variant_effects.tsv",
    log:
        "logs/genomics/{sample}/variant_effects.log",
    benchmark:
        "benchmarks/genomics/{sample}/variant_effects.tsv"
    conda:
        "../../envs/genomics-effects.yaml"
    threads: GENOMICS["variant_effects"]["threads"]
    resources:
        **gpu_resources(
            SITE,
            "variant_effects",
            gpus=1,
            vram_gb=effect_vram_gb(GENOMICS["variant_effects"]),
            policy="cheapest",
            mem_mb=16000,
            runtime=240,
        ),
    params:
        usage=usage_record("genomics/{sample}/variant_effects"),
        options=step_options(GENOMICS, "variant-effects"),
    shell:
        gpu_step() + " variant-effects"
        " --vcf {input.vcf:q} --reference {input.reference:q} --weights {input.weights:q}"
        " {params.options} --out {output} > {log} 2>&1"


# ---------------------------------------------------------------- report


rule genomics_plots:
    input:
        unpack(get_genomics_plot_inputs),
    output:
        read_qc=report(
            "results/genomics/read_qc.png",
            caption="../report/genomics_read_qc.rst",
            category="genomics",
            subcategory="QC",
        ),
        coverage=report(
            "results/genomics/coverage.png",
            caption="../report/genomics_coverage.rst",
            category="genomics",
            subcategory="QC",
        ),
        variants=report(
            "results/genomics/variants.png",
            caption="../report/genomics_variants.rst",
            category="genomics",
            subcategory="variants",
        ),
        summary=report(
            "results/genomics/variant_summary.tsv",
            caption="../report/genomics_variants.rst",
            category="genomics",
            subcategory="variants",
        ),
    log:
        "logs/genomics/genomics_plots.log",
    benchmark:
        "benchmarks/genomics/genomics_plots.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "genomics_plots", mem_mb=2000, runtime=30),
    params:
        options=step_options(GENOMICS, "genomics-plots"),
        effects=lambda wc, input: quote_option_list(
            "--effects", input.effects if "effects" in input.keys() else []
        ),
    shell:
        "python -m gpubio genomics-plots --qc {input.qc:q} --coverage {input.coverage:q} --vcf {input.vcf:q}"
        " {params.effects} {params.options} --out-read-qc {output.read_qc}"
        " --out-coverage {output.coverage} --out-variants {output.variants}"
        " --out-summary {output.summary} > {log} 2>&1"

# Per-domain QC tables and figures for `snakemake --report results/report.html`.
from gpubio.gpu.plan import plan_arguments
from gpubio.gpu.usage_report import gpu_prices_option


rule qc_summary:
    input:
        qc=get_qc_files,
        tables=get_qc_tables,
    output:
        tsv=report(
            "results/{domain}/qc_summary.tsv",
            caption="../report/qc_summary.rst",
            category="{domain}",
            subcategory="QC",
        ),
        png=report(
            "results/{domain}/qc_summary.png",
            caption="../report/qc_summary.rst",
            category="{domain}",
            subcategory="QC",
        ),
    log:
        "logs/{domain}/qc_summary.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "qc_summary", mem_mb=1000, runtime=10),
    shell:
        "python -m gpubio qc-summary --domain {wildcards.domain} --out-tsv {output.tsv}"
        " --out-png {output.png} --tables {input.tables:q} -- {input.qc:q} > {log} 2>&1"


# Where every job of the DAG goes (model, partition, GPU-hours, cost), from Snakemake's own
# dry-run with this invocation's profile, config and resource overrides, so it shows what is
# really submitted. A local rule run in Snakemake's own process environment (`run:`, no conda
# env): the dry-run needs the Snakemake, plugins and config the user started, on the head node,
# not a copy inside a cluster job. Changed overrides (params) make it run again.
localrules:
    gpu_plan,


rule gpu_plan:
    input:
        config=CONFIG_FILE,
        partitions=GPU["partitions"],
    output:
        plan=report(
            "results/gpu_plan.tsv",
            caption="../report/gpu_plan.rst",
            category="GPU plan",
        ),
        totals="results/gpu_plan.partitions.tsv",
        samples="results/gpu_plan.samples.tsv",
    log:
        "logs/gpu_plan.log",
    threads: 1
    resources:
        **cpu_resources(SITE, "gpu_plan", mem_mb=1000, runtime=10),
    params:
        snakefile=workflow.main_snakefile,
        invoked_in=workflow.workdir_init,
        snakemake_args=plan_arguments(sys.argv[1:]),
        python=sys.executable,
    run:
        shell(
            "{params.python:q} -m gpubio plan --snakefile {params.snakefile:q}"
            " --configfile {input.config:q} --partitions {input.partitions:q}"
            " --invoked-in {params.invoked_in:q} --out {output.plan:q} -- {params.snakemake_args:q}"
            " > {log:q} 2>&1"
        )


# What the GPU jobs of this project really used against what the plan gave them (its expected
# and reserved GPU-hours and cost): the usage records under benchmarks/ (this run's and earlier
# runs') of the samples in the sheets now, once all module outputs exist.
rule gpu_usage_report:
    input:
        outputs=get_module_outputs,
        plan="results/gpu_plan.tsv",
    output:
        tsv=report(
            "results/gpu_usage.tsv",
            caption="../report/gpu_usage.rst",
            category="GPU use",
        ),
        models=report(
            "results/gpu_usage_models.tsv",
            caption="../report/gpu_usage.rst",
            category="GPU use",
        ),
        png=report(
            "results/gpu_usage.png",
            caption="../report/gpu_usage.rst",
            category="GPU use",
        ),
    log:
        "logs/gpu_usage_report.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "gpu_usage_report", mem_mb=1000, runtime=10),
    params:
        partitions=GPU["partitions"],
        prices=gpu_prices_option(GPU),
        sample_folders=get_usage_record_folders,
    shell:
        "python -m gpubio gpu-usage-report benchmarks --partitions {params.partitions:q}"
        " --plan {input.plan:q} {params.prices} --out-tsv {output.tsv} --out-models {output.models}"
        " --out-png {output.png} --sample-folders {params.sample_folders:q} > {log} 2>&1"

# Per-domain QC tables and figures for `snakemake --report results/report.html`.


rule qc_summary:
    input:
        get_qc_files,
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
        **cpu_resources(mem_mb=1000, runtime=10),
    shell:
        "python -m gpubio qc-summary --domain {wildcards.domain} --out-tsv {output.tsv}"
        " --out-png {output.png} {input:q} > {log} 2>&1"


# Where every job of the DAG goes (model, partition, GPU-hours, cost), from the dry-run.
rule gpu_plan:
    input:
        config=CONFIG_FILE,
        partitions=config["gpu"]["partitions"],
    output:
        plan=report(
            "results/gpu_plan.tsv",
            caption="../report/gpu_plan.rst",
            category="GPU plan",
        ),
        totals="results/gpu_plan.partitions.tsv",
    log:
        "logs/gpu_plan.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=1000, runtime=10),
    params:
        snakefile=workflow.main_snakefile,
    shell:
        "python -m gpubio plan --snakefile {params.snakefile:q} --configfile {input.config:q}"
        " --out {output.plan} > {log} 2>&1"

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
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m gpubio qc-summary --domain {wildcards.domain} --out-tsv {output.tsv}"
        " --out-png {output.png} {input} > {log} 2>&1"

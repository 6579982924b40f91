# Transcriptomics: per-sample cell QC (clustering, annotation, spatial build on it).


rule cell_qc:
    input:
        get_counts,
    output:
        json="results/transcriptomics/{sample}/qc.json",
        h5ad="results/transcriptomics/{sample}/filtered.h5ad",
    log:
        "logs/transcriptomics/{sample}/cell_qc.log",
    benchmark:
        "benchmarks/transcriptomics/{sample}/cell_qc.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=4000, runtime=30),
    params:
        batch=lambda wc: sheet_row("transcriptomics", wc.sample)["batch"],
        qc=config.get("transcriptomics", {}).get("qc", {}),
    shell:
        "python -m gpubio --threads {threads} cell-qc --counts {input} --sample {wildcards.sample}"
        " --batch {params.batch:q} --min-genes {params.qc[min_genes]} --min-counts {params.qc[min_counts]}"
        " --max-mito-pct {params.qc[max_mito_pct]} --min-cells {params.qc[min_cells]}"
        " --mito-prefix {params.qc[mito_prefix]:q}"
        " --out-json {output.json} --out-h5ad {output.h5ad} > {log} 2>&1"

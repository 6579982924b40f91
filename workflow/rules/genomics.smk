# Genomics: read QC (basecalling, alignment, variants and effects build on it).


rule read_qc:
    input:
        get_reads,
    output:
        "results/genomics/{sample}/read_qc.json",
    log:
        "logs/genomics/{sample}/read_qc.log",
    benchmark:
        "benchmarks/genomics/{sample}/read_qc.tsv"
    conda:
        "../../envs/genomics.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=1000, runtime=30),
    shell:
        "python -m gpubio --threads {threads} read-qc {input} --out {output} > {log} 2>&1"

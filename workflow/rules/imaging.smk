# Imaging: image QC (registration, segmentation, features build on it).


rule image_qc:
    input:
        get_image,
    output:
        "results/imaging/{sample}/qc.json",
    log:
        "logs/imaging/{sample}/image_qc.log",
    benchmark:
        "benchmarks/imaging/{sample}/image_qc.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=30),
    params:
        max_saturated=config.get("imaging", {})
        .get("qc", {})
        .get("max_saturated_fraction"),
    shell:
        "python -m gpubio --threads {threads} image-qc {input} --out {output}"
        " --max-saturated-fraction {params.max_saturated} > {log} 2>&1"

# Histopathology: tissue detection and tiling -> patch embeddings with a local
# vision-language model (GPU) -> zero-shot tile labels from text prompts -> slide fractions.


# this domain's settings, targets and input functions
include: "histopathology_inputs.smk"


rule tile_slide:
    input:
        get_slide,
    output:
        tiles="results/histopathology/{sample}/tiles.tsv",
        mask="results/histopathology/{sample}/tissue_mask.tif",
        json="results/histopathology/{sample}/tissue.json",
    log:
        "logs/histopathology/{sample}/tile_slide.log",
    benchmark:
        "benchmarks/histopathology/{sample}/tile_slide.tsv"
    conda:
        "../../envs/histopathology.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "tile_slide", mem_mb=2000, runtime=30),
    params:
        mpp=slide_mpp_option,
        options=tiling_options(HISTOPATHOLOGY),
    shell:
        "python -m gpubio --threads {threads} tile-slide {input:q} {params.mpp} {params.options}"
        " --out-tiles {output.tiles} --out-mask {output.mask} --out-json {output.json} > {log} 2>&1"


# VRAM grows with the batch size (activations of every tile in a forward pass)
rule embed_tiles:
    input:
        slide=get_slide,
        tiles="results/histopathology/{sample}/tiles.tsv",
    output:
        "results/histopathology/{sample}/embeddings.h5ad",
    log:
        "logs/histopathology/{sample}/embed_tiles.log",
    benchmark:
        "benchmarks/histopathology/{sample}/embed_tiles.tsv"
    conda:
        "../../envs/histopathology.yaml"
    threads: 4
    resources:
        **gpu_resources(
            SITE,
            "embed_tiles",
            gpus=1,
            vram_gb=tile_embedding_vram_gb(
                HISTOPATHOLOGY["model"], HISTOPATHOLOGY["embedding"]["batch_size"]
            ),
            mem_mb=8000,
            runtime=120,
        ),
    params:
        usage=usage_record("histopathology/{sample}/embed_tiles"),
        mpp=slide_mpp_option,
        model=HISTOPATHOLOGY["model"],
        options=embedding_options(HISTOPATHOLOGY),
    shell:
        gpu_step() + " embed-tiles"
        " {input.slide:q} {input.tiles} {params.mpp} --sample {wildcards.sample} --model {params.model:q}"
        " {params.options} --out {output} > {log} 2>&1"


# the text tower runs once per class prompt: cheap enough for the CPU
rule zero_shot_labels:
    input:
        slide=get_slide,
        embeddings="results/histopathology/{sample}/embeddings.h5ad",
        mask="results/histopathology/{sample}/tissue_mask.tif",
    output:
        tsv="results/histopathology/{sample}/labels.tsv",
        png=report(
            "results/histopathology/{sample}/heatmap.png",
            caption="../report/histopathology_heatmap.rst",
            category="histopathology",
            subcategory="zero-shot labels",
            labels={"sample": "{sample}", "figure": "heatmap"},
        ),
    log:
        "logs/histopathology/{sample}/zero_shot_labels.log",
    benchmark:
        "benchmarks/histopathology/{sample}/zero_shot_labels.tsv"
    conda:
        "../../envs/histopathology.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "zero_shot_labels", mem_mb=3000, runtime=30),
    params:
        mpp=slide_mpp_option,
        model=HISTOPATHOLOGY["model"],
        classes=class_options(HISTOPATHOLOGY),
    shell:
        "python -m gpubio --threads {threads} zero-shot-labels {input.slide:q} {input.embeddings}"
        " {input.mask} {params.mpp} --sample {wildcards.sample} --model {params.model:q}"
        " {params.classes} --out-tsv {output.tsv} --out-png {output.png} > {log} 2>&1"


rule slide_fractions:
    input:
        get_slide_labels,
    output:
        tsv=report(
            "results/histopathology/class_fractions.tsv",
            caption="../report/histopathology_fractions.rst",
            category="histopathology",
            subcategory="class fractions",
        ),
        png=report(
            "results/histopathology/class_fractions.png",
            caption="../report/histopathology_fractions.rst",
            category="histopathology",
            subcategory="class fractions",
        ),
    log:
        "logs/histopathology/slide_fractions.log",
    conda:
        "../../envs/report.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "slide_fractions", mem_mb=1000, runtime=10),
    params:
        samples=PROJECT.samples("histopathology"),
    shell:
        "python -m gpubio slide-fractions --samples {params.samples} --labels {input}"
        " --out-tsv {output.tsv} --out-png {output.png} > {log} 2>&1"

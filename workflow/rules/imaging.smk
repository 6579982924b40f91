# Imaging: QC -> registration to the reference (samples that have one) -> optional Cellpose 3
# restoration -> Cellpose segmentation (tiled; a model trained here or given) -> per-cell
# features and overlays.


# this domain's settings, targets and input functions
include: "imaging_inputs.smk"


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
        **cpu_resources(SITE, "image_qc", mem_mb=2000, runtime=30),
    params:
        options=image_qc_options(IMAGING),
    shell:
        "python -m gpubio --threads {threads} image-qc {input:q} --out {output}"
        " {params.options} > {log} 2>&1"


# elastix on CPUs; the learned (torch) method on a GPU when the site has one
rule register_image:
    input:
        image=get_image,
        reference=get_reference_image,
    output:
        image="results/imaging/{sample}/registered.tif",
        footprint="results/imaging/{sample}/footprint.tif",
        transform="results/imaging/{sample}/transform.json",
        png=report(
            "results/imaging/{sample}/checkerboard.png",
            caption="../report/imaging_checkerboard.rst",
            category="imaging",
            subcategory="registration",
            labels={"sample": "{sample}", "figure": "checkerboard"},
        ),
    log:
        "logs/imaging/{sample}/register_image.log",
    benchmark:
        "benchmarks/imaging/{sample}/register_image.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 2
    resources:
        **gpu_resources(
            SITE,
            "register_image",
            gpus=IMAGING_REGISTRATION_GPUS,
            vram_gb=registration_vram_gb,
            mem_mb=lambda wc, input: registration_mem_mb(input_files_mb(input)),
            runtime=60,
        ),
    params:
        usage=usage_record("imaging/{sample}/register_image"),
        options=registration_options(IMAGING),
    shell:
        gpu_step() + " register-image"
        " {input.image:q} --reference {input.reference:q} --sample {wildcards.sample} {params.options}"
        " --out-image {output.image} --out-footprint {output.footprint}"
        " --out-transform {output.transform} --out-png {output.png} > {log} 2>&1"


# Cellpose 2.0 recipe: train on a folder of images + masks; segmentation then uses the model.
# Scored on held-out validation images while it trains, beside Otsu + watershed (and a built-in model).
rule train_cellpose:
    input:
        get_training_files,
    output:
        model="results/imaging/model/cellpose_trained",
        json="results/imaging/model/training.json",
        tsv=report(
            "results/imaging/model/validation.tsv",
            caption="../report/imaging_validation.rst",
            category="imaging",
            subcategory="segmentation model",
        ),
        png=report(
            "results/imaging/model/training.png",
            caption="../report/imaging_training.rst",
            category="imaging",
            subcategory="segmentation model",
        ),
    log:
        "logs/imaging/train_cellpose.log",
    benchmark:
        "benchmarks/imaging/train_cellpose.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 4
    resources:
        **gpu_resources(
            SITE,
            "train_cellpose",
            gpus=1,
            vram_gb=cellpose_training_vram_gb(
                IMAGING["training"]["crop_size"],
                IMAGING["training"]["batch_size"],
                IMAGING["segmentation"]["model"],
            ),
            mem_mb=8000,
            runtime=240,
        ),
    params:
        usage=usage_record("imaging/train_cellpose"),
        images=IMAGING["training"]["images"],
        options=training_options(IMAGING),
    shell:
        gpu_step() + " train-cellpose"
        " --images {params.images:q} {params.options} --out {output.model} --out-json {output.json}"
        " --out-tsv {output.tsv} --out-png {output.png} > {log} 2>&1"


# Cellpose 3 denoise / deblur / upsample; one network pass per tile, so VRAM grows with the tile size
rule restore_image:
    input:
        image=get_segmentation_image,
        footprint=get_segmentation_footprint,
        model=get_restoration_model,
    output:
        image="results/imaging/{sample}/restored.tif",
        json="results/imaging/{sample}/restoration.json",
        png=report(
            "results/imaging/{sample}/restoration.png",
            caption="../report/imaging_restoration.rst",
            category="imaging",
            subcategory="restoration",
            labels={"sample": "{sample}", "figure": "raw and restored"},
        ),
    log:
        "logs/imaging/{sample}/restore_image.log",
    benchmark:
        "benchmarks/imaging/{sample}/restore_image.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 4
    resources:
        **gpu_resources(
            SITE,
            "restore_image",
            gpus=1,
            vram_gb=restoration_vram_gb(
                IMAGING["restoration"]["tile_size"],
                IMAGING["restoration"]["tile_overlap"],
            ),
            mem_mb=restoration_mem_mb(
                IMAGING["restoration"]["tile_size"],
                IMAGING["restoration"]["tile_overlap"],
            ),
            runtime=120,
        ),
    params:
        usage=usage_record("imaging/{sample}/restore_image"),
        model=IMAGING_RESTORATION_MODEL,
        options=restoration_options(IMAGING),
        footprint=footprint_option,
    shell:
        gpu_step() + " restore-image"
        " {input.image:q} --model {params.model:q} --sample {wildcards.sample} {params.options}"
        " {params.footprint} --out-image {output.image} --out-json {output.json}"
        " --out-png {output.png} > {log} 2>&1"


# VRAM grows with the tile size (flows of a whole tile) and the batch size (network patches)
rule segment_cells:
    input:
        image=get_image_to_segment,
        footprint=get_segmentation_footprint,
        model=get_cellpose_model,
    output:
        masks="results/imaging/{sample}/masks.tif",
        json="results/imaging/{sample}/segmentation.json",
    log:
        "logs/imaging/{sample}/segment_cells.log",
    benchmark:
        "benchmarks/imaging/{sample}/segment_cells.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 4
    resources:
        **gpu_resources(
            SITE,
            "segment_cells",
            gpus=1,
            vram_gb=cellpose_vram_gb(
                IMAGING["segmentation"]["tile_size"],
                IMAGING["segmentation"]["batch_size"],
                IMAGING["segmentation"]["model"],
            ),
            mem_mb=cellpose_mem_mb(IMAGING["segmentation"]["tile_size"]),
            runtime=120,
        ),
    params:
        usage=usage_record("imaging/{sample}/segment_cells"),
        model=IMAGING_CELLPOSE_MODEL,
        options=segmentation_options(IMAGING),
        footprint=footprint_option,
    shell:
        gpu_step() + " segment-cells"
        " {input.image:q} --sample {wildcards.sample} --model {params.model:q} {params.options} {params.footprint}"
        " --out-masks {output.masks} --out-json {output.json} > {log} 2>&1"


# Cells found in each image, and the images where Cellpose found none although objects stand out
rule segmentation_summary:
    input:
        get_segmentation_records,
    output:
        report(
            "results/imaging/segmentation_summary.tsv",
            caption="../report/imaging_segmentation_summary.rst",
            category="imaging",
            subcategory="segmentation",
        ),
    log:
        "logs/imaging/segmentation_summary.log",
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "segmentation_summary", mem_mb=1000, runtime=10),
    shell:
        "python -m gpubio segmentation-summary --out-tsv {output} {input:q} > {log} 2>&1"


rule cell_features:
    input:
        image=get_segmentation_image,
        masks="results/imaging/{sample}/masks.tif",
    output:
        tsv=report(
            "results/imaging/{sample}/cells.tsv",
            caption="../report/imaging_cells.rst",
            category="imaging",
            subcategory="cells",
            labels={"sample": "{sample}", "table": "cells"},
        ),
        png=report(
            "results/imaging/{sample}/overlay.png",
            caption="../report/imaging_overlay.rst",
            category="imaging",
            subcategory="segmentation",
            labels={"sample": "{sample}", "figure": "overlay"},
        ),
    log:
        "logs/imaging/{sample}/cell_features.log",
    benchmark:
        "benchmarks/imaging/{sample}/cell_features.tsv"
    conda:
        "../../envs/imaging.yaml"
    threads: 1
    resources:
        **cpu_resources(SITE, "cell_features", mem_mb=3000, runtime=30),
    params:
        channel=max(1, IMAGING["segmentation"]["channels"][0]),
    shell:
        "python -m gpubio --threads {threads} cell-features {input.image:q} {input.masks:q}"
        " --sample {wildcards.sample} --channel {params.channel} --out-tsv {output.tsv}"
        " --out-png {output.png} > {log} 2>&1"

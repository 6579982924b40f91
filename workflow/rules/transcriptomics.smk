# Transcriptomics: per-sample cell QC -> all samples integrated and clustered (GPU or CPU)
# -> CellTypist / scANVI labels, optional foundation-model embeddings -> atlas, figures,
# spatial statistics per sample with coordinates.


# this domain's settings, targets and input functions
include: "transcriptomics_inputs.smk"


from gpubio.steps import step_options
from gpubio.transcriptomics.sizing import atlas_mem_mb, atlas_vram_gb, embedding_vram_gb


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
        **cpu_resources(SITE, "cell_qc", mem_mb=4000, runtime=30),
    params:
        batch=lambda wc: sheet_row("transcriptomics", wc.sample)["batch"],
        options=step_options(TRANSCRIPTOMICS, "cell-qc"),
    shell:
        "python -m gpubio --threads {threads} cell-qc --counts {input:q} --sample {wildcards.sample}"
        " --batch {params.batch:q} {params.options}"
        " --out-json {output.json} --out-h5ad {output.h5ad} > {log} 2>&1"


# Doublets: Scrublet per batch on each sample's QC-filtered cells (rapids-singlecell on a GPU,
# scanpy on the CPU). Integration reads the flagged cells; the counts join the QC table.
if TRANSCRIPTOMICS["doublets"]["enabled"]:
    CELLS_TO_INTEGRATE = "results/transcriptomics/{sample}/doublets.h5ad"
    QC_TABLES["transcriptomics"] += expand(
        "results/transcriptomics/{sample}/doublets.tsv",
        sample=PROJECT.samples("transcriptomics"),
    )


rule detect_doublets:
    input:
        "results/transcriptomics/{sample}/filtered.h5ad",
    output:
        h5ad="results/transcriptomics/{sample}/doublets.h5ad",
        tsv="results/transcriptomics/{sample}/doublets.tsv",
        png=report(
            "results/transcriptomics/{sample}/doublets.png",
            category="transcriptomics",
            subcategory="Doublets",
        ),
    log:
        "logs/transcriptomics/{sample}/detect_doublets.log",
    benchmark:
        "benchmarks/transcriptomics/{sample}/detect_doublets.tsv"
    conda:
        "../../envs/transcriptomics-rapids.yaml"
    threads: 2
    resources:
        **gpu_resources(
            SITE,
            "detect_doublets",
            gpus=1,
            # Scrublet works on a sample's counts plus as many simulated doublets (PCA and
            # neighbours of twice its cells): a few GB for a 10x lane, known before the run
            vram_gb=4,
            min_compute_capability=7.0,
            mem_mb=8000,
            runtime=60,
        ),
    params:
        usage=usage_record("transcriptomics/{sample}/detect_doublets"),
        options=step_options(TRANSCRIPTOMICS, "detect-doublets"),
    shell:
        gpu_step()
        + " detect-doublets {input:q} --sample {wildcards.sample} {params.options}"
        " --out-h5ad {output.h5ad} --out-tsv {output.tsv} --out-png {output.png} > {log} 2>&1"


# One job over all samples. VRAM grows with cells x genes (the size of the inputs, known from
# the sheet's count files): a small data set fits a T4, a million-cell atlas needs an 80 GB
# card. No GPU: the same code on scanpy.
rule integrate_cells:
    input:
        get_filtered_cells,
    output:
        h5ad="results/transcriptomics/integrated.h5ad",
        markers=report(
            "results/transcriptomics/markers.tsv",
            caption="../report/transcriptomics_markers.rst",
            category="transcriptomics",
            subcategory="Atlas",
        ),
    log:
        "logs/transcriptomics/integrate_cells.log",
    benchmark:
        "benchmarks/transcriptomics/integrate_cells.tsv"
    conda:
        "../../envs/transcriptomics-rapids.yaml"
    threads: 8
    resources:
        **gpu_resources(
            SITE,
            "integrate_cells",
            gpus=1,
            vram_gb=atlas_vram_gb(TRANSCRIPTOMICS_INPUT_MB),
            min_compute_capability=7.0,
            policy="cheapest",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=240,
        ),
    params:
        usage=usage_record("transcriptomics/integrate_cells"),
        options=step_options(TRANSCRIPTOMICS, "integrate-cells"),
    shell:
        gpu_step() + " integrate-cells {input:q}"
        " {params.options}"
        " --out-h5ad {output.h5ad} --out-markers {output.markers} > {log} 2>&1"


rule train_celltypist:
    input:
        reference=TRANSCRIPTOMICS["annotation"]["reference"] or [],
    output:
        "results/transcriptomics/celltypist/model.pkl",
    log:
        "logs/transcriptomics/train_celltypist.log",
    benchmark:
        "benchmarks/transcriptomics/train_celltypist.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 4
    resources:
        **cpu_resources(SITE, "train_celltypist", mem_mb=8000, runtime=120),
    params:
        options=step_options(TRANSCRIPTOMICS, "train-celltypist"),
    shell:
        "python -m gpubio --threads {threads} train-celltypist --reference {input.reference:q}"
        " {params.options} --out {output} > {log} 2>&1"


rule annotate_celltypist:
    input:
        integrated="results/transcriptomics/integrated.h5ad",
        model=get_celltypist_model,
    output:
        "results/transcriptomics/annotation/celltypist.tsv",
    log:
        "logs/transcriptomics/annotate_celltypist.log",
    benchmark:
        "benchmarks/transcriptomics/annotate_celltypist.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 1
    resources:
        **cpu_resources(
            SITE,
            "annotate_celltypist",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=60,
        ),
    params:
        voting=step_options(TRANSCRIPTOMICS, "annotate-celltypist"),
    shell:
        "python -m gpubio --threads {threads} annotate-celltypist --integrated {input.integrated:q}"
        " --model {input.model:q} {params.voting} --out {output} > {log} 2>&1"


# scVI/scANVI train with PyTorch: on the job's GPU when it has one, else on the CPU.
rule annotate_scanvi:
    input:
        integrated="results/transcriptomics/integrated.h5ad",
        reference=TRANSCRIPTOMICS["annotation"]["reference"] or [],
    output:
        "results/transcriptomics/annotation/scanvi.tsv",
    log:
        "logs/transcriptomics/annotate_scanvi.log",
    benchmark:
        "benchmarks/transcriptomics/annotate_scanvi.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 2
    resources:
        **gpu_resources(
            SITE,
            "annotate_scanvi",
            gpus=1,
            vram_gb=8,
            policy="cheapest",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=240,
        ),
    params:
        usage=usage_record("transcriptomics/annotate_scanvi"),
        options=step_options(TRANSCRIPTOMICS, "annotate-scanvi"),
    shell:
        gpu_step() + " annotate-scanvi"
        " --integrated {input.integrated:q} --reference {input.reference:q} "
        " {params.options} --out {output} > {log} 2>&1"


# Geneformer- or scGPT-style embeddings (off unless transcriptomics.embeddings.weights names a
# model). VRAM: the model plus one batch's activations (batch_size x max_length).
rule embed_cells:
    input:
        integrated="results/transcriptomics/integrated.h5ad",
        weights=TRANSCRIPTOMICS["embeddings"]["weights"] or [],
    output:
        "results/transcriptomics/embeddings.h5ad",
    log:
        "logs/transcriptomics/embed_cells.log",
    benchmark:
        "benchmarks/transcriptomics/embed_cells.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 4
    resources:
        **gpu_resources(
            SITE,
            "embed_cells",
            gpus=1,
            vram_gb=embedding_vram_gb(TRANSCRIPTOMICS["embeddings"]),
            policy="cheapest",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=240,
        ),
    params:
        usage=usage_record("transcriptomics/embed_cells"),
        options=step_options(TRANSCRIPTOMICS, "embed-cells"),
    shell:
        gpu_step() + " embed-cells"
        " --integrated {input.integrated:q} --weights {input.weights:q} {params.options}"
        " --out {output} > {log} 2>&1"


rule build_atlas:
    input:
        unpack(get_atlas_inputs),
    output:
        "results/transcriptomics/atlas.h5ad",
    log:
        "logs/transcriptomics/build_atlas.log",
    benchmark:
        "benchmarks/transcriptomics/build_atlas.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 1
    resources:
        **cpu_resources(
            SITE,
            "build_atlas",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=60,
        ),
    params:
        embeddings=lambda wildcards, input: quote_option_list(
            "--embeddings", input.embeddings
        ),
    shell:
        "python -m gpubio --threads {threads} build-atlas --integrated {input.integrated:q}"
        " --labels {input.labels:q} {params.embeddings} --out {output} > {log} 2>&1"


rule plot_atlas:
    input:
        "results/transcriptomics/atlas.h5ad",
    output:
        umap=report(
            "results/transcriptomics/plots/umap.png",
            caption="../report/transcriptomics_umap.rst",
            category="transcriptomics",
            subcategory="Atlas",
        ),
        violins=report(
            "results/transcriptomics/plots/qc_violins.png",
            caption="../report/transcriptomics_qc_violins.rst",
            category="transcriptomics",
            subcategory="QC",
        ),
        dotplot=report(
            "results/transcriptomics/plots/markers_dotplot.png",
            caption="../report/transcriptomics_markers_dotplot.rst",
            category="transcriptomics",
            subcategory="Atlas",
        ),
    log:
        "logs/transcriptomics/plot_atlas.log",
    benchmark:
        "benchmarks/transcriptomics/plot_atlas.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 1
    resources:
        **cpu_resources(
            SITE,
            "plot_atlas",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=60,
        ),
    params:
        options=step_options(TRANSCRIPTOMICS, "plot-atlas"),
    shell:
        "python -m gpubio --threads {threads} plot-atlas --atlas {input:q} {params.options}"
        " --out-umap {output.umap} --out-violins {output.violins} --out-dotplot {output.dotplot} > {log} 2>&1"


rule spatial_stats:
    input:
        atlas="results/transcriptomics/atlas.h5ad",
        coordinates=get_coordinates,
        interactions=get_interactions,
    output:
        tsv="results/transcriptomics/spatial/{sample}.tsv",
        png=report(
            "results/transcriptomics/spatial/{sample}.png",
            caption="../report/transcriptomics_spatial.rst",
            category="transcriptomics",
            subcategory="Spatial",
            labels={"sample": "{sample}"},
        ),
    log:
        "logs/transcriptomics/{sample}/spatial_stats.log",
    benchmark:
        "benchmarks/transcriptomics/{sample}/spatial_stats.tsv"
    conda:
        "../../envs/transcriptomics.yaml"
    threads: 1
    resources:
        **cpu_resources(
            SITE,
            "spatial_stats",
            mem_mb=atlas_mem_mb(TRANSCRIPTOMICS_INPUT_MB),
            runtime=120,
        ),
    params:
        options=step_options(TRANSCRIPTOMICS, "spatial-stats"),
        interactions=lambda wildcards, input: quote_option_list(
            "--interactions", input.interactions
        ),
    shell:
        "python -m gpubio --threads {threads} spatial-stats --atlas {input.atlas:q} --sample {wildcards.sample}"
        " --coordinates {input.coordinates:q} {params.interactions} {params.options}"
        " --out-tsv {output.tsv} --out-png {output.png} > {log} 2>&1"

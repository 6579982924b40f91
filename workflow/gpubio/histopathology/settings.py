"""The histopathology section of config.yaml: defaults, start-up checks, each rule's options
and the embedding step's GPU memory.

The Snakefile calls these while it builds the DAG (light imports only: no torch); options are
spelled out in the rules' shell commands, so `snakemake -n -p` shows every setting used.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from gpubio.histopathology.weights import PUBLISHED_CONFIG, ModelError, architecture, read_model_config
from gpubio.steps import step_options

CUDA_CONTEXT_GB = 1.0


def config_problems(settings: dict, config_file: str, workdir: str | Path = ".") -> list[str]:
    """One line per problem of an active module's section that would only show once jobs run."""
    problems = []
    model = settings["model"]
    if not model:
        problems.append(
            f"{config_file}: histopathology.model is not set; give the local directory of the "
            "CONCH weights (pytorch_model.bin and conch_byte_level_bpe_uncased.json; see README, Histopathology)"
        )
    else:
        try:
            read_model_config(Path(workdir) / model)
        except ModelError as error:
            problems.append(
                f"{config_file}: histopathology.model: {str(error).replace(str(Path(workdir) / model), model)}"
            )
    classes = settings["classes"]
    if len(classes) < 2:
        problems.append(
            f"{config_file}: histopathology.classes has {len(classes)} class(es); zero-shot labels need at least two, "
            'e.g. tumor: ["an H&E image of tumor tissue"], stroma: ["an H&E image of stroma"]'
        )
    for name, prompts in classes.items():
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            problems.append(
                f"{config_file}: histopathology.classes.{name} has no prompt text; give a list of one or more prompts"
            )
    return problems


def slide_problems(sheet, sheet_path: str, workdir: str | Path = ".") -> list[str]:
    """One line per slide of the sheet that cannot be tiled: row, file, problem and fix (headers only)."""
    from gpubio.config import row_where
    from gpubio.histopathology.slide import slide_problem

    if sheet is None:
        return []
    problems = []
    for i, row in enumerate(sheet.to_dict("records"), start=1):
        mpp = float(row["mpp"]) if row.get("mpp") else None
        problem = slide_problem(Path(workdir) / row["slide"], mpp)
        if problem:
            where = row_where(sheet_path, sheet, i, row["sample"])
            problems.append(f"{where}: slide '{row['slide']}': {problem}")
    return problems


def tiling_options(settings: dict) -> str:
    return step_options(settings, "tile-slide")


def embedding_options(settings: dict) -> str:
    return step_options(settings, "embed-tiles")


def class_options(settings: dict) -> str:
    """--class NAME PROMPT... per class (quoted: prompts are free text)."""
    options = []
    for name, prompts in settings["classes"].items():
        options += ["--class", name, *prompts]
    return shlex.join(options)


def tile_embedding_vram_gb(model_dir: str, batch_size: int) -> float:
    """VRAM of embedding tiles: CUDA context, fp32 weights, and a batch's activations.

    Activations per image: each block of the image tower holds its tokens (width floats)
    several times over plus the attention matrices (heads x tokens^2); ~12 copies of the
    token tensor covers both at ViT-B/16 sizes. An unreadable directory counts as CONCH's.
    """
    try:
        c = read_model_config(model_dir)
    except ModelError:
        c = architecture(PUBLISHED_CONFIG, "CONCH")
    tokens = (c["image_size"] // c["patch_size"]) ** 2 + 1
    params = 12 * c["width"] ** 2 * c["depth"] + 12 * c["text_width"] ** 2 * c["text_depth"]
    params += c["vocab_size"] * c["text_width"]
    per_image = 4 * (12 * tokens * c["width"] + c["heads"] * tokens**2)
    return round(CUDA_CONTEXT_GB + 4 * params / 1e9 + batch_size * per_image / 1e9, 1)

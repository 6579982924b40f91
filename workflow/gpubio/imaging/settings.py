"""The imaging section of config.yaml: defaults, checks, and each rule's command-line options.

The Snakefile calls these while it builds the DAG (light imports only): the options are
spelled out in the rules' shell commands, so `snakemake -n -p` shows every setting used.
"""

from __future__ import annotations

from pathlib import Path

from gpubio.steps import step_options

TRAINED_MODEL = "results/imaging/model/cellpose_trained"


def imaging_settings(config: dict) -> dict:
    """The imaging section with schema defaults filled (also when the section is absent)."""
    from gpubio.config import section_settings

    return section_settings(config, "imaging")


def imaging_defaults() -> dict:
    """Every imaging setting at its schema default: the defaults of the commands and functions too."""
    return imaging_settings({})


def uses_trained_model(settings: dict) -> bool:
    return settings["segmentation"]["model"] == "trained"


def cellpose_model(settings: dict) -> str:
    """What segmentation loads: the trained model's path, or the configured name / file."""
    return TRAINED_MODEL if uses_trained_model(settings) else settings["segmentation"]["model"]


def restoration_enabled(settings: dict) -> bool:
    return bool(settings["restoration"]["enabled"])


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or bool(Path(value).suffix)


def config_problems(
    settings: dict, config_file: str, workdir: str | Path = ".", cellpose_major: int | None = None
) -> list[str]:
    """One line per problem in the imaging section that would only show once jobs run.

    `cellpose_major`: the Cellpose generation jobs will use (default: the installed one).
    """
    from gpubio.imaging.cellpose_models import ModelError, read_training_set

    workdir = Path(workdir)
    problems = _restoration_problems(settings, config_file, workdir, cellpose_major)
    seg, training = settings["segmentation"], settings["training"]
    if uses_trained_model(settings):
        folder = training.get("images")
        if not folder:
            problems.append(
                f"{config_file}: imaging.segmentation.model is 'trained' but imaging.training.images is not set; "
                "set it to a folder of <name>.tif + <name>_masks.tif, or give a built-in model name or a model file"
            )
        else:
            try:
                pairs = read_training_set(workdir / folder)
            except ModelError as error:
                problems.append(
                    f"{config_file}: imaging.training.images: {error}".replace(str(workdir / folder), folder)
                )
            else:
                problems += _training_file_problems(pairs, folder, config_file)
        problems += _validation_problems(training.get("validation"), config_file, workdir)
    for key, value in (("segmentation.model", seg["model"]), ("training.base_model", training["base_model"])):
        if value not in ("trained", "none") and _looks_like_path(value) and not (workdir / value).is_file():
            problems.append(
                f"{config_file}: imaging.{key} '{value}' does not exist; give the path of a Cellpose model file "
                "(relative paths are from the working directory) or a built-in model name"
            )
    for path in settings["registration"]["elastix"]["parameter_files"]:
        if not (workdir / path).is_file():
            problems.append(
                f"{config_file}: imaging.registration.elastix.parameter_files: '{path}' does not exist; fix the path"
            )
    if seg["tile_overlap"] * 2 >= seg["tile_size"]:
        problems.append(
            f"{config_file}: imaging.segmentation.tile_overlap ({seg['tile_overlap']}) must be less than half of "
            f"tile_size ({seg['tile_size']}); raise tile_size or lower tile_overlap"
        )
    return problems


def _restoration_problems(settings: dict, config_file: str, workdir: Path, cellpose_major: int | None) -> list[str]:
    from gpubio.imaging.resources import installed_cellpose_major
    from gpubio.imaging.restoration import restoration_model_problem

    if not restoration_enabled(settings):
        return []
    restoration = settings["restoration"]
    model, major = restoration["model"], cellpose_major or installed_cellpose_major()
    problems = []
    problem = restoration_model_problem(model, major)
    if problem and (major >= 4 or not (workdir / model).is_file()):
        problems.append(f"{config_file}: imaging.restoration.model: {problem}")
    elif _looks_like_path(model) and not (workdir / model).is_file():
        problems.append(
            f"{config_file}: imaging.restoration.model '{model}' does not exist; give the path of a Cellpose 3 "
            "restoration model file (relative paths are from the working directory) or a built-in name such as denoise_cyto3"
        )
    if restoration["tile_overlap"] * 2 >= restoration["tile_size"]:
        problems.append(
            f"{config_file}: imaging.restoration.tile_overlap ({restoration['tile_overlap']}) must be less than half "
            f"of tile_size ({restoration['tile_size']}); raise tile_size or lower tile_overlap"
        )
    return problems


def _validation_problems(folder: str | None, config_file: str, workdir: Path) -> list[str]:
    """The validation folder, when one is given: pairs of readable TIFFs, like the training folder."""
    from gpubio.imaging.cellpose_models import ModelError, read_training_set

    if not folder:
        return []
    key = "imaging.training.validation"
    try:
        pairs = read_training_set(workdir / folder, key)
    except ModelError as error:
        return [f"{config_file}: {key}: {error}".replace(str(workdir / folder), folder)]
    return _training_file_problems(pairs, folder, config_file, key)


def _training_file_problems(pairs, folder: str, config_file: str, key: str = "imaging.training.images") -> list[str]:
    """One line per training image or mask that is not a readable TIFF (headers only)."""
    from gpubio.image_io import tiff_problem

    problems = []
    for path in (p for pair in pairs for p in pair if p.suffix.lower() in (".tif", ".tiff")):  # masks may be PNG
        problem = tiff_problem(path)
        if problem:
            problems.append(f"{config_file}: {key}: '{Path(folder) / path.name}': {problem}")
    return problems


def registration_options(settings: dict) -> str:
    """register-image options of the configured method (elastix: its parameter files replace
    the built-in transforms)."""
    reg = settings["registration"]
    if reg["method"] == "learned":
        return step_options(settings, "register-image", exclude=("registration.elastix",))
    skip = ("registration.elastix.transforms", "registration.elastix.bspline_grid_spacing")
    return step_options(
        settings,
        "register-image",
        exclude=("registration.learned", *(skip if reg["elastix"]["parameter_files"] else ())),
    )


def segmentation_options(settings: dict) -> str:
    seg = dict(settings["segmentation"])
    if restoration_enabled(settings):
        # the restored image holds the segmentation channel first, then the nuclear one (if any)
        seg["channels"] = [1, 2 if seg["channels"][1] else 0]
    return step_options({**settings, "segmentation": seg}, "segment-cells")


def restoration_options(settings: dict) -> str:
    """restore-image options; channels and diameter are segmentation's, so both see the same cells."""
    return step_options(settings, "restore-image")


def training_options(settings: dict) -> str:
    return step_options(settings, "train-cellpose")


def image_qc_options(settings: dict) -> str:
    return step_options(settings, "image-qc")


def training_files(settings: dict, workdir: str | Path = ".") -> list[str]:
    """The training and validation images and masks (inputs of the training rule), as given in config."""
    from gpubio.imaging.cellpose_models import ModelError, read_training_set

    files = []
    for key in ("images", "validation"):
        folder = settings["training"].get(key)
        if not folder:
            continue
        try:
            pairs = read_training_set(Path(workdir) / folder)
        except ModelError:
            continue
        files += [str(Path(folder) / p.name) for pair in pairs for p in pair]
    return files

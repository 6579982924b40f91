"""Stage every model a config names into one site directory (`scripts/stage-models`).

Clusters often have no internet, and no step of the workflow downloads anything. On a
machine that has internet, `stage` fetches or saves each model the config needs into one
directory with a fixed layout; copy it to the cluster and use the config lines it prints.
On the cluster, `check` (offline) says whether a directory holds everything, naming what
is missing and how to get it.

Layout of a site directory:

    dorado/<model>/config.toml           dorado download --models-directory dorado
    variant_effects/<family>/            Enformer or DNABERT-style, save_pretrained layout;
                                         DeepSEA-style: Beluga's deepsea.beluga.pth as released,
                                         or config.json, model.pt, features.txt (--convert deepsea)
    celltypist/<name>.pkl                CellTypist model
    embeddings/                          Geneformer-style: config.json, weights, token_dictionary;
                                         scGPT-style: args.json, best_model.pt, vocab.json
    cellpose/<weights file>              Cellpose built-in weights (cyto3, nuclei, cpsam, ...),
                                         also the restoration models (denoise_cyto3, ...)
    histopathology/                      CONCH as released: pytorch_model.bin,
                                         conch_byte_level_bpe_uncased.json (--convert conch)

Two models are not fetched (gated or licensed for download by hand); `convert` gathers what
their authors release into the layout above (gpubio.models.convert).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Where each kind is fetched from when the config names only a local path.
DEFAULT_SOURCES = {
    "enformer": "EleutherAI/enformer-official-rough",
    "dnabert": "zhihan1996/DNABERT-2-117M",
    "embeddings": "ctheodoris/Geneformer",
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Checkpoints downloaded by hand: the files each needs, and how a user gets them (the README
# section of each model says where from; --convert gathers CONCH and DeepSEA).
OWN_LAYOUTS = {
    "deepsea": (["deepsea.beluga.pth"], "README: DeepSEA-style effects (scripts/stage-models --convert deepsea)"),
    "scgpt": (
        ["args.json", "best_model.pt", "vocab.json"],
        "README: scGPT-style embeddings (a released checkpoint folder)",
    ),
    "conch": (
        ["pytorch_model.bin", "conch_byte_level_bpe_uncased.json"],
        "README: Histopathology (scripts/stage-models --convert conch)",
    ),
}
# Cellpose 3 keeps most built-in weights under another file name than the model's name
CELLPOSE_WEIGHT_FILES = {"cyto": "cytotorch_0", "cyto2": "cyto2torch_0", "nuclei": "nucleitorch_0"}
_DORADO_NAME = re.compile(r"^(dna|rna)\d*_")


class StagingError(RuntimeError):
    """A model cannot be staged, or the config does not say enough to stage it."""


@dataclass(frozen=True)
class ModelNeed:
    """One model the config needs: what it is, where it goes in the site directory, and
    which config key then points at it."""

    kind: str  # dorado | enformer | dnabert | celltypist | embeddings | cellpose
    name: str  # what to fetch: a model name, a hub id, a built-in name
    target: str  # path inside the site directory
    config_key: str  # dotted config key the staged path is set to
    config_value: str  # the value, relative to the site directory ("" = the target)


def _get(config: dict, dotted: str, default=None):
    node = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _sheet_has_pod5(sheet: str | None) -> bool:
    if not sheet or not Path(sheet).is_file():
        return False
    with open(sheet, newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        return any((row.get("pod5") or "").strip() for row in rows)


def dorado_model_names(complex_or_name: str) -> list[str]:
    """Model names a basecall model setting asks for: full names (`dna_r10.4.1_e8.2_400bps_hac@v5.0.0`,
    comma-separated with their modified-base models) are names; `hac,5mCG_5hmCG` is a complex."""
    return [part.strip() for part in complex_or_name.split(",") if part.strip()]


def model_needs(
    config: dict, sources: dict[str, str] | None = None, dorado_models: list[str] | None = None
) -> list[ModelNeed]:
    """Every model the (parsed) config needs from outside the workflow."""
    sources = {**DEFAULT_SOURCES, **(sources or {})}
    needs: list[ModelNeed] = []

    basecall = str(_get(config, "genomics.basecall.model", "hac") or "")
    if dorado_models or _sheet_has_pod5(_get(config, "genomics.samples")):
        names = dorado_models or dorado_model_names(basecall)
        key = "genomics.basecall.models_directory"
        if all(_DORADO_NAME.match(n) for n in names):
            needs += [ModelNeed("dorado", n, f"dorado/{n}", key, "dorado") for n in names]
        else:  # a complex: dorado picks the models from the data's chemistry
            needs.append(ModelNeed("dorado", ",".join(names), "dorado", key, "dorado"))

    if _get(config, "genomics.variant_effects.enabled", True) and _get(config, "genomics.variant_effects.weights"):
        family = _get(config, "genomics.variant_effects.family", "enformer")
        needs.append(
            ModelNeed(
                family, sources.get(family, ""), f"variant_effects/{family}", "genomics.variant_effects.weights", ""
            )
        )

    celltypist = _get(config, "transcriptomics.annotation.celltypist", {}) or {}
    if celltypist.get("enabled", True) and celltypist.get("model"):
        name = Path(celltypist["model"]).name
        name = name if name.endswith(".pkl") else f"{name}.pkl"
        needs.append(
            ModelNeed("celltypist", name, f"celltypist/{name}", "transcriptomics.annotation.celltypist.model", "")
        )

    if _get(config, "transcriptomics.embeddings.weights"):
        family = _get(config, "transcriptomics.embeddings.family", "geneformer")
        kind = "scgpt" if family == "scgpt" else "embeddings"
        needs.append(ModelNeed(kind, sources.get(kind, ""), "embeddings", "transcriptomics.embeddings.weights", ""))

    if _get(config, "histopathology.model"):
        needs.append(ModelNeed("conch", "", "histopathology", "histopathology.model", ""))

    restoration = _get(config, "imaging.restoration", {}) or {}
    spec = str(restoration.get("model") or "")
    if restoration.get("enabled") and spec and "/" not in spec and not Path(spec).suffix:
        needs.append(ModelNeed("cellpose", spec, f"cellpose/{spec}", "imaging.restoration.model", ""))

    # a config with an imaging section segments with the schema's default model unless it names one
    segmentation = str(_get(config, "imaging.segmentation.model", "generalist") or "generalist")
    segmentation = segmentation if "imaging" in config else "trained"
    base = str(_get(config, "imaging.training.base_model", "none") or "none")
    for key, spec in (("imaging.segmentation.model", segmentation), ("imaging.training.base_model", base)):
        if spec in ("trained", "none") or "/" in spec or Path(spec).suffix:
            continue  # trained here, or already a model file
        if key == "imaging.training.base_model" and segmentation != "trained":
            continue  # no training step runs
        if spec == "generalist":  # the installed Cellpose's general-purpose model
            from gpubio.imaging.cellpose_api import cellpose_api
            from gpubio.imaging.resources import installed_cellpose_major

            spec = cellpose_api(installed_cellpose_major()).generalist
        weights = CELLPOSE_WEIGHT_FILES.get(spec, spec)
        needs.append(ModelNeed("cellpose", spec, f"cellpose/{weights}", key, ""))
    return needs


# ------------------------------------------------------------------ check (offline)
def check(site_dir: str | Path, needs: list[ModelNeed]) -> list[str]:
    """What is missing from a site directory, one line each (empty: everything is there)."""
    site = Path(site_dir)
    problems = []
    if not site.is_dir():
        return [f"{site}: no such directory; stage the models there first (scripts/stage-models --out {site})"]
    for need in needs:
        target = site / need.target
        fetch = f"stage it with scripts/stage-models on a machine with internet ({need.kind} {need.name})"
        if need.kind == "dorado" and not _DORADO_NAME.match(need.name):
            problems += _check_dorado_complex(target, need.name)
        elif need.kind == "dorado":
            if not (target / "config.toml").is_file():
                problems.append(
                    f"{need.config_key}: dorado model {need.name} is missing ({target}/config.toml); {fetch}"
                )
        elif need.kind == "deepsea":
            from gpubio.genomics.deepsea import checkpoint_problems

            problems += checkpoint_problems(target, need.config_key)
        elif need.kind == "conch":
            from gpubio.histopathology.weights import ModelError, read_model_config

            try:
                read_model_config(target)
            except ModelError as error:
                problems.append(f"{need.config_key}: {error}")
        elif need.kind in OWN_LAYOUTS:
            files, how = OWN_LAYOUTS[need.kind]
            for name in files:
                if not (target / name).is_file():
                    problems.append(f"{need.config_key}: {target} has no {name}; see {how}")
        elif need.kind in ("enformer", "dnabert", "embeddings"):
            wanted = [["config.json"], list(WEIGHT_FILES)]
            if need.kind == "dnabert":
                wanted.append(["tokenizer.json", "vocab.txt", "tokenizer_config.json"])
            if need.kind == "embeddings":
                wanted.append(["token_dictionary.json", "token_dictionary.pkl"])
            for alternatives in wanted:
                if not any((target / name).is_file() for name in alternatives):
                    problems.append(f"{need.config_key}: {target} has no {' or '.join(alternatives)}; {fetch}")
        elif not target.is_file() or target.stat().st_size == 0:
            problems.append(f"{need.config_key}: {target} is missing or empty; {fetch}")
    return problems


def _check_dorado_complex(models_dir: Path, complex_: str) -> list[str]:
    """A model complex (`hac`, `sup@v5.2.0`, `hac,5mCG_5hmCG`) needs a simplex model of that
    variant (and version) and, per modification, a modified-base model of that variant."""
    simplex, *mods = dorado_model_names(complex_)
    variant, _, version = simplex.partition("@")
    staged = [p.name for p in models_dir.glob("*") if (p / "config.toml").is_file()] if models_dir.is_dir() else []
    stem = f"_{variant}@{version}"
    todo = "on a machine with internet run scripts/stage-models --dorado-model <full name> (see dorado download --list)"
    problems = []
    # modified-base models carry a second @version: ..._hac@v5.0.0_5mCG_5hmCG@v2
    if not any(stem in m and m.count("@") == 1 for m in staged):
        problems.append(
            f"genomics.basecall.models_directory: no dorado {simplex} model (*{stem}*) in {models_dir}; {todo}"
        )
    for mod in mods:
        if not any(f"_{variant}@" in m and f"_{mod}@" in m for m in staged):
            problems.append(
                f"genomics.basecall.models_directory: no dorado {variant} {mod} modified-base model in {models_dir}; {todo}"
            )
    return problems


def config_lines(site_dir: str | Path, needs: list[ModelNeed]) -> str:
    """The config.yaml settings that point the workflow at a staged site directory."""
    site = Path(site_dir).resolve()
    lines, seen = [], set()
    for need in needs:
        if need.config_key in seen:
            continue
        seen.add(need.config_key)
        lines.append(f"{need.config_key}: {site / (need.config_value or need.target)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ stage (needs internet)
def _stage_dorado(need: ModelNeed, target: Path, run=subprocess.run) -> None:
    if not _DORADO_NAME.match(need.name):
        raise StagingError(
            f"genomics.basecall.model names the model complex {need.name!r}; dorado picks the model from "
            f"the data's chemistry, so name the models to stage: --dorado-model <full name> for the simplex "
            f"and each modified-base model (see `dorado download --list`)"
        )
    cmd = ["dorado", "download", "--model", need.name, "--models-directory", str(target.parent)]
    proc = run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StagingError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-2000:]}")


def _stage_enformer(need: ModelNeed, target: Path) -> None:
    from enformer_pytorch import from_pretrained

    model = from_pretrained(need.name)
    model.config.use_tf_gamma = True  # the official weights expect TensorFlow's positional features
    # pytorch_model.bin: the layout gpubio's Enformer loader is tested with
    model.save_pretrained(str(target), safe_serialization=False)


def _stage_dnabert(need: ModelNeed, target: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    AutoTokenizer.from_pretrained(need.name, trust_remote_code=True).save_pretrained(str(target))
    AutoModel.from_pretrained(need.name, trust_remote_code=True).save_pretrained(str(target))


def _stage_embeddings(need: ModelNeed, target: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=need.name, local_dir=str(target))
    if not any((target / f"token_dictionary.{ext}").is_file() for ext in ("json", "pkl")):
        # Geneformer keeps its vocabulary inside its package folder
        found = sorted(target.rglob("token_dictionary*.pkl"))
        if not found:
            raise StagingError(f"{need.name}: no token_dictionary*.pkl in the snapshot; put the vocabulary in {target}")
        shutil.copy(found[0], target / "token_dictionary.pkl")


def _stage_celltypist(need: ModelNeed, target: Path) -> None:
    from celltypist import models

    models.download_models(model=[need.name], force_update=False)
    shutil.copy(Path(models.models_path) / need.name, target)


def _stage_cellpose(need: ModelNeed, target: Path) -> None:
    # cellpose reads its model folder when imported: point it at the site directory first
    os.environ["CELLPOSE_LOCAL_MODELS_PATH"] = str(target.parent)
    from cellpose import models

    if need.name == "cpsam":
        models.CellposeModel(gpu=False, pretrained_model="cpsam")
    elif need.name.startswith(("denoise_", "deblur_", "upsample_", "oneclick_")):
        from cellpose import denoise  # the restoration models (Cellpose 3)

        denoise.DenoiseModel(gpu=False, model_type=need.name)
    else:
        models.CellposeModel(gpu=False, model_type=need.name)
    if not target.is_file():
        raise StagingError(f"cellpose did not leave {target.name} in {target.parent}")


def _own_layout(need: ModelNeed, target: Path) -> None:
    files, how = OWN_LAYOUTS[need.kind]
    raise StagingError(
        f"{need.config_key}: a {need.kind} checkpoint is downloaded by hand; put "
        f"{', '.join(files)} into {target} ({how}), then run scripts/stage-models --check"
    )


STAGERS: dict[str, Callable[[ModelNeed, Path], None]] = {
    **{kind: _own_layout for kind in OWN_LAYOUTS},
    "dorado": _stage_dorado,
    "enformer": _stage_enformer,
    "dnabert": _stage_dnabert,
    "embeddings": _stage_embeddings,
    "celltypist": _stage_celltypist,
    "cellpose": _stage_cellpose,
}


def stage(site_dir: str | Path, needs: list[ModelNeed], stagers=STAGERS, log=print) -> list[str]:
    """Fetch every need that check() finds missing; returns the problems left afterwards."""
    site = Path(site_dir)
    site.mkdir(parents=True, exist_ok=True)
    for need in needs:
        target = site / need.target
        if not check(site, [need]):
            log(f"already staged: {need.kind} {need.name} ({target})")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        log(f"staging {need.kind} {need.name} -> {target}")
        stagers[need.kind](need, target)
    return check(site, needs)


# ------------------------------------------------------------------ command line
def _source(text: str) -> tuple[str, str]:
    kind, sep, source = text.partition("=")
    if not sep or kind not in DEFAULT_SOURCES or not source:
        raise argparse.ArgumentTypeError(
            f"expected KIND=HUB_ID with KIND one of {', '.join(DEFAULT_SOURCES)}, got {text!r}"
        )
    return kind, source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stage-models",
        description="Fetch every model the config names into one site directory (needs internet), or with "
        "--check verify offline that a directory holds them all, or with --convert gather a model downloaded "
        "by hand (CONCH, DeepSEA). Prints the config lines to use.",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--out", metavar="DIR", help="stage into DIR (kept models are not fetched again)")
    action.add_argument("--check", metavar="DIR", help="offline: name what DIR lacks (exit status 1 if anything)")
    action.add_argument(
        "--convert",
        nargs=3,
        metavar=("KIND", "SRC", "DIR"),
        help="gather a model downloaded by hand into DIR, checked by loading it (offline). KIND conch: SRC is "
        "the Hugging Face MahmoodLab/CONCH folder with CONCH's tokenizer file below it (or the CONCH package "
        "installed). KIND deepsea: SRC is Beluga's deepsea.beluga.pth, or Kipoi's DeepSEA port "
        "deepsea_variant_effects.pth with --features (Torch7 files are not read)",
    )
    parser.add_argument("--configfile", default="config/config.yaml", help="the config to read (default: %(default)s)")
    parser.add_argument(
        "--dorado-model",
        action="append",
        default=[],
        metavar="NAME",
        help="full dorado model name to stage (repeatable); needed when the config names a model complex such as hac",
    )
    parser.add_argument(
        "--source",
        type=_source,
        action="append",
        default=[],
        metavar="KIND=HUB_ID",
        help=f"where to fetch from; defaults: {', '.join(f'{k}={v}' for k, v in DEFAULT_SOURCES.items())}",
    )
    parser.add_argument(
        "--features", metavar="FILE", help="--convert deepsea: the feature names, one per line (features.txt)"
    )
    return parser


def convert(kind: str, src: str, dest: str, features: str | None) -> int:
    from gpubio.models.convert import ConversionError, convert_conch, convert_deepsea

    converters = {"conch": convert_conch, "deepsea": lambda s, d: convert_deepsea(s, d, features)}
    if kind not in converters:
        print(f"stage-models: --convert {kind}: KIND is one of {', '.join(converters)}", file=sys.stderr)
        return 1
    try:
        converters[kind](src, dest)
    except ConversionError as error:
        print(f"stage-models: --convert {kind}: {error}", file=sys.stderr)
        return 1
    key = {"conch": "histopathology.model", "deepsea": "genomics.variant_effects.weights"}[kind]
    print(f"# set in config.yaml:\n{key}: {Path(dest).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import yaml

    args = build_parser().parse_args(argv)
    if args.convert:
        return convert(*args.convert, args.features)
    try:
        config = yaml.safe_load(Path(args.configfile).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        print(f"stage-models: cannot read the config {args.configfile}: {error}", file=sys.stderr)
        return 1
    needs = model_needs(config, dict(args.source), args.dorado_model)
    if not needs:
        print(f"{args.configfile} names no model to stage")
        return 0
    site = args.check or args.out
    try:
        problems = check(site, needs) if args.check else stage(site, needs)
    except StagingError as error:
        print(f"stage-models: {error}", file=sys.stderr)
        return 1
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"# {len(needs)} model(s) in {Path(site).resolve()}; set in {args.configfile}:")
    print(config_lines(site, needs))
    return 0

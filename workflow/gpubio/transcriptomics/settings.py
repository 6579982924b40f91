"""The transcriptomics section of config.yaml as the rules read it: which steps run, and
the problems found in it before any job starts (files it names that do not exist)."""

from __future__ import annotations

from pathlib import Path


def transcriptomics_settings(config: dict) -> dict:
    """The transcriptomics section with schema defaults filled (also when the section is absent)."""
    from gpubio.config import section_settings

    return section_settings(config, "transcriptomics")


def annotation_steps(settings: dict) -> dict[str, bool]:
    """celltypist: label with CellTypist; train_celltypist: train its model on the reference first;
    scanvi: label with scANVI; embeddings: Geneformer- or scGPT-style embeddings."""
    annotation = settings["annotation"]
    reference, celltypist = annotation["reference"], annotation["celltypist"]
    use_celltypist = celltypist["enabled"] and bool(celltypist["model"] or reference)
    return {
        "celltypist": use_celltypist,
        "train_celltypist": use_celltypist and not celltypist["model"],
        "scanvi": annotation["scanvi"]["enabled"] and bool(reference),
        "embeddings": bool(settings["embeddings"]["weights"]),
    }


def reference_gene_problem(path: Path, gene_symbol_column: str) -> str | None:
    """Why the reference's genes cannot be named by symbol (read from its header), or None; an
    unreadable reference is left to the jobs that read it."""
    import h5py

    from gpubio.transcriptomics.genes import SYMBOL_COLUMNS, GeneNameProblem, h5ad_genes, symbol_set

    try:
        with h5py.File(path, "r") as f:
            genes = h5ad_genes(f["var"], (gene_symbol_column, *SYMBOL_COLUMNS))
    except (OSError, KeyError, ValueError):
        return None
    if genes is None:
        return None
    try:
        symbol_set(genes.read(), gene_symbol_column, genes.columns)
    except GeneNameProblem as error:
        return str(error)
    return None


def config_problems(settings: dict, config_file: str, workdir: str = ".") -> list[str]:
    """One line per problem in the transcriptomics section (paths are from the working directory)."""
    problems = []
    workdir = Path(workdir)

    def check(key: str, value: str, kind: str, suffixes: tuple[str, ...] = (), fix: str = "fix the path") -> None:
        if not value:
            return
        path = workdir / value
        exists = path.is_dir() if kind == "directory" else path.is_file()
        if not exists:
            problems.append(f"{config_file}: transcriptomics.{key} '{value}' is not an existing {kind}; {fix}")
        elif suffixes and not value.endswith(suffixes):
            problems.append(f"{config_file}: transcriptomics.{key} '{value}' should end in {' or '.join(suffixes)}")

    annotation = settings["annotation"]
    check(
        "annotation.reference",
        annotation["reference"],
        "file",
        (".h5ad",),
        'give a labelled .h5ad, or "" for no reference',
    )
    reference = annotation["reference"]
    if reference.endswith(".h5ad") and (workdir / reference).is_file():
        problem = reference_gene_problem(workdir / reference, settings["gene_symbol_column"])
        if problem:
            problems.append(f"{config_file}: transcriptomics.annotation.reference '{reference}': {problem}")
    check(
        "annotation.celltypist.model",
        annotation["celltypist"]["model"],
        "file",
        (".pkl",),
        "give a CellTypist .pkl file (a path, never a bare model name: that would go online)",
    )
    check("spatial.interactions", settings["spatial"]["interactions"], "file")
    weights, family = settings["embeddings"]["weights"], settings["embeddings"].get("family", "geneformer")
    check("embeddings.weights", weights, "directory", fix="give the local model directory")
    if weights and (workdir / weights).is_dir():
        if family == "scgpt":
            from gpubio.transcriptomics.scgpt import CHECKPOINT_FILES

            missing = [name for name in CHECKPOINT_FILES if not (workdir / weights / name).is_file()]
            if missing:
                problems.append(
                    f"{config_file}: transcriptomics.embeddings.weights '{weights}' has no {', '.join(missing)}; "
                    f"family scgpt reads a scGPT checkpoint directory ({', '.join(CHECKPOINT_FILES)})"
                )
        elif not (workdir / weights / "config.json").is_file():
            problems.append(
                f"{config_file}: transcriptomics.embeddings.weights '{weights}' has no config.json; "
                "point it at a directory written by save_pretrained"
            )
    steps = annotation_steps(settings)
    key = settings["spatial"]["cluster_key"]
    if key != "leiden" and not steps[key.removesuffix("_label")]:
        problems.append(
            f"{config_file}: transcriptomics.spatial.cluster_key is {key} but that annotation does not run "
            "(it needs annotation.reference, or a CellTypist model); use leiden or configure the annotation"
        )
    return problems

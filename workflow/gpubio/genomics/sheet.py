"""The genomics sample sheet beyond its schema: sequencing runs (POD5 inputs), barcodes, and
settings that must agree with the sheet (caller models, effect weights). Used by common.smk
before any job is built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CALLERS = ("bcftools", "deepvariant_gpu", "deepvariant", "clair3")
SAFE = re.compile(r"[^A-Za-z0-9._-]")


# Free-form option strings passed through to tools: each must split into shell words.
OPTION_STRINGS = (
    "genomics.basecall.options",
    "genomics.align.dorado_options",
    "genomics.variants.bcftools_options",
    "genomics.variants.parabricks.options",
    "genomics.variants.deepvariant.options",
    "genomics.variants.clair3.options",
)


def genomics_settings(config: dict) -> dict:
    """The genomics section with schema defaults filled (also when the section is absent)."""
    from gpubio.config import section_settings

    return section_settings(config, "genomics")


def _rows(table):
    """(sample, row as a dict) per sheet row: pandas' iterrows builds a Series per row, which
    costs every start of a large project."""
    return zip(table.index, table.to_dict("records"))


def _value(row, column: str) -> str:
    value = row.get(column, "") if hasattr(row, "get") else ""
    return "" if value is None else str(value).strip()


@dataclass
class Run:
    """One POD5 input basecalled once; its samples are barcodes of it, or the one sample."""

    name: str
    pod5: str
    barcodes: dict[str, str] = field(default_factory=dict)  # sample -> barcode ('' when not barcoded)

    @property
    def barcoded(self) -> bool:
        return any(self.barcodes.values())


def run_name(row) -> str:
    """`run` column, else the POD5 name for barcoded rows (one run, many samples), else the sample."""
    explicit = _value(row, "run")
    if explicit:
        return explicit
    if _value(row, "barcode"):
        stem = Path(_value(row, "pod5").rstrip("/")).name
        return SAFE.sub("_", stem[: -len(".pod5")] if stem.endswith(".pod5") else stem)
    return _value(row, "sample")


def sequencing_runs(table) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    if table is None:
        return runs
    for sample, row in _rows(table):
        if not _value(row, "pod5"):
            continue
        name = run_name(row)
        run = runs.setdefault(name, Run(name, _value(row, "pod5")))
        run.barcodes[sample] = _value(row, "barcode")
    return runs


def sheet_problems(table, sheet: str, settings: dict, config_file: str) -> list[str]:
    """Problems the schema cannot see: runs, barcodes, kit, caller models, effect weights."""
    from gpubio.config import row_where

    problems: list[str] = []
    if table is None:
        return problems
    kit = settings["basecall"]["kit_name"]
    for i, (sample, row) in enumerate(_rows(table), start=1):
        where = row_where(sheet, table, i, sample)
        barcode, pod5, platform = _value(row, "barcode"), _value(row, "pod5"), _value(row, "platform")
        if (barcode or _value(row, "run")) and not pod5:
            problems.append(f"{where}: barcode/run only apply to POD5 input; clear them or give a pod5")
        if pod5 and platform != "ont":
            problems.append(
                f"{where}: POD5 is Oxford Nanopore signal, but platform is '{platform}'; set platform to ont"
            )
        if barcode and not kit:
            problems.append(
                f"{where}: barcode '{barcode}' given but genomics.basecall.kit_name is empty in {config_file}; "
                "set the barcoding kit (e.g. SQK-NBD114-24)"
            )
        if barcode and not re.fullmatch(r"barcode\d+", barcode):
            problems.append(f"{where}: barcode '{barcode}' is not a dorado barcode name like barcode01; fix it")
        if _value(row, "run") and SAFE.search(_value(row, "run")):
            problems.append(f"{where}: run '{_value(row, 'run')}' may only contain A-Za-z0-9._-; rename it")
    for run in sequencing_runs(table).values():
        rows = table.loc[list(run.barcodes)]
        pod5s = sorted(set(rows["pod5"]))
        if len(pod5s) > 1:
            problems.append(
                f"{sheet}: run '{run.name}' has samples with different pod5 inputs {pod5s}; give each run its own name"
            )
        if run.barcoded and not all(run.barcodes.values()):
            problems.append(
                f"{sheet}: run '{run.name}' mixes barcoded and unbarcoded samples; give every sample of it a barcode"
            )
        used = [b for b in run.barcodes.values() if b]
        if len(used) != len(set(used)):
            problems.append(f"{sheet}: run '{run.name}' uses a barcode twice; each barcode is one sample")
        if not run.barcoded and len(run.barcodes) > 1:
            problems.append(
                f"{sheet}: samples {sorted(run.barcodes)} share run '{run.name}' without barcodes; give barcodes or separate runs"
            )
    problems += _input_problems(table, sheet, settings, config_file)
    problems += _caller_problems(table, settings, config_file)
    problems += _effect_problems(settings, config_file)
    return problems


def _input_problems(table, sheet: str, settings: dict, config_file: str) -> list[str]:
    """The reference (one FASTA, each contig named once), that each sheet BAM is a BAM aligned
    to the reference's contigs (when aligned), and that each FASTQ starts as FASTQ: found
    later, they would fail every job or, worse, give an empty VCF or wrong QC. Reads headers
    and first bytes only."""
    from gpubio.config import row_where
    from gpubio.genomics.inputs import bam_contigs, bam_problem, contig_mismatch, fastq_problem, read_reference

    problems, contigs = [], None
    reference = settings.get("reference")
    if reference and Path(reference).is_file():  # a missing one is reported with the config
        contigs, reference_problems = read_reference(reference, config_file)
        problems += reference_problems
    for i, (sample, row) in enumerate(_rows(table), start=1):
        where = row_where(sheet, table, i, sample)
        for column in ("fastq_1", "fastq_2"):
            path = _value(row, column)
            problem = fastq_problem(path) if path and Path(path).is_file() else None
            if problem:
                problems.append(f"{where}: {column} '{path}' {problem}")
        bam = _value(row, "bam")
        if not bam or not Path(bam).is_file():
            continue
        problem = bam_problem(bam)
        if problem:
            problems.append(f"{where}: bam '{bam}' {problem}; give an aligned or unaligned BAM, or the reads as FASTQ")
            continue
        try:
            names = bam_contigs(bam)
        except (OSError, EOFError) as error:
            problems.append(f"{where}: bam '{bam}' cannot be read ({error}); transfer it again from the source")
            continue
        mismatch = contig_mismatch(names, contigs, reference) if names and contigs else None
        if mismatch:
            problems.append(f"{where}: bam '{bam}' {mismatch}")
    return problems


def caller_for(settings: dict, platform: str) -> str:
    return settings["variants"]["caller"][platform]


def _caller_problems(table, settings: dict, config_file: str) -> list[str]:
    problems = []
    platforms = set(table["platform"])
    for platform in sorted(platforms):
        caller = caller_for(settings, platform)
        if caller == "clair3" and not settings["variants"]["clair3"]["model"]:
            problems.append(
                f"{config_file}: genomics.variants.caller.{platform} is clair3 but genomics.variants.clair3.model "
                "is empty; give the Clair3 model directory (e.g. /opt/models/r1041_e82_400bps_sup_v500)"
            )
    return problems


def _effect_problems(settings: dict, config_file: str) -> list[str]:
    effects = settings["variant_effects"]
    if not effects["enabled"]:
        return []
    problems = []
    if not effects["weights"]:
        problems.append(
            f"{config_file}: genomics.variant_effects.weights is empty; give the local weights directory "
            "or set genomics.variant_effects.enabled: false"
        )
    elif not Path(effects["weights"]).is_dir():
        problems.append(
            f"{config_file}: genomics.variant_effects.weights '{effects['weights']}' is not a directory; "
            "stage the model weights there (README: Staging models offline) or set enabled: false"
        )
    elif effects["family"] == "deepsea":
        from gpubio.genomics.deepsea import checkpoint_problems

        problems += checkpoint_problems(effects["weights"], f"{config_file}: genomics.variant_effects.weights")
    if effects["track_names"] and not Path(effects["track_names"]).is_file():
        problems.append(
            f"{config_file}: genomics.variant_effects.track_names '{effects['track_names']}' does not exist; fix the path"
        )
    return problems

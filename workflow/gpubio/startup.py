"""The one start-up pass: config, sample sheets, the partitions and needs files, and the
headers of every input, checked together before Snakemake builds a single job.

Every problem found is one line; all of them are raised at once as a ConfigError, so a user
fixes them in one go instead of meeting the next one on the next run. A section whose own
problems make a later check meaningless (a value of the wrong type, a sheet with bad rows)
skips that check; every other section is still checked.

A cluster job starts Snakemake again (twice with the SLURM executor: the job step, then the
step's own run), which reads the Snakefile again. The process that scheduled the run has
checked everything before its first job, so a job (:class:`JobRun`) checks only the sheet
rows of its own samples, and reads the input sizes the scheduling process found from the
environment it inherited (``GPUBIO_RUN_SIZES``) instead of opening every input again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gpubio.config import DOMAINS, ConfigError, Project, attribute_problems, read_project, section_settings


@dataclass
class Startup:
    """What the rules read: the project, each section's settings (every default filled, also
    for modules that are off), the configured GPU site, and input sizes found on the way."""

    project: Project
    settings: dict[str, dict]  # "gpu" and each domain -> its settings
    site: object = None  # gpubio.gpu.Site
    input_mb: dict[str, float] = field(default_factory=dict)  # domain -> size its jobs are planned for
    warnings: list[str] = field(default_factory=list)  # one line each, shown before the run; it goes on


def _genomics_problems(startup: Startup, config_file: str, workdir: Path) -> list[str]:
    from gpubio.genomics.sheet import OPTION_STRINGS, sheet_problems
    from gpubio.shell import extra_options_problems

    settings = startup.settings["genomics"]
    table = startup.project.sheets["genomics"]
    return sheet_problems(table, settings["samples"], settings, config_file) + extra_options_problems(
        {"genomics": settings}, OPTION_STRINGS, config_file
    )


def _transcriptomics_problems(startup: Startup, config_file: str, workdir: Path) -> list[str]:
    from gpubio.transcriptomics.settings import config_problems
    from gpubio.transcriptomics.sizing import survey_count_files

    settings = startup.settings["transcriptomics"]
    counts = startup.project.sheets["transcriptomics"]["counts"].to_dict()
    # unreadable or processed count files, genes not named by symbol, samples sharing too few
    # genes join the config problems, one line each
    survey = survey_count_files(
        counts, settings["samples"], settings["gene_symbol_column"], settings["qc"]["mito_prefix"]
    )
    startup.input_mb["transcriptomics"] = survey.size_mb
    startup.warnings += survey.warnings
    return config_problems(settings, config_file, str(workdir)) + survey.problems


def _imaging_problems(startup: Startup, config_file: str, workdir: Path) -> list[str]:
    from gpubio.imaging.settings import config_problems
    from gpubio.imaging.sheet import image_file_problems

    settings = startup.settings["imaging"]
    table = startup.project.sheets["imaging"]
    return config_problems(settings, config_file, workdir) + image_file_problems(table, settings["samples"], workdir)


def _histopathology_problems(startup: Startup, config_file: str, workdir: Path) -> list[str]:
    from gpubio.histopathology.settings import config_problems, slide_problems

    settings = startup.settings["histopathology"]
    table = startup.project.sheets["histopathology"]
    return config_problems(settings, config_file, workdir) + slide_problems(table, settings["samples"], workdir)


# What each active module checks beyond its schema and sheet (files it names, input headers).
MODULE_CHECKS = {
    "genomics": _genomics_problems,
    "transcriptomics": _transcriptomics_problems,
    "imaging": _imaging_problems,
    "histopathology": _histopathology_problems,
}


# What a scheduling Snakemake process hands its cluster jobs (they inherit its environment).
ENV_RUN_SIZES = "GPUBIO_RUN_SIZES"


@dataclass(frozen=True)
class JobRun:
    """This Snakemake process runs jobs of a run another process scheduled (a cluster job):
    ``samples`` its target jobs name (``--target-jobs``), ``input_mb`` the input sizes the
    scheduling process found (None: not handed over, so they are measured again)."""

    samples: frozenset[str]
    input_mb: dict[str, float] | None = None


def job_run(argv: Sequence[str], environ: dict[str, str] | None = None) -> JobRun:
    """What a cluster job's Snakemake was asked to run: the samples named by the
    ``--target-jobs`` of its command line (Snakemake sets its target jobs only after the
    Snakefile is read), and the sizes in ``GPUBIO_RUN_SIZES``."""
    from snakemake.target_jobs import parse_target_jobs_cli_args

    specs, taking = [], False
    for arg in argv:
        if arg == "--target-jobs":
            taking = True
        elif arg.startswith("-"):
            taking = False
        elif taking:
            specs.append(arg)
    samples = set()
    for target in parse_target_jobs_cli_args(specs) if specs else []:
        sample = target.wildcards_dict.get("sample")
        if sample is not None:
            samples.add(str(sample))
    environ = os.environ if environ is None else environ
    try:
        sizes = json.loads(environ[ENV_RUN_SIZES])
        input_mb = {str(k): float(v) for k, v in sizes.items()}
    except (KeyError, ValueError, TypeError, AttributeError):
        input_mb = None
    return JobRun(frozenset(samples), input_mb)


def sizes_for_jobs(startup: Startup) -> str:
    """The input sizes the rules were sized by, for ``GPUBIO_RUN_SIZES``."""
    return json.dumps(startup.input_mb, sort_keys=True)


def _site_problems(
    startup: Startup,
    config_file: str,
    remote_jobs: int | None,
    job_files: Callable | None = None,
    main_process: bool = True,
    workdir: Path = Path("."),
) -> list[str]:
    """The partitions file, GPU catalogue overrides, prices and calibrated needs, as the site
    jobs go to."""
    from gpubio.gpu import CatalogueError, InventoryError, PlacementError, build_site
    from gpubio.gpu.calibrate import NeedsError

    gpu = startup.settings["gpu"]
    try:
        startup.site = build_site(
            partitions_file=gpu["partitions"],
            catalogue_overrides=gpu["catalogue"],
            needs_file=gpu["needs"],
            kind=gpu["site"],
            remote_jobs=remote_jobs,
            require=gpu["require"],
            prices=gpu["prices"],
            objective=gpu["objective"],
            spread=gpu["spread"],
            job_files=job_files,
            main_process=main_process,
            workdir=workdir,
        )
    except (CatalogueError, InventoryError, NeedsError, PlacementError) as error:
        return [line for line in str(error).splitlines() if line.strip()]
    return []


def module_summary(project: Project, workdir: str | os.PathLike = ".") -> str:
    """One line for the dry-run: which modules run (and on how many samples) and which are off,
    with the reason: an empty sheet (only its header or comments), a missing sheet, no section."""
    on, off = [], []
    for domain in DOMAINS:
        samples = project.samples(domain)
        if samples:
            on.append(f"{domain} ({len(samples)} sample{'s' if len(samples) != 1 else ''})")
            continue
        section = project.config.get(domain)
        if not isinstance(section, dict):
            off.append(f"{domain} (no '{domain}' section in the config)")
        elif not (Path(workdir) / section["samples"]).exists():
            off.append(f"{domain} (its sheet {section['samples']} does not exist)")
        else:
            off.append(f"{domain} (its sheet {section['samples']} has no rows)")
    if not on:
        return (
            "gpubio: every module is off: " + "; ".join(off) + ". Fill a sample sheet to run a module "
            "(README: Sample sheets), or run the demo: make demo"
        )
    return "gpubio: modules on: " + ", ".join(on) + (("; off: " + "; ".join(off)) if off else "")


def start_up(
    config: dict,
    config_file: str = "config/config.yaml",
    workdir: str | os.PathLike = ".",
    remote_jobs: int | None = None,
    config_files: list[str] | None = None,
    *,
    job_files: Callable | None = None,
    job: JobRun | None = None,
) -> Startup:
    """Check everything that can be checked before any job; raise one ConfigError listing every
    problem, else return what the rules read. ``remote_jobs``: Snakemake's ``--jobs`` (set for a
    remote executor: the run is placed on the cluster, see gpubio.gpu.local_site).
    ``config_files``: every layer of the config, base first (then each problem about a key
    names the file that sets it); ``config_file`` is the last.
    ``job_files``: where jobs leave their logs and usage records, for retries
    (gpubio.gpu.retry). ``job``: this process runs a cluster job of a run checked already; it
    checks the sheet rows of the job's samples and takes the sizes handed over."""
    workdir = Path(workdir)
    project, problems, flawed = read_project(
        config, config_file, workdir, only_samples=job.samples if job is not None else None
    )
    settings = {name: section_settings(project.config, name) for name in ("gpu", *DOMAINS)}
    startup = Startup(project, settings, input_mb={domain: 0.0 for domain in DOMAINS})
    if "gpu" not in flawed:
        problems += _site_problems(startup, config_file, remote_jobs, job_files, job is None, workdir)
    if job is not None and job.input_mb is not None:
        startup.input_mb.update(job.input_mb)
    else:
        for domain, check in MODULE_CHECKS.items():
            if project.active(domain) and domain not in flawed:
                problems += check(startup, config_file, workdir)
    if problems:
        raise ConfigError(attribute_problems(problems, config_files or [config_file], workdir))
    return startup

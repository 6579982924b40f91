# Sample sheets, input functions (get_*) and wildcard constraints shared by every module.
import os
import sys

from gpubio import dag_memory
from gpubio.config import ConfigError
from gpubio.gpu import (
    BalancedGroup,
    PlacementError,
    check_declared_needs,
    cpu_resources,
    gpu_resources,
    input_files_mb,
    planned_job_problems,
)
from gpubio.shell import (
    quote_extra_options,
    quote_option,
    quote_option_list,
)
from gpubio.steps import step_options
from gpubio.gpu.retry import snakemake_job_files
from gpubio.startup import (
    ENV_RUN_SIZES,
    job_run,
    module_summary,
    sizes_for_jobs,
    start_up,
)

# Collect cyclic garbage less often while the DAG is built (gpubio/dag_memory.py); the
# thresholds are back before the first job runs (onstart below).
GC_THRESHOLDS = dag_memory.collect_less()

# the config's layers, base first: config/config.yaml, then each --configfile laid over it
# (named as the user would: from the working directory when inside it)
CONFIG_FILES = ["config/config.yaml"] + [
    path if os.path.relpath(path).startswith("..") else os.path.relpath(path)
    for path in map(str, workflow.overwrite_configfiles)
]
CONFIG_FILE = CONFIG_FILES[-1]

# One pass over config, sheets, partitions and needs files and input headers; every problem
# is one line, all raised together before any job is built. A cluster job (Snakemake started
# again inside it) checks only its own samples' rows and takes the input sizes the scheduling
# process found, which its jobs inherit through the environment.
try:
    # (positional: a line starting with `workdir=` would read as Snakemake's directive)
    STARTUP = start_up(
        config,
        CONFIG_FILE,
        os.getcwd(),
        workflow.resource_settings.nodes,
        CONFIG_FILES,
        job_files=snakemake_job_files(workflow),
        job=None if workflow.is_main_process else job_run(sys.argv[1:]),
    )
except ConfigError as error:
    raise WorkflowError(error.report()) from None
for line in STARTUP.warnings:  # inputs the run copes with, said before it starts
    print(f"gpubio: warning: {line}", file=sys.stderr)
if workflow.is_main_process:
    os.environ[ENV_RUN_SIZES] = sizes_for_jobs(STARTUP)
dag_memory.freeze()  # what the start-up pass read lives for the whole run
PROJECT = STARTUP.project
# The settings the rules read: each section with every schema default, also for modules
# that are off (each domain takes its own in <domain>_inputs.smk). Rules never read raw config.
GPU = STARTUP.settings["gpu"]
# The site GPU jobs are placed on. Rules declare needs; the partitions file says what exists.
SITE = STARTUP.site
# which modules run, and why the others do not (an empty sheet is the usual reason)
print(module_summary(PROJECT, os.getcwd()), file=sys.stderr)
if SITE.local is not None:  # a local run: say which GPUs judge its needs
    print(SITE.local.summary(), file=sys.stderr)
elif SITE.cpu_jobs_note():  # a cluster without CPU partitions: say where CPU jobs go
    print(f"gpubio: {SITE.cpu_jobs_note()}", file=sys.stderr)


def gpu_step(require=GPU["require"]):
    """The start of every GPU step's command, written once: the threads BLAS / OpenMP / torch
    may use, the GPUs the job holds (0: the step's CPU path), whether it must fail rather than
    run its CPU path (gpu.require), and its usage record (params.usage, beside what the plan gave
    it, resources.gpu_usage). A rule's command is gpu_step() + " <subcommand> ..."."""
    return (
        "python -m gpubio --threads {threads} --gpus {resources.gpu}"
        + (" --require-gpu" if require else "")
        + " --usage {params.usage:q} --usage-job {resources.gpu_usage:q}"
    )


onstart:
    dag_memory.restore(GC_THRESHOLDS)
    # Jobs the site cannot take (a CPU job no CPU partition holds, a GPU job gpu.require
    # refuses here) stop the run before its first job; checked once the DAG says which jobs
    # run, so a rule without jobs (a module that is off) is never named.
    JOB_PROBLEMS = planned_job_problems(workflow.dag.needrun_jobs(), SITE)
    if JOB_PROBLEMS:
        raise WorkflowError(ConfigError(JOB_PROBLEMS).report())


wildcard_constraints:
    sample="[A-Za-z0-9._-]+",
    domain="genomics|transcriptomics|imaging",


# Input functions run for every job: a dict lookup per row, not a pandas .loc each time.
SHEET_ROWS = {
    domain: sheet.to_dict("index") for domain, sheet in PROJECT.sheets.items()
}


def sheet_row(domain, sample):
    return SHEET_ROWS[domain][sample]


# What the default target asks of each active module: each domain's section below declares
# its targets once, in one function (<domain>_targets), registered here by domain.
DOMAIN_TARGETS = {}


GPU_REPORT_TARGETS = [
    "results/gpu_plan.tsv",
    "results/gpu_plan.partitions.tsv",
    "results/gpu_plan.samples.tsv",
    "results/gpu_usage.tsv",
    "results/gpu_usage_models.tsv",
    "results/gpu_usage.png",
]


# modules whose per-sample qc.json files make a QC summary table and figure
QC_SUMMARY_DOMAINS = ("genomics", "transcriptomics", "imaging")


def get_module_outputs(wildcards=None):
    """Every active module's targets, and its QC summary."""
    targets = []
    for domain, domain_targets in DOMAIN_TARGETS.items():
        if PROJECT.active(domain):
            targets += domain_targets()
            if domain in QC_SUMMARY_DOMAINS:
                targets += [
                    f"results/{domain}/qc_summary.{ext}" for ext in ("tsv", "png")
                ]
    return targets


def get_final_outputs():
    """Every active module's targets, the GPU plan, and what the GPU jobs used; nothing when
    every module is off (the start-up line says why)."""
    targets = get_module_outputs()
    return targets + GPU_REPORT_TARGETS if targets else []


def get_usage_record_folders(wildcards):
    """The record folders under benchmarks/ of the samples (and POD5 runs) in the sheets now: a
    sample removed from its sheet keeps its records there (for gpubio calibrate), not its rows
    in the report."""
    return [
        f"{domain}/{sample}"
        for domain in DOMAIN_TARGETS
        for sample in PROJECT.samples(domain)
    ] + USAGE_RECORD_FOLDERS


# record folders of jobs that are not one sample's (a domain adds them, e.g. genomics' POD5 runs)
USAGE_RECORD_FOLDERS = []


def usage_record(step):
    """Where a GPU step writes what it used (gpubio.gpu.usage), next to its benchmark file."""
    return f"benchmarks/{step}.gpu.json"


def get_qc_files(wildcards):
    """Per-sample QC JSON files of one module (every module writes results/<domain>/<sample>/qc.json)."""
    return expand(
        "results/{domain}/{sample}/qc.json",
        domain=wildcards.domain,
        sample=PROJECT.samples(wildcards.domain),
    )


# Tables (TSV with a `sample` column) whose columns join a module's QC summary: a step adds its
# per-sample figures with QC_TABLES[domain].append(path), beside its rule.
QC_TABLES = {domain: [] for domain in QC_SUMMARY_DOMAINS}


def get_qc_tables(wildcards):
    return QC_TABLES[wildcards.domain]

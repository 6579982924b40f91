# gpubio: GPU-accelerated genomics, transcriptomics and imaging.
# Edit config/config.yaml and the sample sheets it names, check `snakemake -n`, then run
# `snakemake --profile profiles/local` (or profiles/slurm-gpu on a cluster).
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The rules run `python -m gpubio ...`: make the package importable in every job, also in
# conda environments and inside cluster jobs, which re-read this file.
GPUBIO_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, GPUBIO_PATH)
# A prefix replaces Snakemake's default one, so strict mode is restated: a failing command,
# also one inside a pipe, fails the job. Snakemake formats the prefix like a command: braces
# are doubled, and the path is quoted (a checkout may sit in a folder with spaces).
shell.prefix(
    "set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; "
    % shlex.quote(GPUBIO_PATH).replace("{", "{{").replace("}", "}}")
)

from gpubio.config import yaml_syntax_problem

# Snakemake's own message for a YAML mistake names neither the file nor the line
CONFIG_SYNTAX = yaml_syntax_problem("config/config.yaml")
if CONFIG_SYNTAX:
    raise WorkflowError(f"gpubio: {CONFIG_SYNTAX}")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/transcriptomics.smk"
include: "workflow/rules/imaging.smk"
include: "workflow/rules/histopathology.smk"
include: "workflow/rules/report.smk"


# Every rule has declared its GPU need: one that no partition can hold stops the run here,
# before the DAG is built, naming the rule.
try:
    check_declared_needs(SITE)
except PlacementError as error:
    raise WorkflowError(f"gpubio: {error}") from None


rule all:
    default_target: True
    input:
        get_final_outputs(),

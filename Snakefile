# gpubio: GPU-accelerated genomics, transcriptomics and imaging.
# Edit config/config.yaml and the sample sheets it names, check `snakemake -n`, then run
# `snakemake --profile profiles/local` (or profiles/slurm-gpu on a cluster).
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The rules run `python -m gpubio ...`: make the package importable in every job, also in
# conda environments and inside cluster jobs, which re-read this file.
GPUBIO_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, GPUBIO_PATH)
# (doubled braces: Snakemake formats the prefix like any shell command)
shell.prefix("export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % GPUBIO_PATH)


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/transcriptomics.smk"
include: "workflow/rules/imaging.smk"
include: "workflow/rules/histopathology.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),

# gpubio: GPU-accelerated genomics, transcriptomics and imaging.
# Edit config/config.yaml and the sample sheets it names, check `snakemake -n`, then run
# `snakemake --profile profiles/local` (or profiles/slurm-gpu on a cluster).
import os
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# The rules run `python -m gpubio ...`; make the package importable in every job,
# including jobs in conda environments and on cluster nodes (the environment is exported).
GPUBIO_PATH = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, GPUBIO_PATH)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (GPUBIO_PATH, os.environ.get("PYTHONPATH")) if p
)


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/genomics.smk"
include: "workflow/rules/transcriptomics.smk"
include: "workflow/rules/imaging.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True

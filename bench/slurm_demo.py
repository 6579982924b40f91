"""The demo (genomics, transcriptomics, imaging) through profiles/slurm-gpu on a throw-away
SLURM cluster: wall time, SLURM jobs submitted, and jobs per rule or group.

    PYTHONPATH=workflow .venv/bin/python bench/slurm_demo.py [--jobs 4] [--keep DIR]

Needs root and slurm-wlm + munge (.ci/install-slurm.sh), like the SLURM tests. The cluster
is tests/slurm_cluster.py with nodes large enough for the demo's requests (nothing is
enforced; all jobs share this machine's cores). The count of submissions comes from
SLURM itself (`squeue --states=all`, every job kept for the run's length), not from
Snakemake's log. Prints one Markdown table row per run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from slurm_cluster import SlurmCluster, default_nodes  # noqa: E402

from gpubio.demo import make_demo  # noqa: E402


def slurm_jobs(cluster: SlurmCluster) -> list[dict[str, str]]:
    """Every job the cluster has seen: id, partition, comment (rule_<name>_wildcards_...), state."""
    out = cluster.run(["squeue", "--states=all", "-h", "-o", "%i|%P|%k|%T"]).stdout
    jobs = []
    for line in out.splitlines():
        jobid, partition, comment, state = line.split("|", 3)
        jobs.append({"jobid": jobid, "partition": partition, "comment": comment, "state": state})
    return jobs


def run_demo(workdir: Path, cluster: SlurmCluster, jobs: int) -> tuple[float, subprocess.CompletedProcess]:
    snakemake = Path(sys.executable).parent / "snakemake"
    cmd = [
        str(snakemake), "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
        "--profile", str(REPO / "profiles" / "slurm-gpu"), "--jobs", str(jobs),
        # the test cluster has no accounting database
        "--slurm-status-command", "squeue",
    ]  # fmt: skip
    # jobs run `python -m gpubio`: this environment's python, as on a cluster with a shared venv
    env = cluster.env | {"PATH": f"{snakemake.parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    return time.monotonic() - started, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="Snakemake --jobs (jobs queued at once)")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    args = parser.parse_args()

    root = args.keep or Path(tempfile.mkdtemp(prefix="gpubio-slurm-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    project = root / "project"
    shutil.copytree(REPO / "config", project / "config")
    make_demo(str(project / "resources" / "demo"), seed=1)

    nodes = default_nodes(cpus=32, memory_mb=1_100_000)  # the demo asks for up to 64 GB
    with SlurmCluster(root / "cluster", nodes=nodes, min_job_age=86400) as cluster:
        wall, proc = run_demo(project, cluster, args.jobs)
        submitted = slurm_jobs(cluster)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    by_kind = Counter(j["comment"].split("_wildcards_")[0] for j in submitted)
    print(f"| {commit.stdout.strip()} | {wall / 60:.1f} min | {len(submitted)} "
          f"| {sum(j['state'] == 'COMPLETED' for j in submitted)} "
          f"| {', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))} |")  # fmt: skip
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

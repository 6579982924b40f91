"""The demo (genomics, transcriptomics, imaging) run locally and through profiles/slurm-gpu on
a throw-away SLURM cluster, in one run: wall times and their ratio, SLURM jobs submitted,
and jobs per rule or group.

    PYTHONPATH=workflow .venv/bin/python bench/slurm_demo.py [--jobs N] [--status-checks S] [--keep DIR]

Needs root and slurm-wlm + munge (.ci/install-slurm.sh), like the SLURM tests. The cluster
is tests/slurm_cluster.py with nodes large enough for the demo's requests (nothing is
enforced; all jobs share this machine's cores). The local run is `make demo`'s: the local
profile on all cores, in a project of its own, just before the cluster run. The count of
submissions comes from SLURM itself (`squeue --states=all`, every job kept for the run's
length), not from Snakemake's log. ``--jobs N`` queues at most N jobs at once (the profile's
100 otherwise); ``--status-checks S`` asks SLURM for job states S seconds after a job ends
and between checks (the profile's 10 s otherwise). Prints one Markdown
table row (the last columns: median notice lag, see notice_lags, and the 5-minute load
average at the end).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gpubio.demo import demo_as_project, make_demo  # noqa: E402
from slurm_cluster import SlurmCluster, default_nodes  # noqa: E402


def slurm_jobs(cluster: SlurmCluster) -> list[dict[str, str]]:
    """Every job the cluster has seen: id, partition, comment (rule_<name>_wildcards_...), state."""
    out = cluster.run(["squeue", "--states=all", "-h", "-o", "%i|%P|%k|%T"]).stdout
    jobs = []
    for line in out.splitlines():
        jobid, partition, comment, state = line.split("|", 3)
        jobs.append({"jobid": jobid, "partition": partition, "comment": comment, "state": state})
    return jobs


def notice_lags(project: Path, cluster_log: Path) -> list[float]:
    """Seconds from SLURM ending each (single-rule) job to Snakemake reporting it finished.

    SLURM's end: slurmctld's `_job_complete: JobId=N done`; Snakemake's: the timestamp over
    its `Finished jobid: J` line, joined by its `Job J has been submitted with SLURM jobid N`.
    """
    ended = {}
    for line in cluster_log.read_text().splitlines():
        match = re.match(r"\[([\d\-T:.]+)\] _job_complete: JobId=(\d+) done", line)
        if match:
            ended[match.group(2)] = datetime.fromisoformat(match.group(1))
    (log,) = sorted((project / ".snakemake" / "log").glob("*.snakemake.log"))[-1:]
    slurm_id, finished, stamp = {}, {}, None
    for line in log.read_text().splitlines():
        if match := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line):
            stamp = datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
        elif match := re.match(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            slurm_id[match.group(1)] = match.group(2)
        elif (match := re.match(r"Finished jobid: (\d+) ", line)) and stamp is not None:
            finished[match.group(1)] = stamp
    return [
        (finished[job] - ended[sid]).total_seconds()
        for job, sid in slurm_id.items()
        if job in finished and sid in ended
    ]


SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def run_local(workdir: Path) -> tuple[float, subprocess.CompletedProcess]:
    """The demo as `make demo` runs it: the local profile, all of this machine's cores."""
    cmd = [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "--directory", str(workdir)]
    cmd += ["--profile", str(REPO / "profiles" / "local"), "--cores", str(os.cpu_count())]
    env = os.environ | {"PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    return time.monotonic() - started, proc


def run_demo(
    workdir: Path, cluster: SlurmCluster, jobs: int | None = None, status_checks: int | None = None
) -> tuple[float, subprocess.CompletedProcess]:
    cmd = [
        str(SNAKEMAKE),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--profile",
        str(REPO / "profiles" / "slurm-gpu"),
        # the test cluster has no accounting database
        "--slurm-status-command",
        "squeue",
    ]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    if status_checks is not None:
        cmd += ["--slurm-init-seconds-before-status-checks", str(status_checks)]
        cmd += ["--seconds-between-status-checks", str(status_checks)]
    # jobs run `python -m gpubio`: this environment's python, as on a cluster with a shared venv
    env = cluster.env | {"PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    return time.monotonic() - started, proc


def make_project(root: Path) -> Path:
    project = root
    demo_as_project(REPO, project)
    make_demo(str(project / "resources" / "demo"), seed=1)
    return project


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, help="Snakemake --jobs (jobs queued at once; default: the profile's)")
    parser.add_argument("--status-checks", type=int, help="seconds before and between SLURM status checks")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it")
    parser.add_argument("--lags", type=Path, help="only report the notice lags of a run kept in this directory")
    args = parser.parse_args()
    if args.lags:
        lags = notice_lags(args.lags / "project", args.lags / "cluster" / "log" / "slurmctld.log")
        print(
            f"{len(lags)} jobs, notice lag median {statistics.median(lags):.0f} s, mean {statistics.mean(lags):.0f} s"
        )
        return 0

    root = args.keep or Path(tempfile.mkdtemp(prefix="gpubio-slurm-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    local_wall, local = run_local(make_project(root / "local"))
    if local.returncode != 0:
        print(local.stdout[-4000:], local.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    project = make_project(root / "project")
    nodes = default_nodes(cpus=32, memory_mb=1_100_000)  # the demo asks for up to 64 GB
    with SlurmCluster(root / "cluster", nodes=nodes, min_job_age=86400) as cluster:
        wall, proc = run_demo(project, cluster, args.jobs, args.status_checks)
        submitted = slurm_jobs(cluster)
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        return 1
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    lags = notice_lags(project, root / "cluster" / "log" / "slurmctld.log")
    by_kind = Counter(j["comment"].split("_wildcards_")[0] for j in submitted)
    print(
        f"| {commit.stdout.strip()} | {local_wall / 60:.1f} min | {wall / 60:.1f} min | **{wall / local_wall:.2f}x** "
        f"| {len(submitted)} | {sum(j['state'] == 'COMPLETED' for j in submitted)} "
        f"| {statistics.median(lags):.0f} s | {os.getloadavg()[1]:.1f} "
        f"| {', '.join(f'{k} {n}' for k, n in sorted(by_kind.items()))} |"
    )
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared fixtures: the offline guard, the demo data set, and running Snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OFFLINE_DIR = Path(__file__).resolve().parent / "offline"

# Every process the tests start (snakemake, its jobs) loads tests/offline/sitecustomize.py.
os.environ["GPUBIO_OFFLINE_GUARD"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(OFFLINE_DIR), os.environ.get("PYTHONPATH")) if p)
os.environ["PATH"] = os.pathsep.join([str(BIN), os.environ.get("PATH", "")])
sys.path.insert(0, str(OFFLINE_DIR))
import sitecustomize  # noqa: E402,F401  (guards this process too)

# sitecustomize may already have been imported from site-packages; install ours for certain
if not hasattr(sitecustomize, "connect"):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpubio_offline_guard", OFFLINE_DIR / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """The demo data set, generated once per test session: <dir>/resources/demo/..."""
    from gpubio.demo import make_demo

    root = tmp_path_factory.mktemp("demo")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_demo("resources/demo", seed=1)
    finally:
        os.chdir(cwd)
    return root


DEMO_OVERLAY = "config/demo/config.yaml"  # what `make demo` lays over config/config.yaml


def demo_config() -> dict:
    """config/config.yaml with the demo overlay merged in (gpubio.demo.demo_config)."""
    from gpubio.demo import demo_config

    return demo_config(REPO)


def demo_project(root: Path, demo_data: Path | None = None) -> Path:
    """A project directory holding the demo's settings and sheets, as a user who starts from
    the demo has it (gpubio.demo.demo_as_project); tests then change config/config.yaml or a
    sheet and run without `--configfile`. With demo_data: resources/demo links to it."""
    from gpubio.demo import demo_as_project

    demo_as_project(REPO, root)
    if demo_data is not None:
        (root / "resources").mkdir(exist_ok=True)
        (root / "resources" / "demo").symlink_to(demo_data / "resources" / "demo")
    return root


@pytest.fixture
def workdir(demo_data, tmp_path) -> Path:
    """A fresh project directory holding the demo's settings and sheets (demo_project)."""
    return demo_project(tmp_path, demo_data)


@pytest.fixture(scope="session")
def demo_run(demo_data, tmp_path_factory) -> Path:
    """The whole demo run once per session as `make demo` runs it (the repository's config/
    with the demo overlay, the local profile on 2 cores), plus the report; tests of every
    module assert on its outputs under <dir>/results."""
    root = tmp_path_factory.mktemp("demo-run")
    shutil.copytree(REPO / "config", root / "config")
    (root / "resources").mkdir()
    (root / "resources" / "demo").symlink_to(demo_data / "resources" / "demo")
    run_snakemake(root, "--profile", str(REPO / "profiles" / "local"), "--cores", "2", "--configfile", DEMO_OVERLAY)
    run_snakemake(root, "--report", "results/report.html", "--configfile", DEMO_OVERLAY)
    return root


def gpubio(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m gpubio ARGS` in this environment (the offline guard included), output captured."""
    return subprocess.run([sys.executable, "-m", "gpubio", *args], capture_output=True, text=True, cwd=cwd)


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's workflow in workdir; returns the completed process (output captured)."""
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# --------------------------------------------------------------------------- the GPU test workflow
# A small workflow of GPU needs (tests/slurm_gpu) and its site, for placement and plan tests.
GPU_WORKFLOW = REPO / "tests" / "slurm_gpu" / "Snakefile"
TEST_PARTITIONS = REPO / "tests" / "slurm_gpu" / "partitions.yaml"


def gpu_plan(tmp_path: Path, config: Path, *extra: str):
    """`gpubio plan` of the GPU test workflow in tmp_path: (the plan table, what it printed)."""
    import pandas as pd

    out = tmp_path / "plan.tsv"
    cmd = [
        sys.executable,
        "-m",
        "gpubio",
        "plan",
        "--snakefile",
        str(GPU_WORKFLOW),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
        "--out",
        str(out),
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return pd.read_csv(out, sep="\t", keep_default_na=False), proc.stdout


# --------------------------------------------------------------------------- SLURM
def _slurm_required() -> bool:
    """CI sets GPUBIO_REQUIRE_SLURM=1: then a missing SLURM is a failure, not a skip."""
    return os.environ.get("GPUBIO_REQUIRE_SLURM", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A throw-away single-host SLURM cluster with fake GPUs (tests/slurm_cluster.py).

    Partitions gpu-t4 (8 x t4), gpu-a100 (4 x a100), gpu-h100 (2 x h100) and cpu
    (default). Skipped where slurm-wlm/munge are not installed or we are not root,
    unless GPUBIO_REQUIRE_SLURM=1: then that is a test failure.
    """
    tests_dir = str(Path(__file__).resolve().parent)
    if tests_dir not in sys.path:
        sys.path.insert(0, tests_dir)
    from slurm_cluster import SlurmCluster, default_nodes, missing_requirements

    missing = missing_requirements()
    if missing:
        reason = (
            "SLURM test cluster unavailable, missing: "
            + ", ".join(missing)
            + " (install with .ci/install-slurm.sh, run the tests as root)"
        )
        if _slurm_required():
            pytest.fail(reason + "; GPUBIO_REQUIRE_SLURM is set, so this is an error", pytrace=False)
        pytest.skip(reason + "; set GPUBIO_REQUIRE_SLURM=1 to make this an error")

    # Nodes big enough for the demo's own requests (up to 64 GB; nothing is enforced), and
    # finished jobs kept in squeue for the session, so tests can read where each one ran.
    nodes = default_nodes(cpus=32, memory_mb=1_100_000)
    with SlurmCluster(tmp_path_factory.mktemp("slurm-cluster"), nodes=nodes, min_job_age=7200) as cluster:
        yield cluster


# --------------------------------------------------------------------------- clean tree
def _repository_status() -> set[str] | None:
    """`git status` lines of the repository (untracked files included, ignored ones not)."""
    try:
        proc = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return set(proc.stdout.splitlines()) if proc.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._repository_status = _repository_status()


def pytest_sessionfinish(session, exitstatus):
    """Tests write only into their tmp dirs: anything new in the repository fails the run."""
    before = getattr(session.config, "_repository_status", None)
    after = _repository_status()
    if before is None or after is None:
        return
    new = sorted(after - before)
    if new:
        session.config._repository_changes = new
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    new = getattr(config, "_repository_changes", None)
    if new:
        terminalreporter.section("repository changed by the tests", red=True)
        terminalreporter.line("The tests left these in the repository (write into tmp_path instead):")
        for line in new:
            terminalreporter.line(f"  {line}")

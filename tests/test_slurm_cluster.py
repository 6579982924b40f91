"""The throw-away SLURM test cluster (tests/slurm_cluster.py), and snakemake on it.

Jobs must land in the partition they ask for and get the (fake) GPUs they ask for,
with CUDA_VISIBLE_DEVICES set by SLURM as on a real GPU node. The last test runs the
smoke workflow in tests/slurm_smoke with `snakemake --executor slurm`.

Run: GPUBIO_REQUIRE_SLURM=1 .venv/bin/python -m pytest tests/test_slurm_cluster.py -q
(as root, after .ci/install-slurm.sh; without GPUBIO_REQUIRE_SLURM the tests skip
where SLURM is not available).
"""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

SMOKE = Path(__file__).resolve().parent / "slurm_smoke"

# The executor settings that work against this cluster (SLURM 22.05, no slurmdbd).
# Keep in sync with profiles/slurm-gpu and the integration tests.
SNAKEMAKE_SLURM_ARGS = [
    "--executor",
    "slurm",
    "--jobs",
    "4",
    # No accounting: sacct only says "Slurm accounting storage is disabled", the status
    # query fails every time and snakemake waits forever. squeue works as long as
    # MinJobAge (7200 s here) >= 3 x init-seconds-before-status-checks.
    "--slurm-status-command",
    "squeue",
    # First status check 1 s after submission (default 40 s); the plugin adds 10 s per
    # round in which no job finished and resets to this value when one did.
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--slurm-keep-successful-logs",
]


def _env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            env[k] = v
    return env


def _devices(env: dict[str, str]) -> list[int]:
    return [int(i) for i in env["CUDA_VISIBLE_DEVICES"].split(",")]


def _run_job(cluster, tmp_path, *args, name="job", seconds=0):
    out = tmp_path / f"{name}.env"
    wrap = f"sleep {seconds}; env | sort > {out}" if seconds else f"env | sort > {out}"
    jobid = cluster.sbatch(*args, "-o", str(tmp_path / f"{name}.log"), "-J", name, wrap=wrap)
    return jobid, out


def test_cluster_is_up(slurm_cluster):
    out = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%P %N %T %G"]).stdout
    rows = {line.split()[0].rstrip("*"): line.split()[1:] for line in out.splitlines()}
    assert set(rows) == {"gpu-t4", "gpu-a100", "gpu-h100", "cpu"}
    assert {row[1] for row in rows.values()} <= {"idle", "mixed", "allocated"}
    assert rows["gpu-t4"][2] == "gpu:t4:8"
    assert rows["gpu-a100"][2] == "gpu:a100:4"
    assert rows["gpu-h100"][2] == "gpu:h100:2"
    assert rows["cpu"][2] == "(null)"
    # Clients without SLURM_CONF (the slurm-jobstep executor drops it) see the same cluster.
    assert Path("/etc/slurm/slurm.conf").read_text() == slurm_cluster.conf.read_text()


@pytest.mark.parametrize(
    "partition, request_args, ngpus",
    [
        ("gpu-t4", ["--gres=gpu:t4:1"], 1),
        ("gpu-a100", ["--gres=gpu:a100:1"], 1),
        ("gpu-a100", ["--gres=gpu:a100:2"], 2),
        ("gpu-h100", ["--gres=gpu:h100:2"], 2),
        # what snakemake-executor-plugin-slurm sends for gpu=1, gpu_model="a100"
        ("gpu-a100", ["--gpus=a100:1", "--ntasks-per-gpu=1", "--cpus-per-task=1", "--mem=256"], 1),
        ("gpu-t4", ["--gpus=t4:2", "--ntasks-per-gpu=1", "--cpus-per-task=1", "--mem=256"], 2),
    ],
    ids=["t4x1", "a100x1", "a100x2", "h100x2", "plugin-a100x1", "plugin-t4x2"],
)
def test_gpu_job_lands_in_partition(slurm_cluster, tmp_path, partition, request_args, ngpus):
    jobid, out = _run_job(slurm_cluster, tmp_path, "-p", partition, *request_args)
    assert slurm_cluster.wait(jobid) == "COMPLETED", (tmp_path / "job.log").read_text()
    env = _env_file(out)
    assert env["SLURM_JOB_PARTITION"] == partition
    assert env["SLURM_JOB_NODELIST"] == slurm_cluster.partitions[partition].name
    assert "CUDA_VISIBLE_DEVICES" in env, sorted(env)
    devices = _devices(env)
    assert len(devices) == ngpus
    assert all(0 <= d < slurm_cluster.partitions[partition].gpus for d in devices)
    assert env["SLURM_JOB_GPUS"] == env["CUDA_VISIBLE_DEVICES"]


def test_cpu_job_gets_no_gpu(slurm_cluster, tmp_path):
    jobid, out = _run_job(slurm_cluster, tmp_path, "-p", "cpu")
    assert slurm_cluster.wait(jobid) == "COMPLETED"
    env = _env_file(out)
    assert env["SLURM_JOB_PARTITION"] == "cpu"
    assert "CUDA_VISIBLE_DEVICES" not in env


def test_default_partition_is_cpu(slurm_cluster, tmp_path):
    jobid, out = _run_job(slurm_cluster, tmp_path)
    assert slurm_cluster.wait(jobid) == "COMPLETED"
    assert _env_file(out)["SLURM_JOB_PARTITION"] == "cpu"


def test_concurrent_jobs_get_distinct_gpus(slurm_cluster, tmp_path):
    """Four 2-GPU jobs at once on the 8-GPU T4 node share out all eight devices."""
    jobs = [
        _run_job(slurm_cluster, tmp_path, "-p", "gpu-t4", "--gres=gpu:t4:2", name=f"j{i}", seconds=3) for i in range(4)
    ]
    time.sleep(1)
    assert [slurm_cluster.job_state(j) for j, _ in jobs].count("RUNNING") >= 2
    seen = []
    for jobid, out in jobs:
        assert slurm_cluster.wait(jobid) == "COMPLETED"
        seen.append(_devices(_env_file(out)))
    flat = sorted(d for devs in seen for d in devs)
    assert flat == list(range(8)), seen


def test_more_gpus_than_the_node_has_is_refused(slurm_cluster):
    p = slurm_cluster.run(["sbatch", "-p", "gpu-h100", "--gres=gpu:h100:3", "--wrap=true"], check=False)
    assert p.returncode != 0
    assert "Requested node configuration is not available" in p.stderr


def test_wrong_gpu_model_for_partition_is_refused(slurm_cluster):
    p = slurm_cluster.run(["sbatch", "-p", "gpu-t4", "--gpus=a100:1", "--wrap=true"], check=False)
    assert p.returncode != 0


def _snakemake() -> str:
    exe = Path(sys.executable).parent / "snakemake"
    if exe.exists():
        return str(exe)
    found = shutil.which("snakemake")
    if found is None:
        pytest.fail("snakemake not found next to the interpreter or on PATH")
    return found


@pytest.mark.timeout(300)
def test_snakemake_slurm_executor_places_gpu_jobs(slurm_cluster, tmp_path):
    cmd = [
        _snakemake(),
        "--snakefile",
        str(SMOKE / "Snakefile"),
        "--directory",
        str(tmp_path),
        *SNAKEMAKE_SLURM_ARGS,
        "--verbose",
    ]
    p = subprocess.run(cmd, env=slurm_cluster.env, capture_output=True, text=True, timeout=240)
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-6000:] + "\n" + slurm_cluster.logs()

    expected = {
        "t4": ("gpu-t4", 1),
        "a100": ("gpu-a100", 1),
        "h100": ("gpu-h100", 2),
        "cpu": ("cpu", 0),
    }
    for name, (partition, ngpus) in expected.items():
        env = _env_file(tmp_path / "placement" / f"{name}.env")
        assert env["SLURM_JOB_PARTITION"] == partition, (name, env)
        if ngpus:
            assert len(_devices(env)) == ngpus, (name, env)
        else:
            assert "CUDA_VISIBLE_DEVICES" not in env, (name, env)

    # The plugin turned gpu + gpu_model into --gpus=<model>:<n>, and SLURM agrees.
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: \S*/rule_on_(\w+)/", log))
    assert sorted(submitted.values()) == sorted(expected), log[-4000:]
    for jobid, name in submitted.items():
        partition, ngpus = expected[name]
        info = slurm_cluster.job_info(jobid)
        assert info["Partition"] == partition
        assert info["JobState"] == "COMPLETED"
        if ngpus:
            assert info.get("TresPerJob") == f"gres:gpu:{name}:{ngpus}", info
    for name, (_partition, ngpus) in expected.items():
        if ngpus:
            assert f"--gpus={name}:{ngpus}" in log

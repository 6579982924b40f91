"""GPU jobs under the local profile: pinned devices on a multi-GPU workstation, the CPU
path (logged) where there is none, and `gpu.require: true` turning that into an error."""

from __future__ import annotations

import json
import os
import subprocess

import yaml

from conftest import BIN, GPU_WORKFLOW, REPO, TEST_PARTITIONS


def run_local(tmp_path, gpus_on_machine: int, require: bool = False, targets=()):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"gpu": {"partitions": str(TEST_PARTITIONS), "require": require}}))
    env = {**os.environ, "GPUBIO_NUM_GPUS": str(gpus_on_machine), "GPUBIO_GPU_LOCK_DIR": str(tmp_path / "locks")}
    cmd = [
        str(BIN / "snakemake"),
        "-s",
        str(GPU_WORKFLOW),
        "--directory",
        str(tmp_path),
        "--configfile",
        str(config),
        "--profile",
        str(REPO / "profiles" / "local"),
        "--cores",
        "2",
        "--resources",
        f"gpu={max(gpus_on_machine, 1)}",
        "--retries",
        "1",
        *targets,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env)


def test_workstation_with_gpus_pins_each_job(tmp_path):
    proc = run_local(tmp_path, gpus_on_machine=4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in (tmp_path / "where").glob("*.json"):
        info = json.loads(path.read_text())
        if path.stem == "cpu":
            assert info["backend"] == "cpu" and info["devices"] == []
            continue
        expected = 2 if path.stem == "large" else 1
        assert info["backend"] == "cuda" and len(set(info["devices"])) == expected, path.stem
        assert all(0 <= d < 4 for d in info["devices"])
        assert info["cuda_visible_devices"] == ",".join(map(str, info["devices"]))
    # every lock was released when its job ended
    import fcntl

    for lock in (tmp_path / "locks").glob("gpu*.lock"):
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_no_gpu_runs_the_cpu_path_and_says_so(tmp_path):
    proc = run_local(tmp_path, gpus_on_machine=0, targets=["where/small.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((tmp_path / "where" / "small.json").read_text())
    assert info["backend"] == "cpu" and info["cuda_visible_devices"] is None
    assert "no GPU found: running on the CPU" in proc.stderr


def test_require_gpu_makes_a_missing_gpu_an_error(tmp_path):
    proc = run_local(tmp_path, gpus_on_machine=0, require=True, targets=["where/small.json"])
    assert proc.returncode != 0
    # refused at start-up: the machine's GPUs are known before any job runs
    assert "rule 'small': gpu.require is true but this machine cannot run" in proc.stderr
    assert "it has no GPU ($GPUBIO_NUM_GPUS=0)" in proc.stderr
    assert not (tmp_path / "where" / "small.json").exists()

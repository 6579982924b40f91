"""bench/gpu_check.py, the script for a GPU machine, run here with --device cpu: every GPU path of
the workflow runs through the same code on the CPU (twice), agrees with itself and lands in
the table; without CUDA the GPU run refuses with one line instead of reporting CPU figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"
PATHS = [
    "Cellpose training (Cellpose 3, from scratch)",
    "Cellpose segmentation (tiled)",
    "learned registration",
    "Enformer-style scoring",
    "DeepSEA (Beluga) scoring",
    "scVI training",
    "CONCH tile embedding",
    "Geneformer-style embedding",
    "scGPT-style embedding",
]


def test_cpu_run_covers_every_gpu_path_and_writes_its_table_where_told(tmp_path):
    results = REPO / "bench" / "results" / "gpu.md"
    before = results.read_text() if results.exists() else None
    out = tmp_path / "gpu_cpu.md"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = out.read_text()
    assert "GPU: none (--device cpu: both legs on the CPU)" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| path")]
    rows = [row for row in rows if not row.startswith("| ---")]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == PATHS
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert float(cells[1]) > 0 and float(cells[2]) > 0 and cells[3].startswith("ok: "), row
    # the same code on the same device: the comparisons see identical results
    assert "largest score difference 0.00e+00" in table and "lowest per-tile correlation 1.000000" in table
    assert (results.read_text() if results.exists() else None) == before  # GPU figures only from a GPU


def test_a_gpu_run_without_cuda_refuses_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the GPU run is the real check")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("gpu_check: torch sees no CUDA device; run with --device cpu for the CPU-only check")

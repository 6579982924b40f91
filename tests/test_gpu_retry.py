"""Why a GPU job failed, read from its log and usage record: a retry goes to a larger GPU only
after GPU out-of-memory, and a cluster job reads the decision back instead of judging again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpubio.gpu.retry import JobFiles, RetryTracker, read_failure
from gpubio.gpu.usage import UsageRecord, failed_record_path, write_record


def job_files(tmp_path: Path, log_text: str | None = None) -> JobFiles:
    log = tmp_path / "logs" / "segment_cells.log"
    if log_text is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(log_text)
    return JobFiles((str(log),), str(tmp_path / "benchmarks" / "segment_cells.gpu.json"))


@pytest.mark.parametrize(
    "line",
    [
        # PyTorch (Cellpose, scVI, Enformer, CONCH)
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)",
        # dorado (libtorch)
        "[2025-01-01 10:00:00.000] [error] CUDA error: out of memory",
        # Parabricks
        "[PB Error 2025-Jan-01 10:00:00][src/haplotype.cu:120] cudaSafeCall() failed: out of memory, exiting.",
        # the CUDA runtime, CuPy and RAPIDS
        "cudaErrorMemoryAllocation: out of memory",
        "cupy.cuda.memory.OutOfMemoryError: Out of memory allocating 4,000,000,000 bytes",
        "MemoryError: std::bad_alloc: out_of_memory: RMM failure at: rmm::out_of_memory",
    ],
    ids=["torch", "dorado", "parabricks", "cuda-runtime", "cupy", "rapids"],
)
def test_gpu_out_of_memory_is_read_from_the_log_of_each_tool(tmp_path, line):
    failure = read_failure(job_files(tmp_path, f"loading model\n{line}\nTraceback (most recent call last):\n"), 1)
    assert failure.kind == "oom"
    assert failure.evidence == f"{tmp_path / 'logs' / 'segment_cells.log'}: {line.strip()[:200]}"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("gpubio: segment-cells: image.tif: not a TIFF file\n", "other"),
        # the host-memory cgroup kill (SLURM state OUT_OF_MEMORY): not the GPU's memory
        (
            "slurmstepd: error: Detected 1 oom_kill event in StepId=7.batch. Some of your processes may have "
            "been killed by the cgroup out-of-memory handler.\n",
            "other",
        ),
        ("numpy.core._exceptions._ArrayMemoryError: Unable to allocate 30.0 GiB for an array\n", "other"),
        ("", "unknown"),  # a node fault: nothing written
        (None, "unknown"),  # not even a log
    ],
    ids=["bad-input", "host-oom-kill", "host-array", "empty-log", "no-log"],
)
def test_other_failures_are_not_gpu_out_of_memory(tmp_path, text, kind):
    assert read_failure(job_files(tmp_path, text), 1).kind == kind


def test_the_usage_record_shows_out_of_memory_also_where_the_log_does_not(tmp_path):
    files = job_files(tmp_path, "dorado exited with status 1\n")
    # a tool that died with the card full (the wrapper saw only its exit status)
    full = UsageRecord(
        rule="basecall", attempt=1, backend="cuda", exit_status=1, peak_vram_gb=15.6, device_vram_gb=16.0
    )
    write_record(failed_record_path(files.usage, 1), full)
    assert read_failure(files, 1).kind == "oom"
    assert "15.6 GB used of the card's 16 GB" in read_failure(files, 1).evidence
    # the same failure with the card half full, at attempt 2: its own record decides
    half = UsageRecord(rule="basecall", attempt=2, backend="cuda", exit_status=1, peak_vram_gb=8.0, device_vram_gb=16.0)
    write_record(failed_record_path(files.usage, 2), half)
    failure = read_failure(files, 2)
    assert failure.kind == "other" and failure.evidence.startswith("exit status 1")
    # the step's own exception said CUDA out of memory (record_usage sets oom)
    flagged = UsageRecord(rule="basecall", attempt=3, backend="cuda", exit_status=1, oom=True)
    write_record(failed_record_path(files.usage, 3), flagged)
    assert read_failure(files, 3, read_logs=False).kind == "oom"


def test_a_cluster_job_reads_the_decision_of_the_scheduling_process(tmp_path):
    """The scheduling process judges attempt 2 from attempt 1's log and writes it down; by the
    time the job's own Snakemake evaluates its resources the log may hold something else."""
    files = job_files(tmp_path, "torch.OutOfMemoryError: CUDA out of memory.\n")
    wildcards = {"sample": "s1"}
    main = RetryTracker(lambda rule, wc: files, tmp_path, main_process=True)
    decided = main.decide("segment_cells", wildcards, 2)
    assert (decided.larger, decided.after) == (1, "oom")
    Path(files.logs[0]).write_text("")  # attempt 2 starts writing its own log
    job = RetryTracker(lambda rule, wc: files, tmp_path, main_process=False)
    assert job.decide("segment_cells", wildcards, 2) == decided
    # a later attempt that failed otherwise stays where the out-of-memory retry went
    Path(files.logs[0]).write_text("gpubio: segment-cells: image.tif: not a TIFF file\n")
    third = main.decide("segment_cells", wildcards, 3)
    assert (third.larger, third.after) == (1, "other")
    rows = (tmp_path / "logs" / "gpu_retries.tsv").read_text().splitlines()
    assert [row.split("\t")[:5] for row in rows[1:]] == [
        ["segment_cells", "sample=s1", "2", "oom", "1"],
        ["segment_cells", "sample=s1", "3", "other", "1"],
    ]


def test_the_usage_record_of_a_retry_says_why_the_attempt_before_failed(tmp_path):
    from gpubio.gpu.usage_report import flags

    retried = UsageRecord(rule="segment_cells", attempt=2, retry_after="other")
    assert flags(retried) == ["retried (attempt 2) after a failure that was not GPU out-of-memory: same GPU class"]
    assert flags(UsageRecord(rule="segment_cells", attempt=2, retry_after="oom")) == [
        "retried (attempt 2): declared need too low"
    ]
    assert json.loads(json.dumps(UsageRecord(retry_after="oom").__dict__))["retry_after"] == "oom"

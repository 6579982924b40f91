"""Why a GPU job failed, and so where its retry goes: a larger GPU only after GPU out-of-memory.

When Snakemake retries a job (``--retries``, the slurm-gpu profile's ``retries: 2``) it
evaluates the job's resources again with the next ``attempt``. Before, every retry moved the
job one GPU size up; a job that failed for any other reason (an input found bad inside the job,
a node fault) went on to a larger, dearer GPU for nothing. Now each retry first reads why the
attempt before it failed:

- its GPU usage record (``<step>.attempt<k>.failed.gpu.json``): out of memory when the step
  saw a CUDA out-of-memory error, or when its peak GPU memory reached the card's size;
- its log (the rule's ``log:``), where the tools write their errors: CUDA out-of-memory
  messages of PyTorch (Cellpose, scVI, Enformer), CuPy/RAPIDS, dorado and Parabricks.

Out of memory: the retry goes to the next larger GPU the site has (one step per
out-of-memory). Anything else, or nothing to read (a node fault, a kill): the same GPU class.
The decision and its reason are appended to ``logs/gpu_retries.tsv`` by the Snakemake
process that schedules the run, printed once, and passed to the job's usage record; a cluster
job, which starts Snakemake again and evaluates its resources there, reads the decision back
from that file instead of judging again (the log it would read is being rewritten by then).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .usage import RECORD_SUFFIX, UsageRecord, failed_record_path, gpu_oom_line

# a failed step whose peak reached this share of its card's memory ran out of it
FULL_CARD_SHARE = 0.95
LOG_TAIL_BYTES = 256 * 1024
LEDGER = "logs/gpu_retries.tsv"
LEDGER_COLUMNS = ["rule", "job", "attempt", "after", "larger", "reason"]


@dataclass(frozen=True)
class JobFiles:
    """Where one job leaves its evidence: its log files and its GPU usage record."""

    logs: tuple[str, ...] = ()
    usage: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why one attempt failed: ``oom`` (GPU out of memory), ``other`` (it failed, and what it
    left says something else), ``unknown`` (it left nothing to read)."""

    kind: str
    evidence: str

    @property
    def oom(self) -> bool:
        return self.kind == "oom"


def read_failure(files: JobFiles, attempt: int, read_logs: bool = True) -> Failure:
    """Why ``attempt`` of a job failed, from its failed usage record and (``read_logs``: the
    logs hold that attempt's output) its logs."""
    record = _failed_record(files, attempt)
    if record is not None:
        if record.oom:
            return Failure("oom", f"its usage record {files.usage} reports CUDA out of memory")
        if (
            record.peak_vram_gb
            and record.device_vram_gb
            and record.peak_vram_gb >= FULL_CARD_SHARE * record.device_vram_gb
        ):
            return Failure(
                "oom",
                f"its usage record shows {record.peak_vram_gb:g} GB used of the card's {record.device_vram_gb:g} GB",
            )
    if read_logs:
        for log in files.logs:
            line = gpu_oom_line(_tail(log))
            if line:
                return Failure("oom", f"{log}: {line[:200]}")
    if record is not None:
        return Failure("other", f"exit status {record.exit_status} and no GPU out-of-memory in its log or usage record")
    if read_logs and any(_tail(log).strip() for log in files.logs):
        return Failure("other", f"{', '.join(files.logs)} reports no GPU out-of-memory")
    return Failure("unknown", "no log or usage record says why (a node fault or a killed job leaves none)")


def _failed_record(files: JobFiles, attempt: int) -> UsageRecord | None:
    if not files.usage:
        return None
    path = failed_record_path(files.usage, attempt)
    try:
        return UsageRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - LOG_TAIL_BYTES))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


@dataclass(frozen=True)
class RetryDecision:
    """Attempt ``attempt`` of a job: ``larger`` steps to a larger GPU than its first placement
    (one per GPU out-of-memory so far), ``after`` the kind of the failure before it."""

    attempt: int
    larger: int = 0
    after: str = ""
    reason: str = ""


FIRST = RetryDecision(1)


class RetryTracker:
    """Decides, per job and attempt, how many steps to a larger GPU the attempt takes.

    ``job_files(rule, wildcards)`` says where a job leaves its log and usage record;
    ``main_process``: this Snakemake process schedules the run (it judges and writes the
    ledger), else it runs one cluster job (it reads the ledger).
    """

    def __init__(
        self,
        job_files: Callable[[str, Mapping[str, Any]], JobFiles] | None,
        workdir: str | os.PathLike = ".",
        main_process: bool = True,
    ):
        self.job_files = job_files
        self.ledger = Path(workdir) / LEDGER
        self.main_process = main_process
        self._decided: dict[tuple[str, str, int], RetryDecision] = {}

    def decide(self, rule: str, wildcards: Mapping[str, Any], attempt: int) -> RetryDecision:
        if attempt <= 1:
            return FIRST
        job = job_key(wildcards)
        key = (rule, job, attempt)
        decided = self._decided.get(key)
        if decided is None:
            decided = None if self.main_process else self._from_ledger(rule, job, attempt)
            if decided is None:
                decided = self._judge(rule, wildcards, attempt)
                if self.main_process:
                    self._append(rule, job, decided)
                    print(f"gpubio: rule {rule}{f' ({job})' if job else ''}: {decided.reason}", file=sys.stderr)
            self._decided[key] = decided
        return decided

    def _judge(self, rule: str, wildcards: Mapping[str, Any], attempt: int) -> RetryDecision:
        before = self.decide(rule, wildcards, attempt - 1)
        files = self.job_files(rule, wildcards) if self.job_files is not None else JobFiles()
        # the logs hold the latest attempt's output: only the attempt just before this one
        failure = read_failure(files, attempt - 1)
        if failure.oom:
            reason = (
                f"attempt {attempt - 1} ran out of GPU memory ({failure.evidence}); "
                f"attempt {attempt} goes to the next larger GPU"
            )
        else:
            reason = (
                f"attempt {attempt - 1} failed, not for GPU memory ({failure.evidence}); "
                f"attempt {attempt} stays on the same GPU class"
            )
        return RetryDecision(attempt, before.larger + failure.oom, failure.kind, reason)

    def _from_ledger(self, rule: str, job: str, attempt: int) -> RetryDecision | None:
        """The scheduling process's decision for this attempt (its last line for the job)."""
        try:
            with open(self.ledger, newline="") as fh:
                rows = list(csv.DictReader(fh, delimiter="\t"))
        except OSError:
            return None
        for row in reversed(rows):
            if (row.get("rule"), row.get("job"), row.get("attempt")) == (rule, job, str(attempt)):
                return RetryDecision(attempt, int(row["larger"]), row["after"], row["reason"])
        return None

    def _append(self, rule: str, job: str, decision: RetryDecision) -> None:
        try:
            self.ledger.parent.mkdir(parents=True, exist_ok=True)
            new = not self.ledger.exists()
            with open(self.ledger, "a", newline="") as fh:
                writer = csv.writer(fh, delimiter="\t", lineterminator="\n")
                if new:
                    writer.writerow(LEDGER_COLUMNS)
                writer.writerow([rule, job, decision.attempt, decision.after, decision.larger, decision.reason])
        except OSError as error:
            print(f"gpubio: could not record the retry decision in {self.ledger}: {error}", file=sys.stderr)


def job_key(wildcards: Mapping[str, Any]) -> str:
    """A job's wildcards as usage records name them: ``sample=s1,shard=00``."""
    return ",".join(f"{k}={v}" for k, v in wildcards.items())


_BENCHMARK_SUFFIX = re.compile(r"\.(tsv|txt)$")


def snakemake_job_files(workflow: Any) -> Callable[[str, Mapping[str, Any]], JobFiles]:
    """Where the jobs of a Snakemake workflow leave their evidence: each rule's ``log:`` files,
    and its usage record (``params: usage=``, else beside its ``benchmark:`` file, as
    ``usage_record`` in workflow/rules/common.smk puts it). Rules are looked up when a retry
    asks, after every rule is defined."""
    from snakemake.io import apply_wildcards

    def files(rule_name: str, wildcards: Mapping[str, Any]) -> JobFiles:
        rule = workflow.get_rule(rule_name)
        values = dict(wildcards.items())
        logs = tuple(apply_wildcards(str(log), values) for log in rule.log)
        usage = getattr(rule.params, "usage", None)
        if isinstance(usage, str):
            usage = apply_wildcards(usage, values)
        elif rule.benchmark is not None:
            usage = _BENCHMARK_SUFFIX.sub(RECORD_SUFFIX, apply_wildcards(str(rule.benchmark), values))
        else:
            usage = None
        return JobFiles(logs, usage)

    return files

"""Usage records (what a GPU step used), calibration of needs from them, and placement by
calibrated needs. GPU readings come from a stand-in NVML whose numbers the tests set."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpubio.gpu import build_site
from gpubio.gpu.calibrate import calibrate, fit_rule, load_needs, needs_to_yaml, upper_line
from gpubio.gpu.placement import GpuNeed
from gpubio.gpu.usage import UsageRecord, read_records, record_usage

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = REPO / "profiles" / "slurm-gpu" / "partitions.yaml"


class FakeNvml:
    """NVML as nvidia-ml-py exposes it: one 16 GB T4 whose used memory follows `used_gb`."""

    def __init__(self, used_gb: list[float], util: int = 80, fail_at: str | None = None):
        self.used_gb, self.util, self.fail_at, self.calls = list(used_gb), util, fail_at, 0

    def _maybe_fail(self, name: str) -> None:
        if self.fail_at == name:
            raise RuntimeError(f"NVML_ERROR_UNKNOWN in {name}")

    def nvmlInit(self):
        self._maybe_fail("nvmlInit")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, handle):
        return b"Tesla T4"

    def nvmlDeviceGetMemoryInfo(self, handle):
        self._maybe_fail("nvmlDeviceGetMemoryInfo")
        used = self.used_gb[min(self.calls, len(self.used_gb) - 1)]
        self.calls += 1
        return SimpleNamespace(total=16e9, used=used * 1e9)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self.util, memory=10)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("GPUBIO_DECLARED_NEEDS", raising=False)


# --------------------------------------------------------------------------- records
def test_gpu_step_records_peak_memory_utilisation_and_the_plan(tmp_path):
    nvml = FakeNvml([1.0, 3.5, 6.25, 2.0])
    path = tmp_path / "bench" / "s1.gpu.json"
    job = {
        "rule": "segment_cells",
        "job": "sample=s1",
        "attempt": 2,
        "input_size_mb": 12.5,
        "planned_gpu_model": "a100",
    }
    with record_usage(path, job, gpus=1, devices=[0], nvml=nvml, interval_s=0.01) as record:
        while nvml.calls < 4:
            pass
    data = json.loads(path.read_text())
    assert data["peak_vram_gb"] == 6.25  # the highest sample, not the last
    assert (data["device_model"], data["device_vram_gb"]) == ("Tesla T4", 16.0)
    assert data["mean_utilisation"] == 80.0 and data["nvml"] == "ok" and data["sources"] == ["nvml"]
    assert (data["rule"], data["attempt"], data["input_size_mb"], data["planned_gpu_model"]) == (
        "segment_cells",
        2,
        12.5,
        "a100",
    )
    assert data["backend"] == "cuda" and data["exit_status"] == 0 and record.wall_s > 0


@pytest.mark.parametrize("fail_at", ["nvmlInit", "nvmlDeviceGetMemoryInfo"])
def test_failing_nvml_never_fails_the_job(tmp_path, fail_at):
    path = tmp_path / "r.gpu.json"
    with record_usage(path, {"rule": "r"}, gpus=1, devices=[0], nvml=FakeNvml([1.0], fail_at=fail_at)):
        result = 6 * 7
    assert result == 42
    data = json.loads(path.read_text())
    assert "NVML_ERROR_UNKNOWN" in data["nvml"] and data["peak_vram_gb"] is None


def test_absent_nvml_and_cpu_path_are_recorded_as_such(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    monkeypatch.setenv("PATH", str(tmp_path))  # and no nvidia-smi
    with record_usage(tmp_path / "gpu.gpu.json", {"rule": "r"}, gpus=1, devices=[0]):
        pass
    assert json.loads((tmp_path / "gpu.gpu.json").read_text())["nvml"] == (
        "unavailable: ImportError: neither nvidia-ml-py (pynvml) nor nvidia-smi is available"
    )
    with record_usage(tmp_path / "cpu.gpu.json", {"rule": "r"}, gpus=1, devices=[]):
        pass
    cpu = json.loads((tmp_path / "cpu.gpu.json").read_text())
    assert (cpu["backend"], cpu["reason"], cpu["peak_vram_gb"]) == ("cpu", "no GPU found on this node", None)


def test_without_nvidia_ml_py_the_driver_tool_is_sampled(tmp_path, monkeypatch):
    """In a vendor container (dorado, Parabricks) without nvidia-ml-py, nvidia-smi's own
    queries give the device, its memory in use and its utilisation."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *memory.total,memory.used*) echo "81559, 20480" ;;\n'  # MiB
        '  *utilization.gpu*) echo "64" ;;\n'
        '  *name*) echo "NVIDIA H100 80GB HBM3" ;;\n'
        '  *) echo "0" ;;\n'
        "esac\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    path = tmp_path / "dorado.gpu.json"
    with record_usage(path, {"rule": "basecall"}, gpus=1, devices=[0], interval_s=0.05):
        pass
    data = json.loads(path.read_text())
    assert (data["nvml"], data["device_model"], data["device_vram_gb"]) == ("ok", "NVIDIA H100 80GB HBM3", 85.52)
    assert data["peak_vram_gb"] == pytest.approx(20480 * 2**20 / 1e9, abs=1e-3) and data["mean_utilisation"] == 64.0


def test_failed_step_still_writes_its_record_with_the_oom(tmp_path):
    path = tmp_path / "oom.gpu.json"
    with pytest.raises(RuntimeError):
        with record_usage(path, {"rule": "r", "attempt": 1}, gpus=1, devices=[0], nvml=FakeNvml([15.9])):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not path.exists()  # the job's own record is the successful attempt's; the failure sits beside it
    data = json.loads((tmp_path / "oom.attempt1.failed.gpu.json").read_text())
    assert data["oom"] is True and data["exit_status"] == 1 and data["device_vram_gb"] == 16.0
    with record_usage(path, {"rule": "r", "attempt": 2}, gpus=1, devices=[0], nvml=FakeNvml([20.0])):
        pass
    assert sorted(r.attempt for r in read_records([tmp_path])) == [1, 2]  # both attempts are history


def test_cli_step_on_the_cpu_writes_a_record_saying_so(tmp_path):
    """Through `python -m gpubio --gpus 1 --usage ...` on this GPU-less machine."""
    out = tmp_path / "info.json"
    record = tmp_path / "b" / "device_info.gpu.json"
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO / "workflow"), "GPUBIO_NUM_GPUS": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "--gpus",
            "1",
            "--usage",
            str(record),
            "--usage-job",
            "rule=device_info;attempt=1;input_mb=3.5",
            "device-info",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(record.read_text())
    assert (data["rule"], data["backend"], data["reason"], data["input_size_mb"]) == (
        "device_info",
        "cpu",
        "no GPU found on this node",
        3.5,
    )


# --------------------------------------------------------------------------- calibration
def _records(rule, law, sizes, model_vram=80.0, jitter=0.0, seed=0, **extra):
    rng = random.Random(seed)
    return [
        UsageRecord(
            rule=rule,
            backend="cuda",
            input_size_mb=s,
            peak_vram_gb=law(s) * (1 - rng.uniform(0, jitter)),
            device_vram_gb=model_vram,
            wall_s=60.0 + s,
            **extra,
        )
        for s in sizes
    ]


def test_calibration_recovers_a_linear_law_as_an_upper_bound():
    law = lambda s: 2.0 + 0.05 * s  # noqa: E731  GB at s MB
    records = _records("segment_cells", law, [10, 40, 80, 120, 200, 300, 400], jitter=0.15)
    need = fit_rule("segment_cells", records, margin=0.0)
    assert need.vram.slope == pytest.approx(0.05, rel=0.2)
    assert all(need.vram_gb(r.input_size_mb) >= r.peak_vram_gb - 1e-9 for r in records)  # bound every point
    assert need.vram_gb(400) <= law(400) * 1.05  # and tight at the top
    with_margin = fit_rule("segment_cells", records, margin=0.2)
    assert with_margin.vram_gb(400) == pytest.approx(need.vram_gb(400) * 1.2)
    assert need.runtime_min(400) >= (60 + 400) / 60


def test_size_independent_use_is_a_constant_and_one_outlier_does_not_tilt_it():
    sizes = [5, 50, 100, 150, 200, 250]
    records = _records("variant_effects", lambda s: 3.0, sizes, jitter=0.02)
    need = fit_rule("variant_effects", records, margin=0.0)
    assert need.vram.slope == 0 and need.vram.intercept == max(r.peak_vram_gb for r in records)
    robust = upper_line([(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (5, 40.0)])
    assert robust.slope == pytest.approx(1.0)  # Theil-Sen: the outlier raises the bound, not the slope


def test_an_oom_retry_raises_the_need_above_the_gpu_that_ran_out():
    fine = _records("basecall", lambda s: 5.0, [100, 200, 300], model_vram=40.0)
    oom = UsageRecord(rule="basecall", backend="cuda", input_size_mb=300, device_vram_gb=16.0, oom=True, exit_status=1)
    without, with_oom = fit_rule("basecall", fine), fit_rule("basecall", fine + [oom])
    assert without.vram_gb(300) < 16 < with_oom.vram_gb(300)
    assert with_oom.oom_records == 1


def test_needs_file_round_trips_and_a_bad_one_is_one_clear_error(tmp_path):
    needs = calibrate(_records("a", lambda s: 1 + s / 10, [10, 20, 30, 40]) + _records("b", lambda s: 3.0, [1, 2]))
    path = tmp_path / "gpu_needs.yaml"
    path.write_text(needs_to_yaml(needs, ["run1/benchmarks"], 0.2))
    loaded = load_needs(path)
    for rule in ("a", "b"):
        assert loaded[rule].vram_gb(25) == pytest.approx(needs[rule].vram_gb(25), abs=1e-3)
    (tmp_path / "bad.yaml").write_text("rules: {a: {vram: {}}}")
    from gpubio.gpu.calibrate import NeedsError

    with pytest.raises(NeedsError, match="bad.yaml: not a calibrated needs file.*gpubio calibrate"):
        load_needs(tmp_path / "bad.yaml")


def test_a_rule_that_used_3_of_16_gb_moves_to_a_cheaper_gpu(tmp_path, monkeypatch):
    """Declared 16 GB (an A100 at this site: the T4 has exactly 16 but the A100 is the
    cheapest above a 17 GB need); measured 3 GB: placed on the T4 after calibration."""
    need = GpuNeed(gpus=1, vram_gb=17, rule="call_parabricks", min_vram_gb=0)
    declared = build_site(PARTITIONS)
    assert declared.place(need).model.name.startswith("A100")
    needs = calibrate(_records("call_parabricks", lambda s: 3.0, [50, 100, 150], model_vram=40.0))
    (tmp_path / "gpu_needs.yaml").write_text(needs_to_yaml(needs, ["x"], 0.2))
    site = build_site(PARTITIONS, needs_file=tmp_path / "gpu_needs.yaml")
    assert site.place(need).model.name == "T4"
    floor = GpuNeed(gpus=1, vram_gb=17, rule="call_parabricks", min_vram_gb=20)  # the tool's minimum wins
    assert site.place(floor).model.vram_gb >= 20
    monkeypatch.setenv("GPUBIO_DECLARED_NEEDS", "1")  # the plan's "declared" pass ignores the file
    assert build_site(PARTITIONS, needs_file=tmp_path / "gpu_needs.yaml").place(need).model.name.startswith("A100")


def test_calibrate_command_reads_run_directories_and_writes_the_needs_file(tmp_path):
    for run, sizes in (("run1", [10, 20]), ("run2", [30, 40])):
        for s in sizes:
            r = UsageRecord(rule="embed", backend="cuda", input_size_mb=s, peak_vram_gb=1 + s / 10, wall_s=30)
            path = tmp_path / run / "benchmarks" / f"embed_{s}.gpu.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r.__dict__))
    (tmp_path / "run2" / "benchmarks" / "junk.gpu.json").write_text("{not json")
    assert len(read_records([tmp_path / "run1", tmp_path / "run2"])) == 4
    out = tmp_path / "config" / "gpu_needs.yaml"
    env = {"PATH": str(Path(sys.executable).parent), "PYTHONPATH": str(REPO / "workflow")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "calibrate",
            str(tmp_path / "run1"),
            str(tmp_path / "run2"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    need = load_needs(out)["embed"]
    assert need.records == 4 and need.vram_gb(40) >= 5.0 and need.vram.slope > 0
    empty = subprocess.run(
        [sys.executable, "-m", "gpubio", "calibrate", str(tmp_path / "nothing"), "--out", str(tmp_path / "n.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert empty.returncode != 0 and "no GPU usage records" in empty.stderr


def test_gpu_usage_resource_tells_the_job_what_the_plan_gave_it(tmp_path):
    """The string a GPU rule passes as --usage-job, as Snakemake evaluates it for a job: a
    retry after GPU out-of-memory (its log says so) runs on the next larger GPU."""
    from gpubio.gpu import gpu_resources
    from gpubio.gpu.retry import JobFiles
    from gpubio.gpu.usage import parse_job_spec

    log = tmp_path / "segment.log"
    log.write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    site = build_site(PARTITIONS, job_files=lambda rule, wildcards: JobFiles((str(log),)), workdir=tmp_path)
    resources = gpu_resources(site, vram_gb=lambda mb: 10 + mb, runtime=90)
    wildcards = SimpleNamespace(items=lambda: [("sample", "s1")])
    spec = resources["gpu_usage"](wildcards, SimpleNamespace(size_mb=10.0), attempt=2, rulename="segment_cells")
    job = parse_job_spec(spec)
    assert job == {
        "rule": "segment_cells",
        "job": "sample=s1",
        "attempt": 2,
        "planned_gpu_model": "h100",
        "planned_partition": "gpu-h100",
        "planned_vram_gb": 20.0,
        "planned_runtime_min": 90.0,
        "input_size_mb": 10.0,
        "retry_after": "oom",
    }
    ledger = (tmp_path / "logs" / "gpu_retries.tsv").read_text().splitlines()
    assert ledger[0].split("\t") == ["rule", "job", "attempt", "after", "larger", "reason"]
    assert ledger[1].startswith("segment_cells\tsample=s1\t2\toom\t1\tattempt 1 ran out of GPU memory")


def test_report_compares_planned_with_measured_and_flags_both_ways_a_need_is_wrong(tmp_path):
    from gpubio.gpu.usage import write_record
    from gpubio.gpu.usage_report import write_usage_report

    site = build_site(PARTITIONS)
    records = {
        # 3 GB on a 16 GB T4 for 30 min, planned 60 min: a cheaper GPU would do (there is none cheaper
        # than a T4 here, but the flag is about the share of memory used)
        "small": UsageRecord(
            rule="embed",
            job="sample=a",
            backend="cuda",
            gpus=1,
            device_model="Tesla T4",
            device_vram_gb=16.0,
            peak_vram_gb=3.0,
            wall_s=1800,
            planned_gpu_model="t4",
            planned_partition="gpu-t4",
            planned_runtime_min=60,
            input_size_mb=5,
        ),
        # ran out of memory on the T4, then fitted on the A100 at attempt 2
        "oom": UsageRecord(
            rule="segment",
            job="sample=b",
            backend="cuda",
            gpus=1,
            device_vram_gb=16.0,
            peak_vram_gb=15.9,
            oom=True,
            exit_status=1,
            wall_s=60,
            planned_gpu_model="t4",
            planned_partition="gpu-t4",
            planned_runtime_min=60,
            input_size_mb=400,
        ),
        "retry": UsageRecord(
            rule="segment",
            job="sample=b",
            attempt=2,
            backend="cuda",
            gpus=1,
            device_vram_gb=40.0,
            peak_vram_gb=22.0,
            wall_s=3600,
            planned_gpu_model="a100",
            planned_partition="gpu-a100",
            planned_runtime_min=120,
            input_size_mb=400,
        ),
        "cpu": UsageRecord(
            rule="embed",
            job="sample=c",
            backend="cpu",
            reason="no GPU found",
            gpus=1,
            wall_s=99,
            planned_gpu_model="t4",
            planned_partition="gpu-t4",
            planned_runtime_min=60,
        ),
    }
    for name, record in records.items():
        write_record(tmp_path / "benchmarks" / f"{name}.gpu.json", record)
    out = tmp_path / "results"
    table = write_usage_report(
        [tmp_path / "benchmarks"], out / "gpu_usage.tsv", out / "gpu_usage_models.tsv", out / "gpu_usage.png", site
    )
    row = table.set_index(["rule", "job", "attempt"])
    small = row.loc[("embed", "sample=a", 1)]
    assert small["headroom_gb"] == 13.0 and small["used_share"] == pytest.approx(3 / 16, abs=1e-3)
    assert small["gpu_hours_used"] == 0.5 and small["planned_gpu_hours"] == 1.0
    assert small["relative_cost_used"] == 0.5  # T4 = 1.0 per hour
    assert "cheaper GPU would do" in small["flags"]
    assert "out of memory" in row.loc[("segment", "sample=b", 1)]["flags"]
    retry = row.loc[("segment", "sample=b", 2)]
    assert "retried" in retry["flags"] and retry["relative_cost_used"] == pytest.approx(4.0)  # 1 h of A100-40
    assert "cheaper" not in retry["flags"]  # 22 of 40 GB
    cpu = row.loc[("embed", "sample=c", 1)]
    assert cpu["gpu_hours_used"] == 0 and "ran on the CPU (no GPU found)" in cpu["flags"]
    import pandas as pd

    models = pd.read_csv(out / "gpu_usage_models.tsv", sep="\t").set_index("planned_gpu_model")
    assert models.loc["t4", "jobs"] == 3 and models.loc["t4", "could_be_cheaper"] == 1
    assert models.loc["a100", "out_of_memory"] == 1
    assert (out / "gpu_usage.png").stat().st_size > 10_000


# --------------------------------------------------------------------------- GPU truth
def test_torch_step_on_an_assigned_gpu_torch_cannot_use_says_so_or_fails_when_required(caplog):
    """SLURM (here: the pinning) gave the job device 0, but this torch has no CUDA: the step
    runs on the CPU and says why, and its record says cpu; in require mode it fails instead."""
    import logging

    from gpubio.gpu.job import GpuUnusable, JobDevice, set_current_job, torch_device

    try:
        job = set_current_job(JobDevice(gpus=1, devices=[0], require=False))
        with caplog.at_level(logging.INFO, logger="gpubio.gpu"):
            assert torch_device("learned registration", threads=1) == "cpu"
        assert "learned registration on the CPU: GPU(s) [0] assigned, but torch" in caplog.text
        assert "sees no CUDA device" in caplog.text and "on the GPU" not in caplog.text
        assert (job.record.backend, job.record.reason.startswith("GPU(s) [0] assigned")) == ("cpu", True)
        set_current_job(JobDevice(gpus=1, devices=[0], require=True))
        with pytest.raises(GpuUnusable, match=r"learned registration: GPU\(s\) \[0\] assigned, but torch"):
            torch_device("learned registration", threads=1)
    finally:
        set_current_job(JobDevice())


def test_required_gpu_torch_cannot_use_fails_the_cli_step_with_one_line(tmp_path):
    """Through `python -m gpubio --gpus 1 --require-gpu` on a machine with a (fake) device."""
    import numpy as np
    import tifffile

    image = np.random.default_rng(0).integers(0, 1000, (1, 32, 32), dtype=np.uint16)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, image)
    record = tmp_path / "register.gpu.json"
    env = {
        "PATH": str(Path(sys.executable).parent),
        "PYTHONPATH": str(REPO / "workflow"),
        "GPUBIO_NUM_GPUS": "1",
        "GPUBIO_GPU_LOCK_DIR": str(tmp_path / "locks"),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "--gpus",
            "1",
            "--require-gpu",
            "--usage",
            str(record),
            "register-image",
            str(tmp_path / "a.tif"),
            "--reference",
            str(tmp_path / "b.tif"),
            "--method",
            "learned",
            "--out-image",
            str(tmp_path / "r.tif"),
            "--out-transform",
            str(tmp_path / "t.json"),
            "--out-png",
            str(tmp_path / "c.png"),
            "--out-footprint",
            str(tmp_path / "f.tif"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and not (tmp_path / "r.tif").exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpubio: register-image: learned registration: GPU(s) [0] assigned, but torch")
    assert "this step requires a GPU (gpu.require: true" in last and "Traceback" not in proc.stderr
    failed = json.loads((tmp_path / "register.attempt1.failed.gpu.json").read_text())
    assert failed["exit_status"] != 0


# --------------------------------------------------------------------------- the demo
@pytest.mark.e2e
def test_demo_writes_a_usage_record_for_every_gpu_step_and_the_report_compares(demo_run):
    """Every job the plan gives a GPU ran through the usage wrapper: its record is there,
    says it ran on the CPU here (and why), carries what the plan gave it, and the report's
    table has one row for it."""
    import pandas as pd

    plan = pd.read_csv(demo_run / "results/gpu_plan.tsv", sep="\t", keep_default_na=False)
    gpu_jobs = {(r.rule, r.wildcards) for r in plan.itertuples() if r.gpus > 0}
    assert {rule for rule, _ in gpu_jobs} >= {"variant_effects", "train_cellpose", "segment_cells", "integrate_cells"}
    records = {(r.rule, r.job): r for r in read_records([demo_run / "benchmarks"])}
    assert set(records) == gpu_jobs
    planned = {(r.rule, r.wildcards): r for r in plan.itertuples()}
    for key, record in records.items():
        assert (record.backend, record.exit_status, record.attempt) == ("cpu", 0, 1), key
        assert record.reason and record.wall_s > 0 and record.input_size_mb > 0, key
        assert (record.planned_gpu_model, record.planned_partition) == (
            planned[key].gpu_model,
            planned[key].partition,
        ), key
    usage = pd.read_csv(demo_run / "results/gpu_usage.tsv", sep="\t", keep_default_na=False)
    assert {(r.rule, r.job) for r in usage.itertuples()} == gpu_jobs
    assert all("ran on the CPU" in flags for flags in usage["flags"])
    assert (demo_run / "results/gpu_usage.png").stat().st_size > 10_000
    html = (demo_run / "results/report.html").read_text(errors="replace")
    assert "gpu_usage.tsv" in html


def test_usage_report_holds_only_the_samples_in_the_sheets_now(tmp_path):
    """A sample removed from its sheet keeps its records under benchmarks/ (calibration reads
    them), but its rows leave results/gpu_usage.tsv: the workflow names the record folders of
    the samples and runs its sheets hold now."""
    import numpy as np
    import pandas as pd
    import tifffile

    from gpubio.gpu.usage import write_record

    bench = tmp_path / "benchmarks"
    for folder, rule, job in [
        ("imaging/kept", "segment_cells", "sample=kept"),
        ("imaging/gone", "segment_cells", "sample=gone"),  # removed from the sheet
        ("genomics/kept", "variant_effects", "sample=kept"),  # same name, another module: off now
        ("genomics/runs/old_run", "basecall", "run=old_run,shard=000"),
        ("imaging", "train_cellpose", ""),  # a step over all samples
    ]:
        step = f"{folder}/{rule}"
        write_record(bench / f"{step}.gpu.json", UsageRecord(rule=rule, job=job, gpus=1, wall_s=3))
    write_record(bench / "imaging/gone/segment_cells.attempt1.failed.gpu.json", UsageRecord(rule="segment_cells"))

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "kept.tif", rng.integers(0, 255, (32, 32), dtype=np.uint8))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "img.tsv").write_text("sample\timage\nkept\tkept.tif\n")
    (tmp_path / "config" / "config.yaml").write_text(
        json.dumps(
            {"gpu": {"needs": ""}, "imaging": {"samples": "config/img.tsv", "segmentation": {"model": "nuclei"}}}
        )
    )
    from conftest import run_snakemake

    dry = run_snakemake(tmp_path, "-n", "-p", "--cores", "1", "results/gpu_usage.tsv")
    [command] = [line for line in dry.stdout.splitlines() if "gpu-usage-report" in line]
    assert command.split("--sample-folders ")[1].split(" >")[0] == "imaging/kept"

    out = tmp_path / "results"
    cmd = [sys.executable, "-m", "gpubio", "gpu-usage-report", str(bench), "--sample-folders", "imaging/kept"]
    cmd += ["--out-tsv", str(out / "u.tsv"), "--out-models", str(out / "m.tsv"), "--out-png", str(out / "u.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "u.tsv", sep="\t", keep_default_na=False)
    assert sorted(zip(table["rule"], table["job"])) == [("segment_cells", "sample=kept"), ("train_cellpose", "")]
    assert len(read_records([bench])) == 6  # all of them stay on disk, for gpubio calibrate


def test_report_puts_measured_cost_beside_the_plans_expected_and_reserved_cost(tmp_path):
    """With gpu.prices the GPU page costs what each job used (at the price of the GPU it ran on)
    beside what the plan expected and reserved for it (results/gpu_plan.tsv)."""
    from gpubio.gpu.usage import write_record
    from gpubio.gpu.usage_report import write_usage_report

    prices = {"T4": 0.5, "A100-40": 4.0, "H100": 8.0}
    site = build_site(PARTITIONS, prices=prices)
    # planned on a T4 (a spread job may run elsewhere: the device decides the price)
    write_record(
        tmp_path / "benchmarks" / "a.gpu.json",
        UsageRecord(
            rule="segment",
            job="sample=a",
            backend="cuda",
            gpus=1,
            device_model="NVIDIA A100-SXM4-40GB",
            device_vram_gb=40.0,
            wall_s=1800,
            planned_partition="gpu-t4,gpu-a100",
        ),
    )
    plan = tmp_path / "gpu_plan.tsv"
    plan.write_text(
        "rule\twildcards\texpected_gpu_hours\treserved_gpu_hours\texpected_cost\treserved_cost\n"
        "segment\tsample=a\t0.25\t2.0\t0.125\t1.0\n"
    )
    out = tmp_path / "results"
    table = write_usage_report(
        [tmp_path / "benchmarks"],
        out / "gpu_usage.tsv",
        out / "gpu_usage_models.tsv",
        out / "gpu_usage.png",
        site,
        plan_tsv=str(plan),
    )
    row = table.iloc[0]
    assert (row["price_per_gpu_hour"], row["cost_used"]) == (4.0, 2.0)  # half an hour of A100-40
    assert (row["expected_gpu_hours"], row["expected_cost"], row["reserved_cost"]) == (0.25, 0.125, 1.0)
    import pandas as pd

    models = pd.read_csv(out / "gpu_usage_models.tsv", sep="\t")
    assert models.loc[0, "cost_used"] == 2.0 and models.loc[0, "expected_cost"] == 0.125


def test_usage_report_prices_reach_the_command_quoted():
    from gpubio.gpu.usage_report import gpu_prices_option, parse_prices

    option = gpu_prices_option({"prices": {"A100-40": 4.1, "T4": 0.53}, "catalogue": {}})
    assert option == "--price=A100-40=4.1 --price=T4=0.53"
    own = {"rtx 4090": {"vram_gb": 24, "compute_capability": 8.9, "speed": 3.2, "cost": 1.2}}
    with_own = gpu_prices_option({"prices": {"rtx 4090": 0.4}, "catalogue": own})
    assert with_own.startswith("'--price=rtx 4090=0.4' --catalogue '{\"rtx 4090\": {")
    assert parse_prices(["A100-40=4.1", "T4=0.53"]) == {"A100-40": 4.1, "T4": 0.53}
    assert gpu_prices_option({"prices": {}}) == ""
    with pytest.raises(ValueError, match="give MODEL=PRICE"):
        parse_prices(["4.1"])

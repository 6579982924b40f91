"""GPU catalogue, site inventory, single-job placement and the rule-facing resources."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from gpubio.gpu import (
    BUILTIN_CATALOGUE,
    BUILTIN_INVENTORY,
    CatalogueError,
    GpuNeed,
    InventoryError,
    PlacementError,
    build_site,
    builtin_site,
    check_declared_needs,
    cpu_resources,
    gpu_pools,
    gpu_resources,
    inventory_from_dict,
    load_catalogue,
    load_inventory,
    place_gpu_job,
    planned_job_problems,
)

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = REPO / "profiles" / "slurm-gpu" / "partitions.yaml"
CAT = BUILTIN_CATALOGUE


@pytest.fixture
def site_inv():
    return load_inventory(PARTITIONS)


def write_partitions(path: Path, drop: tuple[str, ...] = ()) -> Path:
    """The shipped partitions file minus some partitions, as a site admin would edit it."""
    data = yaml.safe_load(PARTITIONS.read_text())
    for name in drop:
        del data["partitions"][name]
        data.get("gpu_models", {}).pop(name, None)
    path.write_text(yaml.safe_dump(data))
    return path


def evaluate(resource, attempt=1, size_mb=0.0, rulename="demo", threads=1):
    """Evaluate a resource the way Snakemake 9 does (parameters passed by name)."""
    from snakemake.resources import Resource

    value = Resource("r", resource).evaluate(
        {},  # wildcards
        input=SimpleNamespace(size_mb=size_mb),
        attempt=attempt,
        threads=threads,
        rulename=rulename,
    )
    return value.value


# --------------------------------------------------------------------------- catalogue


def test_builtin_catalogue_figures():
    assert {m.name for m in CAT.values()} >= {
        "T4",
        "L4",
        "A10",
        "L40S",
        "A100-40",
        "A100-80",
        "H100",
        "H200",
    }
    t4, h200 = CAT["t4"], CAT["H200"]
    assert (t4.vram_gb, t4.compute_capability, t4.speed, t4.cost) == (16, 7.5, 1.0, 1.0)
    assert (h200.vram_gb, h200.compute_capability) == (141, 9.0)
    assert (CAT["a100-40"].vram_gb, CAT["A100-80"].vram_gb) == (40, 80)
    assert CAT["l4"].compute_capability == 8.9 and CAT["a10"].compute_capability == 8.6
    speeds = [CAT[n].speed for n in ("t4", "l4", "a10", "l40s", "a100-40", "h100", "h200")]
    assert speeds == sorted(speeds) and speeds[-2] == 7.0
    assert 4 <= CAT["a100-80"].cost <= 5 and 9 <= CAT["h100"].cost <= 10


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("T4", "T4"),
        ("t4", "T4"),
        ("a100", "A100-80"),  # bare family name: its largest member
        ("A100", "A100-80"),
        ("a100-40", "A100-40"),
        ("a100_40g", "A100-40"),
        ("A100_40GB", "A100-40"),
        ("nvidia-a100-80", "A100-80"),
        ("h100", "H100"),
        ("H100_80gb", "H100"),
        ("l40s", "L40S"),
        ("a10", "A10"),
    ],
)
def test_gres_type_resolves_to_model(name, model):
    assert CAT.resolve(name).name == model


def test_unknown_gres_type_names_it_and_says_what_to_do():
    with pytest.raises(CatalogueError, match=r"'mi300x'.*config\['gpu'\]\['catalogue'\]"):
        CAT.resolve("mi300x")
    with pytest.raises(CatalogueError, match="'a100-60'"):
        CAT.resolve("a100-60")  # the family exists, the size does not


def test_catalogue_overrides_extend_and_override():
    cat = load_catalogue(
        {
            "rtx4090": {
                "vram_gb": 24,
                "compute_capability": 8.9,
                "speed": 3.2,
                "cost": 1.2,
            },
            "T4": {"cost": 0.5},
        }
    )
    assert cat.resolve("RTX4090").vram_gb == 24 and cat["rtx4090"].speed == 3.2
    assert cat["t4"].cost == 0.5 and cat["t4"].vram_gb == 16  # partial override
    assert BUILTIN_CATALOGUE["t4"].cost == 1.0  # the built-in one is untouched
    assert load_catalogue(None)["h100"] == CAT["h100"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"vram_gb": 24},
            r"\['rtx4090'\]: new GPU model is missing compute_capability, speed, cost",
        ),
        (
            {"vram_gb": "lots", "compute_capability": 8.9, "speed": 3, "cost": 1},
            r"\['rtx4090'\]\['vram_gb'\] must be a number",
        ),
        (
            {"vram_gb": -1, "compute_capability": 8.9, "speed": 3, "cost": 1},
            r"\['rtx4090'\]\['vram_gb'\] must be a positive number",
        ),
        ({"vram": 24}, r"\['rtx4090'\]: unknown field\(s\) vram"),
        (24, r"\['rtx4090'\] must be a mapping"),
    ],
)
def test_bad_catalogue_entry_names_the_key(entry, message):
    with pytest.raises(CatalogueError, match=message):
        load_catalogue({"rtx4090": entry})


# --------------------------------------------------------------------------- inventory


def test_example_inventory(site_inv):
    assert site_inv.names == ("gpu-t4", "gpu-a100", "gpu-h100", "cpu")
    assert [p.max_gpu for p in site_inv.partitions] == [8, 4, 2, 0]
    assert site_inv["gpu-a100"].gpu_types == ("a100",)
    assert site_inv["gpu-t4"].max_runtime == 2 * 24 * 60
    pools = {p.partition.name: p.model.name for p in gpu_pools(site_inv, CAT)}
    # the file states that this site's bare "a100" is the 40 GB card
    assert pools == {"gpu-t4": "T4", "gpu-a100": "A100-40", "gpu-h100": "H100"}


def test_example_inventory_loads_with_the_slurm_plugins_reader(site_inv):
    partitions = pytest.importorskip("snakemake_executor_plugin_slurm.partitions")
    theirs = partitions.read_partition_file(PARTITIONS)
    assert [p.name for p in theirs] == list(site_inv.names)
    assert {p.name: (p.limits.max_gpu, p.limits.available_gpu_models) for p in theirs} == {
        "gpu-t4": (8, ["t4"]),
        "gpu-a100": (4, ["a100"]),
        "gpu-h100": (2, ["h100"]),
        "cpu": (0, None),
    }
    assert {p.name: p.limits.max_runtime for p in theirs} == {p.name: p.max_runtime for p in site_inv.partitions}


def test_plugin_accepts_every_placement_we_make(site_inv):
    """The plugin's own scoring admits the partition and GRES type gpubio picked."""
    partitions = pytest.importorskip("snakemake_executor_plugin_slurm.partitions")
    theirs = {p.name: p for p in partitions.read_partition_file(PARTITIONS)}
    res = gpu_resources(builtin_site(), vram_gb=8)
    for attempt in (1, 2, 3):
        job = SimpleNamespace(
            name="demo",
            threads=1,
            resources={
                "gpu": res["gpu"],
                "gpu_model": evaluate(res["gpu_model"], attempt),
                "mem_mb": res["mem_mb"],
                "runtime": res["runtime"],
            },
        )
        accepted = {name for name, p in theirs.items() if p.score_job_fit(job) is not None}
        assert accepted == {evaluate(res["slurm_partition"], attempt)}


def test_inventory_errors_name_file_partition_and_key(tmp_path):
    bad = tmp_path / "partitions.yaml"
    bad.write_text("partitions:\n  gpu-x:\n    max_gpu: 2\n    available_gpu_models: [t4]\n    gpus_total: 16\n")
    with pytest.raises(
        InventoryError,
        match=r"partitions.yaml: partitions\['gpu-x'\]: unknown key\(s\) \['gpus_total'\]",
    ):
        load_inventory(bad)
    # ...and the plugin would reject the same file
    partitions = pytest.importorskip("snakemake_executor_plugin_slurm.partitions")
    with pytest.raises(TypeError, match="gpus_total"):
        partitions.read_partition_file(bad)

    with pytest.raises(InventoryError, match="not found: .*nope.yaml"):
        load_inventory(tmp_path / "nope.yaml")
    with pytest.raises(
        InventoryError,
        match=r"\['gpu-x'\]: max_gpu is 2 but available_gpu_models is empty",
    ):
        inventory_from_dict({"partitions": {"gpu-x": {"max_gpu": 2}}})
    with pytest.raises(InventoryError, match=r"gpu_models names partition\(s\) \['gpu-y'\]"):
        inventory_from_dict({"partitions": {"cpu": {}}, "gpu_models": {"gpu-y": "t4"}})
    with pytest.raises(InventoryError, match=r"GRES type\(s\) \['v100'\] are not in"):
        inventory_from_dict(
            {
                "partitions": {"g": {"max_gpu": 1, "available_gpu_models": ["t4"]}},
                "gpu_models": {"g": {"v100": "t4"}},
            }
        )


@pytest.mark.parametrize(
    ("value", "minutes"),
    [
        (90, 90),
        ("90", 90),
        ("12h30m", 750),
        ("2d", 2880),
        ("1-12:00:00", 2160),
        ("01:30:00", 90),
    ],
)
def test_max_runtime_forms(value, minutes):
    inv = inventory_from_dict({"partitions": {"cpu": {"max_runtime": value}}})
    assert inv["cpu"].max_runtime == minutes


def test_ambiguous_runtime_is_refused():
    with pytest.raises(InventoryError, match=r"\['max_runtime'\]: cannot read duration '60:30'"):
        inventory_from_dict({"partitions": {"cpu": {"max_runtime": "60:30"}}})


def test_unknown_gres_type_fails_when_the_site_is_configured(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("partitions:\n  gpu-mi:\n    max_gpu: 8\n    available_gpu_models: [mi300x]\n")
    with pytest.raises(CatalogueError, match=r"partition 'gpu-mi': GPU type 'mi300x'"):
        site = build_site(partitions_file=path)
    # declaring the model in the catalogue fixes it
    site = build_site(
        partitions_file=path,
        catalogue_overrides={
            "mi300x": {
                "vram_gb": 192,
                "compute_capability": 9.4,
                "speed": 7.5,
                "cost": 8,
            }
        },
    )
    assert place_gpu_job(GpuNeed(vram_gb=150), site.inventory, site.catalogue).gpu_model == "mi300x"


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize(
    ("need", "partition", "model"),
    [
        (GpuNeed(vram_gb=8), "gpu-t4", "T4"),
        (GpuNeed(vram_gb=8, policy="fastest"), "gpu-h100", "H100"),
        # cost per unit of work ties T4 and A100-40 (1.0); the faster one wins
        (GpuNeed(vram_gb=8, policy="balanced"), "gpu-a100", "A100-40"),
        (GpuNeed(vram_gb=30), "gpu-a100", "A100-40"),
        (GpuNeed(vram_gb=60), "gpu-h100", "H100"),
        (GpuNeed(vram_gb=8, min_compute_capability=8.0), "gpu-a100", "A100-40"),
        (GpuNeed(vram_gb=8, min_compute_capability=8.5), "gpu-h100", "H100"),
        (GpuNeed(gpus=4, vram_gb=30), "gpu-a100", "A100-40"),
        (GpuNeed(gpus=8, vram_gb=8, policy="fastest"), "gpu-t4", "T4"),  # only t4 has 8
        (
            GpuNeed(vram_gb=8, mem_mb=600_000),
            "gpu-h100",
            "H100",
        ),  # only h100 nodes have the RAM
    ],
)
def test_place_gpu_job_picks(site_inv, need, partition, model):
    placed = place_gpu_job(need, site_inv, CAT)
    assert (placed.partition, placed.model.name, placed.gpus) == (
        partition,
        model,
        need.gpus,
    )
    assert placed.gpu_model in site_inv[partition].gpu_types


def test_cpu_job_goes_to_the_cpu_partition(site_inv):
    placed = place_gpu_job(GpuNeed(gpus=0), site_inv, CAT, attempt=3)
    assert (placed.partition, placed.gpu_model, placed.model) == ("cpu", None, None)


@pytest.mark.parametrize(
    ("attempt", "partition"),
    [(1, "gpu-t4"), (2, "gpu-a100"), (3, "gpu-h100"), (4, "gpu-h100")],
)
def test_escalation_on_retry(site_inv, attempt, partition):
    assert place_gpu_job(GpuNeed(vram_gb=8), site_inv, CAT, attempt).partition == partition


@pytest.mark.parametrize(("attempt", "partition"), [(1, "gpu-t4"), (2, "gpu-a100"), (3, "gpu-a100")])
def test_escalation_without_h100_clamps_at_a100(site_inv, attempt, partition):
    smaller = site_inv.without("gpu-h100")
    assert place_gpu_job(GpuNeed(vram_gb=8), smaller, CAT, attempt).partition == partition


def test_escalation_follows_vram_not_speed():
    # Without the gpu_models line, "a100" is the 80 GB card: same VRAM as the H100, so a
    # retry after out-of-memory stops there (the cheaper of the two 80 GB models).
    inv = inventory_from_dict(yaml.safe_load(PARTITIONS.read_text()) | {"gpu_models": {}})
    got = [place_gpu_job(GpuNeed(vram_gb=8), inv, CAT, a).model.name for a in (1, 2, 3)]
    assert got == ["T4", "A100-80", "A100-80"]
    fastest = [place_gpu_job(GpuNeed(vram_gb=8, policy="fastest"), inv, CAT, a).partition for a in (1, 2)]
    assert fastest == ["gpu-h100", "gpu-h100"]


def test_impossible_need_explains_itself(site_inv):
    with pytest.raises(PlacementError) as err:
        place_gpu_job(GpuNeed(vram_gb=200, rule="basecall"), site_inv, CAT)
    text = str(err.value)
    assert "rule 'basecall'" in text and ">= 200 GB VRAM" in text
    assert "Largest GPU available: H100 (80 GB, cc 9.0) in partition 'gpu-h100'" in text
    assert str(PARTITIONS) in text and "To fix" in text

    with pytest.raises(PlacementError, match="more than 2 GPUs per node \\('gpu-h100'\\)"):
        place_gpu_job(GpuNeed(gpus=3, vram_gb=60), site_inv, CAT)
    with pytest.raises(PlacementError, match="highest compute capability among them is 9"):
        place_gpu_job(GpuNeed(min_compute_capability=10.0), site_inv, CAT)
    with pytest.raises(PlacementError, match="exceed the limits of gpu-h100"):
        place_gpu_job(GpuNeed(vram_gb=60, runtime=2000), site_inv, CAT)  # h100: 1 day max
    with pytest.raises(PlacementError, match="no GPU partitions.*cpu_only=True"):
        place_gpu_job(GpuNeed(), site_inv.without("gpu-t4", "gpu-a100", "gpu-h100"), CAT)


def test_size_dependent_need(site_inv):
    need = GpuNeed(vram_gb=lambda size_mb: 2 + size_mb / 100)
    assert place_gpu_job(need, site_inv, CAT, input_size_mb=1000).partition == "gpu-t4"  # 12 GB
    assert place_gpu_job(need, site_inv, CAT, input_size_mb=3000).partition == "gpu-a100"  # 32 GB
    with pytest.raises(ValueError, match="pass input_size_mb"):
        place_gpu_job(need, site_inv, CAT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "fast"}, "policy must be one of"),
        ({"gpus": -1}, "gpus must be a whole number"),
        ({"vram_gb": "16G"}, "vram_gb must be a number"),
    ],
)
def test_bad_need(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GpuNeed(**kwargs)


# --------------------------------------------------------------------------- gpu_resources


def test_gpu_resources_standard_keys():
    res = gpu_resources(builtin_site(), vram_gb=7.2)
    assert set(res) == {
        "gpu",
        "gpu_model",
        "slurm_partition",
        "mem_mb",
        "runtime",
        "vram_gb",
        "gpu_usage",  # what the plan gave the job, for its usage record
    }
    # no cpus_per_task: the SLURM plugin then asks for the job's threads (tests/test_job_cpus.py)
    assert (res["gpu"], res["mem_mb"], res["runtime"], res["vram_gb"]) == (1, 16000, 60, 8)
    assert gpu_resources(builtin_site(), gpus=2, cpus=12, mem_mb=64000, runtime=240)["cpus_per_task"] == 12


def test_gpu_resources_default_site_is_built_in():
    # the built-in inventory (= the shipped example partitions); nothing says why a retry
    # failed, so it stays on the same GPU class
    site = builtin_site()
    assert site.inventory is BUILTIN_INVENTORY
    res = gpu_resources(site, vram_gb=8)
    assert [evaluate(res["slurm_partition"], a) for a in (1, 2, 3)] == ["gpu-t4"] * 3


def oom_site(tmp_path, log_text: str, partitions=PARTITIONS):
    """A site whose jobs' failed attempts left ``log_text`` in their log."""
    from gpubio.gpu.retry import JobFiles

    log = tmp_path / "job.log"
    log.write_text(log_text)
    return build_site(partitions_file=partitions, job_files=lambda rule, wc: JobFiles((str(log),)), workdir=tmp_path)


def test_gpu_resources_escalate_after_gpu_out_of_memory_and_follow_the_inventory(tmp_path):
    site = oom_site(tmp_path, "RuntimeError: CUDA error: out of memory\n")
    res = gpu_resources(site, vram_gb=8)  # the rule: declared once, never edited below
    place = [(evaluate(res["slurm_partition"], a), evaluate(res["gpu_model"], a)) for a in (1, 2, 3, 4)]
    assert place == [
        ("gpu-t4", "t4"),
        ("gpu-a100", "a100"),
        ("gpu-h100", "h100"),
        ("gpu-h100", "h100"),
    ]

    # the same rule on a site without H100s (a changed partitions file)
    site = oom_site(tmp_path, "cudaErrorMemoryAllocation\n", write_partitions(tmp_path / "p.yaml", drop=("gpu-h100",)))
    res = gpu_resources(site, vram_gb=8)
    assert [evaluate(res["slurm_partition"], a) for a in (1, 2, 3)] == [
        "gpu-t4",
        "gpu-a100",
        "gpu-a100",
    ]


@pytest.mark.parametrize(
    "log_text",
    [
        "gpubio: segment-cells: image.tif: not a TIFF file\n",  # a bad input found inside the job
        "slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch. Some of your processes may have been "
        "killed by the cgroup out-of-memory handler.\n",  # host memory, not the GPU's
        "",  # a node fault: the job left nothing
    ],
    ids=["bad-input", "host-memory", "nothing"],
)
def test_a_failure_that_is_not_gpu_out_of_memory_retries_on_the_same_gpu_class(tmp_path, log_text):
    site = oom_site(tmp_path, log_text)
    res = gpu_resources(site, vram_gb=8)
    assert [evaluate(res["gpu_model"], a) for a in (1, 2, 3)] == ["t4", "t4", "t4"]
    reasons = (tmp_path / "logs" / "gpu_retries.tsv").read_text()
    assert "attempt 2 stays on the same GPU class" in reasons and "larger GPU" not in reasons


def test_gpu_resources_size_dependent():
    site = build_site(partitions_file=PARTITIONS)
    res = gpu_resources(site, vram_gb=lambda size_mb: size_mb / 100)
    assert evaluate(res["vram_gb"], size_mb=3000) == 30
    assert evaluate(res["gpu_model"], size_mb=3000) == "a100"
    assert evaluate(res["gpu_model"], size_mb=1000) == "t4"
    with pytest.raises(PlacementError, match="rule 'segment': .*>= 500 GB"):
        evaluate(res["gpu_model"], size_mb=50_000, rulename="segment")


def test_size_dependent_resources_read_the_input_files_as_snakemake_does(tmp_path):
    """Sizes by plain stats of Snakemake's InputFiles; an input not made yet (any job's in a
    dry-run) leaves the resource "to be determined" as Snakemake's own input.size_mb does."""
    from snakemake.common.tbdstring import TBDString
    from snakemake.iocontainers import InputFiles
    from snakemake.resources import Resource

    site = build_site(partitions_file=PARTITIONS)
    res = gpu_resources(site, vram_gb=lambda size_mb: size_mb / 100)
    for name, mb in (("a.h5", 1000), ("b.h5", 2000)):
        with open(tmp_path / name, "wb") as fh:
            fh.truncate(mb * 1024 * 1024)  # a sparse file: its size without the disk space

    def evaluate_on(*names):
        files = InputFiles([str(tmp_path / name) for name in names])
        return Resource("r", res["gpu_model"]).evaluate({}, input=files, attempt=1, threads=1, rulename="demo").value

    assert evaluate_on("a.h5") == "t4"  # 10 GB
    assert evaluate_on("a.h5", "b.h5") == "a100"  # 30 GB
    assert isinstance(evaluate_on("a.h5", "not-made-yet.h5"), TBDString)


def test_impossible_static_need_fails_once_the_rules_are_declared():
    site = build_site(partitions_file=PARTITIONS)
    gpu_resources(site, "huge", vram_gb=300)
    with pytest.raises(PlacementError, match="rule 'huge': .*Largest GPU available: H100"):
        check_declared_needs(site)


def test_declared_needs_are_checked_against_their_own_site(tmp_path):
    site = builtin_site()
    gpu_resources(site, vram_gb=8)
    gpu_resources(site, "big", vram_gb=60)  # fits the built-in default (H100)...
    assert [p.partition for p in check_declared_needs(site)] == ["gpu-t4", "gpu-h100"]
    smaller = build_site(partitions_file=write_partitions(tmp_path / "p.yaml", drop=("gpu-h100",)))
    gpu_resources(smaller, "big", vram_gb=60)
    with pytest.raises(PlacementError, match="rule 'big'.*Largest GPU available: A100-40"):
        check_declared_needs(smaller)  # ...but not a site without H100s
    assert len(check_declared_needs(site)) == 2  # the first site is unchanged


def test_cpu_partition_is_fixed_where_threads_cannot_move_it(tmp_path):
    site = build_site(partitions_file=PARTITIONS)
    # the shipped cpu partition allows the most CPUs per task (128): every CPU job goes there,
    # a plain string Snakemake need not evaluate per job
    assert cpu_resources(site)["slurm_partition"] == "cpu"
    assert cpu_resources(site, mem_mb=400_000)["slurm_partition"] == "cpu"
    # two CPU partitions, the first one smaller: each job's threads decide between them
    data = yaml.safe_load(PARTITIONS.read_text())
    data["partitions"] = {"short": {"max_gpu": 0, "max_cpus_per_task": 8}, **data["partitions"]}
    (tmp_path / "two-cpu.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    site = build_site(partitions_file=tmp_path / "two-cpu.yaml")
    res = cpu_resources(site)
    assert callable(res["slurm_partition"])
    assert [evaluate(res["slurm_partition"], threads=t) for t in (1, 8, 9, 128)] == ["short", "short", "cpu", "cpu"]
    # a CPU job with its own CPU count is placed per job as before
    assert callable(cpu_resources(site, cpus=4)["slurm_partition"])


def job(rule: str, threads: int = 1) -> SimpleNamespace:
    """What planned_job_problems reads of a Snakemake job."""
    return SimpleNamespace(rule=SimpleNamespace(name=rule), threads=threads, input=[])


def test_cpu_jobs_never_go_to_a_gpu_partition_when_the_cpu_partition_is_smaller(tmp_path, capsys):
    """The CPU nodes allow 8 CPUs per task, the GPU nodes more: a 9-thread CPU job is refused
    before the run's first job (one line naming the rule, the partition and the fix), never
    sent to a GPU partition."""
    data = yaml.safe_load(PARTITIONS.read_text())
    data["partitions"]["cpu"].update(max_cpus_per_task=8, max_mem_mb=64000)
    (tmp_path / "small-cpu.yaml").write_text(yaml.safe_dump(data))
    site = build_site(partitions_file=tmp_path / "small-cpu.yaml")
    res = gpu_resources(site, gpus=0, mem_mb=2000, rule="demo")  # what cpu_resources declares, named
    assert res["slurm_partition"] == "cpu"  # no GPU partition, whatever the threads
    # its own CPU count, evaluated per job (a dry-run): the widest CPU partition, said once
    per_job = cpu_resources(site, cpus=16)["slurm_partition"]
    assert [evaluate(per_job, rulename="align", threads=16) for _ in range(2)] == ["cpu", "cpu"]
    [said] = capsys.readouterr().err.splitlines()
    assert said.startswith("gpubio: rule 'align': no partition without GPUs in ") and "stops here" in said

    problems = planned_job_problems([job("demo", 9), job("demo", 12), job("demo", 8), job("other", 64)], site)
    [line] = [p for p in problems if "'demo'" in p]
    assert line.startswith(f"rule 'demo': no partition without GPUs in {tmp_path / 'small-cpu.yaml'} fits the CPU job")
    assert "'cpu' allows max_cpus_per_task 8, max_mem_mb 64000" in line and "--set-threads" in line
    assert line.endswith("(2 jobs of this run)")
    assert planned_job_problems([job("demo", 8)], site) == []
    with pytest.raises(PlacementError, match="CPU jobs are not sent to GPU partitions"):
        place_gpu_job(GpuNeed(gpus=0, mem_mb=100_000), site.inventory, CAT)


def test_a_site_without_cpu_partitions_puts_cpu_jobs_on_its_cheapest_gpus_and_says_so(tmp_path):
    """The shape that sent every CPU job to gpu-a100 (the partition with the fewest GPUs):
    T4 and A100 partitions, no CPU one. CPU jobs take the cheapest GPUs' partition, and the
    site says which and why."""
    (tmp_path / "gpus-only.yaml").write_text(
        yaml.safe_dump(
            {
                "partitions": {
                    "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100"], "max_cpus_per_task": 64},
                    "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"], "max_cpus_per_task": 16},
                }
            },
            sort_keys=False,
        )
    )
    site = build_site(partitions_file=tmp_path / "gpus-only.yaml")
    per_job = cpu_resources(site)["slurm_partition"]
    assert [evaluate(per_job, threads=t) for t in (1, 16, 17)] == ["gpu-t4", "gpu-t4", "gpu-a100"]
    note = site.cpu_jobs_note()
    assert note.startswith(f"{tmp_path / 'gpus-only.yaml'} has no partition without GPUs (max_gpu: 0), so CPU jobs")
    assert "'gpu-t4', the partition with the cheapest GPUs" in note
    assert build_site(partitions_file=PARTITIONS).cpu_jobs_note() is None


def test_a_cpu_partition_that_lists_gpu_models_is_refused(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text("partitions:\n  bigmem:\n    max_gpu: 0\n    available_gpu_models: [a100]\n")
    with pytest.raises(InventoryError) as raised:
        load_inventory(path)
    assert str(raised.value) == (
        f"{path}: partitions['bigmem']: max_gpu is 0 but available_gpu_models lists ['a100']; set max_gpu "
        "to its GPUs per node, or remove available_gpu_models if the partition has no GPUs"
    )


def test_cpu_only_site():
    site = build_site(partitions_file=PARTITIONS, cpu_only=True)
    res = gpu_resources(site, vram_gb=8)
    assert res["gpu"] == 0 and "gpu_model" not in res
    assert evaluate(res["slurm_partition"]) == "cpu"


# --------------------------------------------------------------------------- snakemake


SNAKEFILE = """
from gpubio.gpu import build_site, gpu_resources
from gpubio.gpu.retry import snakemake_job_files
SITE = build_site(partitions_file=config["partitions"], job_files=snakemake_job_files(workflow))

rule all:
    input: "retried.txt", "sized.txt", "failing.txt"

rule retried:
    output: "retried.txt"
    log: "logs/retried.log"
    resources: **gpu_resources(SITE, vram_gb=8)
    # fails twice out of GPU memory (as PyTorch says it), then succeeds
    shell:
        "echo {resources.slurm_partition} >> attempts.txt; "
        "if [ $(wc -l < attempts.txt) -lt 3 ]; then"
        " echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 4.00 GiB' > {log}; exit 1; fi; "
        "touch {output}"

rule failing:
    output: "failing.txt"
    log: "logs/failing.log"
    resources: **gpu_resources(SITE, vram_gb=8)
    # fails twice for another reason, then succeeds
    shell:
        "echo {resources.slurm_partition} >> failing-attempts.txt; "
        "if [ $(wc -l < failing-attempts.txt) -lt 3 ]; then"
        " echo 'gpubio: segment-cells: image.tif: not a TIFF file' > {log}; exit 1; fi; "
        "touch {output}"

rule sized:
    input: "input.bin"
    output: "sized.txt"
    resources: **gpu_resources(SITE, vram_gb=lambda size_mb: size_mb * 10)
    shell: "echo {resources.gpu_model} {resources.vram_gb} > {output}"
"""


def snakemake(workdir: Path, partitions: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=f"{REPO / 'workflow'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "1",
            "--config",
            f"partitions={partitions}",
            *args,
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    (tmp_path / "input.bin").write_bytes(b"\0" * (2 * 1024 * 1024))  # 2 MB -> 20 GB VRAM
    return tmp_path


def test_dry_run_shows_where_each_job_goes(workdir):
    run = snakemake(workdir, PARTITIONS, "-n")
    assert run.returncode == 0, run.stderr
    out = run.stdout + run.stderr
    assert "gpu=1, slurm_partition=gpu-t4" in out and "gpu_model=t4" in out
    assert "slurm_partition=gpu-a100" in out and "vram_gb=20" in out and "gpu_model=a100" in out


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        ((), ["gpu-t4", "gpu-a100", "gpu-h100"]),
        (("gpu-h100",), ["gpu-t4", "gpu-a100", "gpu-a100"]),
    ],
)
def test_snakemake_retries_escalate_only_after_gpu_out_of_memory(workdir, drop, expected):
    partitions = write_partitions(workdir / "partitions.yaml", drop=drop)
    run = snakemake(workdir, partitions, "--retries", "3")
    assert run.returncode == 0, run.stderr
    assert (workdir / "attempts.txt").read_text().split() == expected
    assert (workdir / "failing-attempts.txt").read_text().split() == ["gpu-t4"] * 3
    assert (workdir / "sized.txt").read_text().split() == ["a100", "20"]
    ledger = pd.read_csv(workdir / "logs" / "gpu_retries.tsv", sep="\t").set_index(["rule", "attempt"])
    assert list(ledger.loc["retried", "after"]) == ["oom", "oom"] and list(ledger.loc["retried", "larger"]) == [1, 2]
    assert list(ledger.loc["failing", "after"]) == ["other", "other"] and set(ledger.loc["failing", "larger"]) == {0}
    assert "logs/retried.log: torch.OutOfMemoryError: CUDA out of memory" in ledger.loc[("retried", 2), "reason"]
    out = run.stdout + run.stderr
    assert "gpubio: rule failing: attempt 1 failed, not for GPU memory" in out


def test_snakemake_rejects_an_impossible_need_before_running(workdir):
    (workdir / "Snakefile").write_text(SNAKEFILE.replace("vram_gb=8)", "vram_gb=300)"))
    run = snakemake(workdir, PARTITIONS, "-n")
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert "PlacementError" in out and "Largest GPU available: H100" in out
    assert not (workdir / "attempts.txt").exists()


# --------------------------------------------------------------------------- prices, objective, spread
# public-cloud-like prices per GPU-hour: the H100 dear enough that cost x time prefers the A100
PRICES = {"T4": 0.53, "a100-40": 4.10, "H100": 15.0}


@pytest.mark.parametrize(
    ("objective", "model"),
    [("cheapest", "T4"), ("fastest", "H100"), ("balanced", "A100-40")],
)
def test_the_objective_chooses_among_fitting_gpus_by_expected_cost_and_time(site_inv, objective, model):
    from gpubio.gpu.placement import Economics

    site = build_site(partitions_file=PARTITIONS, prices=PRICES, objective=objective)
    placed = place_gpu_job(GpuNeed(vram_gb=8, policy="fastest"), site_inv, CAT, economics=site.economics)
    assert placed.model.name == model  # the objective, not the rule's policy
    assert placed.why.startswith(f"gpu.objective {objective}: ")
    # per job: T4 0.53 / 1, A100-40 4.10 / 4 = 1.03, H100 15 / 7 = 2.14 per T4-hour of work
    if objective == "cheapest":
        assert "T4 0.53 / A100-40 1.02 / H100 2.14" in placed.why
    # a need only the H100 holds goes there whatever the objective
    big = place_gpu_job(GpuNeed(vram_gb=60), site_inv, CAT, economics=Economics(site.economics.prices, objective))
    assert big.model.name == "H100"


def test_without_an_objective_each_rule_keeps_its_policy(site_inv):
    site = build_site(partitions_file=PARTITIONS, prices=PRICES)
    assert place_gpu_job(GpuNeed(vram_gb=8), site_inv, CAT, economics=site.economics).model.name == "T4"
    fastest = place_gpu_job(GpuNeed(vram_gb=8, policy="fastest"), site_inv, CAT, economics=site.economics)
    assert fastest.model.name == "H100" and fastest.why.startswith("rule policy fastest: speed")


def test_prices_must_cover_every_gpu_model_of_the_site_and_name_known_models():
    with pytest.raises(CatalogueError) as missing:
        build_site(partitions_file=PARTITIONS, prices={"T4": 0.53})
    text = str(missing.value)
    assert text.startswith("gpu.prices has no price for A100-40 (partition gpu-a100), H100 (partition gpu-h100)")
    assert str(PARTITIONS) in text and "leave gpu.prices empty" in text
    with pytest.raises(CatalogueError, match=r"gpu.prices\['Z9'\]: GPU type 'Z9' is not in the GPU catalogue"):
        build_site(partitions_file=PARTITIONS, prices={**PRICES, "Z9": 1.0})
    with pytest.raises(CatalogueError, match=r"gpu.prices\['T4'\] must be a price per GPU-hour above 0, got 0"):
        build_site(partitions_file=PARTITIONS, prices={**PRICES, "T4": 0})


def spread_site(tmp_path, partitions: dict, objective: str | None = None):
    path = tmp_path / "partitions.yaml"
    path.write_text(yaml.safe_dump({"partitions": partitions}, sort_keys=False))
    site = build_site(partitions_file=path, spread=True, objective=objective)
    return site


LIMITS = {"max_cpus_per_task": 8, "max_mem_mb": 64000, "max_runtime": "1d"}


def test_spread_sends_a_job_to_every_partition_whose_gpus_all_fit(tmp_path):
    site = spread_site(
        tmp_path,
        {
            "gpu-t4": {"max_gpu": 8, "available_gpu_models": ["t4"], **LIMITS},
            "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100_40g"], **LIMITS},
            "gpu-h100": {"max_gpu": 2, "available_gpu_models": ["h100"], **LIMITS},
            # T4 and A100-80 nodes in one partition: an untyped request could get a T4 there
            "gpu-mixed": {"max_gpu": 4, "available_gpu_models": ["t4", "a100_80g"], **LIMITS},
        },
    )
    placed = site.place(GpuNeed(vram_gb=30, rule="segment"))
    # cheapest first; the mixed partition's T4 would not hold 30 GB, so it is left out
    assert placed.partition == "gpu-a100,gpu-h100"
    assert placed.gpu_model == ""  # different GPU types: an untyped request (--gpus=1)
    assert placed.model.name == "A100-40" and "spread over gpu-a100, gpu-h100 (gpu.spread)" in placed.why
    small = site.place(GpuNeed(vram_gb=8, rule="basecall"))
    assert small.partition == "gpu-t4,gpu-mixed,gpu-a100,gpu-h100" and small.gpu_model == ""
    # after GPU out-of-memory only the larger GPUs stay in the set
    assert site.place(GpuNeed(vram_gb=8, rule="basecall"), attempt=2, larger=1).partition == "gpu-a100,gpu-h100"
    # the cheapest fit sits with GPUs too small for it: a typed request there, not spread
    large = site.place(GpuNeed(vram_gb=60))
    assert (large.partition, large.gpu_model, large.model.name) == ("gpu-mixed", "a100_80g", "A100-80")


def test_spread_over_partitions_of_one_gpu_type_keeps_the_typed_request(tmp_path):
    site = spread_site(
        tmp_path,
        {
            "a100-short": {"max_gpu": 4, "available_gpu_models": ["a100"], **LIMITS, "max_runtime": "4h"},
            "a100-long": {"max_gpu": 4, "available_gpu_models": ["a100"], **LIMITS},
        },
    )
    placed = site.place(GpuNeed(vram_gb=30, runtime=120))
    assert (placed.partition, placed.gpu_model) == ("a100-short,a100-long", "a100")
    # a runtime only one partition allows: that one alone
    assert site.place(GpuNeed(vram_gb=30, runtime=600)).partition == "a100-long"


def test_spread_resources_are_what_the_slurm_plugin_submits(tmp_path):
    """The plugin passes slurm_partition to `sbatch -p` as it is and asks for `--gpus=N`
    without a type when gpu_model is empty (snakemake-executor-plugin-slurm utils.set_gres_string)."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    site = spread_site(
        tmp_path,
        {
            "gpu-a100": {"max_gpu": 4, "available_gpu_models": ["a100_40g"], **LIMITS},
            "gpu-h100": {"max_gpu": 2, "available_gpu_models": ["h100"], **LIMITS},
        },
    )
    res = gpu_resources(site, vram_gb=30, runtime=60)
    job = SimpleNamespace(
        resources={"gpu": res["gpu"], "gpu_model": evaluate(res["gpu_model"])}, name="demo", threads=1
    )
    assert evaluate(res["slurm_partition"]) == "gpu-a100,gpu-h100"
    assert set_gres_string(job).split() == ["--gpus=1"]

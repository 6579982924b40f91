"""The cluster profile as the README tells users to run it: every command of its block dry-runs here."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pandas as pd

from conftest import BIN, REPO, run_snakemake
from gpubio.gpu.plan import parse_dry_run, plan_arguments

CONDA_DOUBLE = REPO / "tests" / "doubles" / "conda"


def readme_cluster_commands() -> list[list[str]]:
    """The snakemake lines of the README block marked `cluster-commands`, as argument vectors."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- cluster-commands:.*?-->\n```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its cluster-commands block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines() if line.startswith("snakemake ")]


def dry_run(workdir, argv: list[str], path: str) -> subprocess.CompletedProcess:
    args = [str(REPO / a) if a.startswith("profiles/") else a for a in argv[1:]]
    if "-n" not in args:
        args.append("-n")
    env = {**os.environ, "PATH": path}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=600)


def test_readme_cluster_commands_dry_run_without_conda(workdir):
    commands = readme_cluster_commands()
    sdm = [c[c.index("--sdm") + 1 :] if "--sdm" in c else [] for c in commands]
    assert ["-n", "--profile", "profiles/slurm-gpu"] == commands[0][1:]  # reading the plan comes first
    assert ["conda"] in sdm and ["conda", "apptainer"] in sdm and [] in sdm[1:]

    no_conda = os.pathsep.join(
        p for p in os.environ["PATH"].split(os.pathsep) if p and not os.path.exists(os.path.join(p, "conda"))
    )
    plain = dry_run(workdir, commands[0], no_conda)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    planned = {(j.rule, tuple(sorted(j.wildcards.items()))): j.resources for j in parse_dry_run(plain.stdout)}
    assert len(planned) > 20
    assert all(res.get("slurm_partition") for (rule, _), res in planned.items() if rule != "all")
    # the short CPU steps of each genomics sample are one cluster job; a local run has no groups
    groups = re.findall(r"Group job (\w+)", plain.stdout + plain.stderr)
    genomics_samples = pd.read_csv(workdir / "config" / "genomics.tsv", sep="\t")["sample"]
    assert groups == ["genomics_sample"] * len(genomics_samples), plain.stdout
    local = run_snakemake(workdir, "-n", "--cores", "2")
    assert "Group job" not in local.stdout + local.stderr and {j.rule for j in parse_dry_run(local.stdout)} >= {
        "read_qc",
        "sort_bam",
    }

    # --sdm conda asks conda about itself even in a dry-run: a double answers that and
    # refuses everything else, so no environment is built
    with_double = os.pathsep.join([str(CONDA_DOUBLE), no_conda])
    for argv in commands[1:]:
        proc = dry_run(workdir, argv, with_double)
        assert proc.returncode == 0, f"{shlex.join(argv)}:\n{proc.stdout}\n{proc.stderr}"
        jobs = {(j.rule, tuple(sorted(j.wildcards.items()))): j.resources for j in parse_dry_run(proc.stdout)}
        assert jobs == planned, shlex.join(argv)  # the deployment method moves no job


def test_plan_arguments_keep_what_decides_placement():
    argv = [
        "results/x.tsv",
        "-n",
        "--profile",
        "profiles/slurm-gpu",
        "--cores",
        "4",
        "--set-resources",
        "a:runtime=5",
        "b:mem_mb=3",
        "--config=gpu={require: true}",
        "-p",
        "--configfile",
        "c.yaml",
        "--retries",
        "3",
        "--default-resources",
        "runtime=-1",
        "--sdm",
        "conda",
    ]
    assert plan_arguments(argv) == [
        "--profile",
        "profiles/slurm-gpu",
        "--set-resources",
        "a:runtime=5",
        "b:mem_mb=3",
        "--config=gpu={require: true}",
        "--configfile",
        "c.yaml",
        "--default-resources",
        "runtime=-1",
    ]
    assert plan_arguments(["-n", "-p", "all"]) == []
    # one-value options end there: what follows is a target
    assert plan_arguments(["-s", "S", "--directory", "d", "all", "--profile", "p", "results/a"]) == [
        "-s",
        "S",
        "--directory",
        "d",
        "--profile",
        "p",
    ]


def test_gpu_plan_job_plans_with_the_runs_own_overrides(workdir):
    overrides = ["--set-resources", "integrate_cells:runtime=600", "integrate_cells:slurm_partition=gpu-h100"]
    run_snakemake(
        workdir, "results/gpu_plan.tsv", "--profile", str(REPO / "profiles" / "local"), "--cores", "1", *overrides
    )
    plan = pd.read_csv(workdir / "results/gpu_plan.tsv", sep="\t", keep_default_na=False).set_index("rule")
    integrate = plan.loc["integrate_cells"]
    assert (integrate["partition"], integrate["reserved_min"], integrate["gpus"]) == ("gpu-h100", 600, 1)
    assert integrate["reserved_gpu_hours"] == 10.0
    assert plan.loc["train_cellpose", "reserved_min"] != 600  # only the overridden rule changed
    assert (plan.loc["read_qc", "partition"] == "cpu").all()

    # the same options again: nothing to do, even as a dry-run; other overrides: a new plan
    same = run_snakemake(
        workdir, "-n", "results/gpu_plan.tsv", "--profile", str(REPO / "profiles" / "local"), *overrides
    )
    assert "Nothing to be done" in same.stdout + same.stderr
    changed = run_snakemake(workdir, "-n", "results/gpu_plan.tsv", "--set-resources", "integrate_cells:runtime=30")
    assert "params have changed" in changed.stdout + changed.stderr and "gpu_plan" in changed.stdout


LINK_PROFILES = REPO / "scripts" / "link-profiles"


def test_link_profiles_links_each_profile_and_keeps_the_users_own(tmp_path):
    config_dir = tmp_path / "xdg" / "snakemake"
    (config_dir / "mine").mkdir(parents=True)
    (config_dir / "local").symlink_to(tmp_path)  # a stale link from an older clone
    proc = subprocess.run(
        [sys.executable, str(LINK_PROFILES), "--config-dir", str(config_dir)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("local", "slurm-gpu"):
        assert (config_dir / name).resolve() == REPO / "profiles" / name
    assert (config_dir / "mine").is_dir() and not (config_dir / "mine").is_symlink()

    (config_dir / "slurm-gpu").unlink()
    (config_dir / "slurm-gpu").mkdir()  # the user's own profile of that name
    proc = subprocess.run(
        [sys.executable, str(LINK_PROFILES), "--config-dir", str(config_dir)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "slurm-gpu" in proc.stderr and "not links" in proc.stderr
    assert (config_dir / "slurm-gpu").is_dir() and not (config_dir / "slurm-gpu").is_symlink()


def test_link_profiles_help():
    proc = subprocess.run([sys.executable, str(LINK_PROFILES), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--config-dir" in proc.stdout


def test_plan_whose_dry_run_fails_says_so_first_in_one_line(workdir):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpubio",
            "plan",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--",
            "--config",
            "bogus_key=1",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "gpubio plan: the dry-run failed:"
    assert "bogus_key" in proc.stderr  # the reason, from the nested run, follows
    assert not (workdir / "results").exists()


def job_dry_run(workdir, target: str, sizes: str | None) -> subprocess.CompletedProcess:
    """What Snakemake inside a cluster job of this run reads: the Snakefile in remote mode, one
    target job, the sizes the scheduling process handed over in its environment."""
    env = {k: v for k, v in os.environ.items() if k != "GPUBIO_RUN_SIZES"}
    env |= {"GPUBIO_RUN_SIZES": sizes} if sizes is not None else {}
    rule = target.split(":")[0]
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--mode", "remote", "--target-jobs", target]
    cmd += ["--allowed-rules", rule, "--force", "--nolock", "-n", "--cores", "1"]
    cmd += ["--profile", str(REPO / "profiles" / "slurm-gpu")]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env, timeout=300)


def test_a_cluster_job_checks_only_its_own_samples_and_takes_the_runs_sizes(workdir):
    """The run's own start-up refuses two bad imaging rows; a cluster job of another sample
    neither re-reads every input header nor re-checks other rows, and sizes its rules by what
    the scheduling process measured; a job of a bad sample still names its row."""
    sheet = workdir / "config" / "imaging.tsv"
    good = sheet.read_text()
    (workdir / "bad.tif").write_text("GIF89a")
    sheet.write_text(good + "nuclei3\tbad.tif\t\n")
    header = run_snakemake(workdir, "-n", check=False)
    assert (
        header.returncode != 0
        and "sample 'nuclei3'): image 'bad.tif': not a TIFF file" in header.stdout + header.stderr
    )
    sheet.write_text(good + "nuclei3\tbad.tif\t\nnuclei4\tmissing.tif\t\n")
    row = run_snakemake(workdir, "-n", check=False)
    assert row.returncode != 0 and "sample 'nuclei4'): image 'missing.tif' does not exist" in row.stdout + row.stderr

    job = job_dry_run(workdir, "cell_qc:sample=pbmc1", '{"transcriptomics": 12.0}')
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert [j.rule for j in parse_dry_run(job.stdout)] == ["cell_qc"]
    bad = job_dry_run(workdir, "segment_cells:sample=nuclei4", '{"transcriptomics": 12.0}')
    assert bad.returncode != 0 and "image 'missing.tif' does not exist" in bad.stdout + bad.stderr
    assert "nuclei3" not in bad.stdout + bad.stderr

    # the integration's VRAM comes from the size handed over (50 GB of counts), not measured again
    from gpubio.transcriptomics.sizing import atlas_vram_gb

    sized = job_dry_run(workdir, "integrate_cells:", '{"transcriptomics": 50000}')
    assert sized.returncode == 0, sized.stderr[-3000:]
    [integrate] = parse_dry_run(sized.stdout)
    assert int(integrate.resources["vram_gb"]) == -(-atlas_vram_gb(50000) // 1)
    # without sizes (a job started by hand) it checks and measures everything, as a run does
    unsized = job_dry_run(workdir, "cell_qc:sample=pbmc1", None)
    assert unsized.returncode != 0 and "not a TIFF file" in unsized.stdout + unsized.stderr

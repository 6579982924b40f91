"""The workflow as a user runs it: dry-run, end-to-end demo on CPU, lint, format, envs."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import BIN, DEMO_OVERLAY, REPO, run_snakemake

PROFILE_LOCAL = str(REPO / "profiles" / "local")


def job_counts(output: str) -> dict[str, int]:
    table = output[output.index("Job stats:") :].split("\n")
    counts = {}
    for line in table[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def test_dry_run_of_the_demo(workdir):
    proc = run_snakemake(workdir, "-n", "-p", "--profile", PROFILE_LOCAL)
    counts = job_counts(proc.stdout)
    # the first step of each module, one job per sample; summaries per module; the plan
    for rule, n in {"read_qc": 2, "cell_qc": 2, "image_qc": 2, "qc_summary": 3, "gpu_plan": 1, "all": 1}.items():
        assert counts[rule] == n, (rule, counts)
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    # the exact commands are shown
    assert "python -m gpubio --threads 1 read-qc resources/demo/genomics/illumina_R1.fastq.gz" in proc.stdout
    assert "--min-genes 200 --min-counts 500 --max-mito-pct 20" in proc.stdout


def test_module_switches_off_with_empty_sheet(workdir):
    (workdir / "config" / "genomics.tsv").write_text("")
    counts = job_counts(run_snakemake(workdir, "-n").stdout)
    assert "read_qc" not in counts and counts["qc_summary"] == 2


@pytest.mark.e2e
def test_demo_end_to_end_matches_planted_truth(demo_run, demo_data):
    workdir = demo_run
    demo = demo_data / "resources" / "demo"
    for sample in ("illu1", "ont1"):
        qc = json.loads((workdir / f"results/genomics/{sample}/read_qc.json").read_text())
        truth = json.loads((demo / f"genomics/{sample}.truth.json").read_text())
        for key in ("reads", "bases", "n50"):
            assert qc[key] == truth[key], (sample, key)
        assert qc["mean_quality"] == pytest.approx(truth["mean_quality"], rel=1e-9)
    truth = json.loads((demo / "transcriptomics/truth.json").read_text())["samples"]
    for sample in ("pbmc1", "pbmc2"):
        qc = json.loads((workdir / f"results/transcriptomics/{sample}/qc.json").read_text())
        t = truth[sample]
        assert (qc["cells"], qc["genes"], qc["total_counts"]) == (t["cells"], t["genes"], t["total_counts"])
        assert qc["cells_after_qc"] == t["cells_after_qc"]
        assert qc["removed"]["high_mito"] == t["high_mito_cells"]
        import anndata as ad

        filtered = ad.read_h5ad(workdir / f"results/transcriptomics/{sample}/filtered.h5ad")
        assert filtered.n_obs == t["cells_after_qc"] and set(filtered.obs["sample"]) == {sample}
    truth = json.loads((demo / "imaging/truth.json").read_text())
    for sample in ("nuclei1", "nuclei2"):
        qc = json.loads((workdir / f"results/imaging/{sample}/qc.json").read_text())
        for key in ("shape", "channels", "min", "max", "saturated_fraction"):
            assert qc[key] == truth[sample][key], (sample, key)
    assert json.loads((workdir / "results/imaging/nuclei2/qc.json").read_text())["saturation_flag"] is True
    for domain, n in (("genomics", 2), ("transcriptomics", 2), ("imaging", 2)):
        lines = (workdir / f"results/{domain}/qc_summary.tsv").read_text().splitlines()
        assert len(lines) == n + 1
        assert (workdir / f"results/{domain}/qc_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "logs/genomics/ont1/read_qc.log").exists()
    assert (workdir / "benchmarks/imaging/nuclei1/image_qc.tsv").exists()
    # nothing left half-written, and a second run has nothing to do
    assert not list((workdir / "results").rglob(".*.tmp*"))
    again = run_snakemake(workdir, "-n", "--profile", PROFILE_LOCAL, "--configfile", DEMO_OVERLAY)
    assert "Nothing to be done" in again.stdout + again.stderr
    html = (workdir / "results/report.html").read_text(errors="replace")
    assert "qc_summary.png" in html and "qc_summary.tsv" in html and "gpu_plan.tsv" in html
    import pandas as pd

    plan = pd.read_csv(workdir / "results/gpu_plan.tsv", sep="\t", keep_default_na=False)
    ran = [p for p in (workdir / "benchmarks").rglob("*.tsv")]
    assert len(plan) >= len(ran) > 0  # one row per job of the DAG
    gpu_jobs = plan[plan["gpus"] > 0]
    assert (plan.loc[plan["gpus"] == 0, "partition"] == "cpu").all()
    assert gpu_jobs["partition"].str.startswith("gpu-").all() and (gpu_jobs["model"] != "").all()


def test_snakemake_lint_is_clean(workdir):
    proc = run_snakemake(workdir, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations" in proc.stdout + proc.stderr


def test_snakefmt_is_clean():
    proc = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]])
def test_ruff_is_clean(command):
    """The one Python linter and formatter (pyproject.toml), as `make lint` runs it."""
    proc = subprocess.run([str(BIN / "ruff"), *command], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def conda_directives() -> list[tuple[str, str]]:
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for match in re.finditer(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", text, re.M):
            found.append((smk.name, match.group(1)))
    return found


def test_every_conda_directive_points_at_a_pinned_env():
    directives = conda_directives()
    texts = [s.read_text() for s in (REPO / "workflow/rules").glob("*.smk")]
    rule_count = sum(len(re.findall(r"^rule \w+:", t, re.M)) for t in texts)
    # local rules run in Snakemake's own environment on the head node (the GPU plan)
    local = sum(b.count(",") for t in texts for b in re.findall(r"^localrules:\n((?:    \w+,\n)+)", t, re.M))
    assert local == 1 and len(directives) == rule_count - local  # every other rule has one
    lock = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    for smk, rel in directives:
        env_file = (REPO / "workflow" / "rules" / rel).resolve()
        assert env_file.is_file(), f"{smk}: conda env {rel} does not exist"
        env = yaml.safe_load(env_file.read_text())
        assert env["name"].startswith("gpubio-") and env["channels"]
        pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
        for spec in pip:
            name, version = spec.split("==")
            assert lock.get(name) == version, f"{env_file.name}: {spec} differs from requirements.lock"

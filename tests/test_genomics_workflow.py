"""The genomics module through Snakemake: the demo against its planted truth, the POD5 ->
basecall -> demux -> align -> call chain with test doubles of dorado, Parabricks, DeepVariant
and Clair3 (tests/doubles), and where each GPU job is placed on a cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest

from conftest import REPO, demo_project, run_snakemake

DOUBLES = REPO / "tests" / "doubles"
sys.path.insert(0, str(DOUBLES))
from doublelib import write_pod5  # noqa: E402

SAMPLES = ("illu1", "ont1")
MODEL = "dna_r10.4.1_e8.2_400bps_hac@v5.0.0"


def planted(demo: Path) -> dict[tuple, tuple]:
    with pysam.VariantFile(str(demo / "genomics" / "truth.vcf")) as fh:
        return {(v.chrom, v.pos, v.ref, v.alts[0]): v.samples[0]["GT"] for v in fh}


def passing(vcf: Path) -> dict[tuple, tuple]:
    with pysam.VariantFile(str(vcf)) as fh:
        return {
            (v.chrom, v.pos, v.ref, a): v.samples[0]["GT"] for v in fh if list(v.filter) == ["PASS"] for a in v.alts
        }


# --------------------------------------------------------------------------- the demo


@pytest.mark.e2e
def test_demo_calls_every_planted_variant_and_nothing_else(demo_run, demo_data):
    truth = planted(demo_data / "resources" / "demo")
    assert sum(len(r) != len(a) for _, _, r, a in truth) >= 8  # indels among them
    for sample in SAMPLES:
        out = demo_run / "results" / "genomics" / sample
        calls = passing(out / "variants.vcf.gz")
        true_positives = set(calls) & set(truth)
        precision, recall = len(true_positives) / len(calls), len(true_positives) / len(truth)
        assert (precision, recall) == (1.0, 1.0), (sample, sorted(set(calls) ^ set(truth)))
        assert all(calls[k] == truth[k] for k in truth), sample  # genotypes too
        with pysam.VariantFile(str(out / "variants.vcf.gz")) as fh:
            assert list(fh.header.samples) == [sample]
        assert (out / "variants.vcf.gz.tbi").exists() and (out / "aligned.bam.bai").exists()
        qc = json.loads((out / "qc.json").read_text())
        truth_qc = json.loads((demo_data / "resources" / "demo" / "genomics" / f"{sample}.truth.json").read_text())
        assert (qc["reads"], qc["n50"]) == (truth_qc["reads"], truth_qc["n50"])
        assert qc["mapped_fraction"] >= 0.99 and qc["mean_depth"] == pytest.approx(30, rel=0.1)
        assert qc["read_groups"] == [sample]


@pytest.mark.e2e
def test_demo_variant_effects_are_finite_batched_and_reproducible(demo_run, demo_data):
    import torch

    from gpubio.genomics.effects import load_effect_model, read_variants, score_variants

    demo = demo_data / "resources" / "demo" / "genomics"
    out = demo_run / "results" / "genomics" / "ont1"
    table = pd.read_csv(out / "variant_effects.tsv", sep="\t")
    assert set(zip(table.chrom, table.pos, table.ref, table.alt)) == set(passing(out / "variants.vcf.gz"))
    assert np.isfinite(table["score"]).all() and (table["score"] > 0).all()
    assert "variant effects on the CPU" in (demo_run / "logs/genomics/ont1/variant_effects.log").read_text()
    # the workflow scored in batches of 8; one at a time gives the same numbers
    torch.set_num_threads(1)
    model = load_effect_model("enformer", demo / "enformer_tiny", 512, "cpu")
    subset = list(read_variants(str(out / "variants.vcf.gz")))[:6]
    alone = score_variants(model, str(demo / "reference.fa"), subset, batch_size=1)
    # float32 predictions summed over bins: equal to well below the predictions' own precision
    assert np.allclose([r["score"] for r in alone], table["score"][:6], rtol=0, atol=1e-6)


@pytest.mark.e2e
def test_demo_report_shows_genomics_plots(demo_run):
    results = demo_run / "results" / "genomics"
    for png in ("read_qc.png", "coverage.png", "variants.png"):
        assert (results / png).read_bytes()[:4] == b"\x89PNG"
    summary = pd.read_csv(results / "variant_summary.tsv", sep="\t").set_index("sample")
    assert list(summary.index) == list(SAMPLES) and (summary["pass"] == 62).all()
    html = (demo_run / "results" / "report.html").read_text(errors="replace")
    for name in ("read_qc.png", "coverage.png", "variants.png", "variant_summary.tsv"):
        assert name in html


# --------------------------------------------------------------------------- POD5 chain with doubles


@pytest.fixture(scope="module")
def chain(demo_data, tmp_path_factory):
    """A barcoded POD5 run (two samples) and an Illumina sample through the doubles, on 2 fake GPUs."""
    root = tmp_path_factory.mktemp("genomics-chain")
    demo_project(root, demo_data)
    for sheet in ("transcriptomics", "imaging"):
        (root / "config" / f"{sheet}.tsv").write_text("")
    demo = root / "resources" / "demo" / "genomics"
    reads = [r.sequence for r in pysam.FastxFile(str(demo / "ont.fastq.gz"))][:240]
    (root / "pod5").mkdir()
    ids = write_pod5(root / "pod5" / "run1.pod5", [(seq, 1 + i % 2) for i, seq in enumerate(reads)])
    for model in (MODEL, f"{MODEL}_5mCG_5hmCG@v2"):
        (root / "models" / model).mkdir(parents=True)
    (root / "clair3_model").mkdir()
    (root / "config" / "genomics.tsv").write_text(
        "sample\tplatform\tpod5\tfastq_1\tfastq_2\tbarcode\n"
        "bcA\tont\tpod5/run1.pod5\t\t\tbarcode01\n"
        "bcB\tont\tpod5/run1.pod5\t\t\tbarcode02\n"
        f"illu1\tillumina\t\t{demo}/illumina_R1.fastq.gz\t{demo}/illumina_R2.fastq.gz\t\n"
    )
    settings = {
        "basecall": {
            "model": "hac,5mCG_5hmCG",
            "models_directory": "models",
            "kit_name": "SQK-NBD114-24",
            "shard_size_mb": 0.15,
        },
        "align": {"ont": "dorado"},
        "variants": {
            "caller": {"illumina": "deepvariant_gpu", "ont": "clair3"},
            "clair3": {"model": "clair3_model", "options": "--include_all_ctgs"},
        },
        "variant_effects": {"enabled": False},
    }
    (root / "config" / "chain.yaml").write_text(json.dumps({"genomics": settings}))
    targets = [f"results/genomics/{s}/variants.vcf.gz" for s in ("bcA", "bcB", "illu1")]
    targets += [f"results/genomics/{s}/qc.json" for s in ("bcA", "bcB")]
    env = {
        "GPUBIO_NUM_GPUS": "2",
        "GPUBIO_GPU_LOCK_DIR": str(root / "locks"),
        "GPUBIO_DOUBLES_LOG": str(root / "doubles.log"),
        "PATH": f"{DOUBLES / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        run_snakemake(
            root, "--configfile", "config/config.yaml", "config/chain.yaml", "--cores", "2", "--notemp", *targets
        )
    return {"root": root, "ids": ids, "env": env, "targets": targets}


def double_calls(root: Path, tool: str) -> list[list[str]]:
    lines = (root / "doubles.log").read_text().splitlines()
    return [line.split("\t")[1:] for line in lines if line.split("\t")[0] == tool]


def test_pod5_shards_cover_every_read_exactly_once(chain):
    import pod5

    from gpubio.genomics.basecall import shard_count, shard_names

    root = chain["root"]
    run = root / "results" / "genomics" / "runs" / "run1"
    count = shard_count(root / "pod5" / "run1.pod5", 0.15)
    assert count >= 3
    plan = pd.read_csv(run / "shard_plan.tsv", sep="\t")
    assert sorted(plan["read_id"]) == sorted(chain["ids"]) and sorted(set(plan["shard"])) == shard_names(count)
    seen = []
    for shard in sorted((run / "pod5_shards").glob("*.pod5")):
        with pod5.Reader(shard) as reader:
            seen += [str(r.read_id) for r in reader.reads()]
    assert sorted(seen) == sorted(chain["ids"]) and len(seen) == len(set(seen))
    # one GPU job per shard, each on a pinned device with dorado's GPU options
    calls = double_calls(root, "dorado")
    basecalls = [c for c in calls if c[0] == "basecaller"]
    assert len(basecalls) == count == len(list((run / "basecalls").glob("shard*.bam")))
    for call in basecalls:
        assert call[1] == "hac,5mCG_5hmCG" and "--device" in call and call[call.index("--device") + 1] == "cuda:all"
        assert call[-1] in ("CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1")
        assert call[call.index("--models-directory") + 1] == "models" and "SQK-NBD114-24" in call
    assert ["demux", "--no-classify", "--output-dir", "results/genomics/runs/run1/demux", "--threads", "2"] == [
        c for c in calls if c[0] == "demux"
    ][0][:6]


def test_basecall_demux_align_chain_keeps_read_groups_and_tags(chain):
    root = chain["root"]
    for sample, barcode in (("bcA", 1), ("bcB", 2)):
        bam = root / "results" / "genomics" / sample / "aligned.bam"
        with pysam.AlignmentFile(str(bam), "rb") as fh:
            header = fh.header.to_dict()
            records = [r for r in fh.fetch() if not r.is_supplementary]
        base = f"0a1b2c3d4e5f6a7b_{MODEL}"
        own = f"{base}_SQK-NBD114-24_barcode{barcode:02d}"
        assert [(g["ID"], g["SM"]) for g in header["RG"]] == [(base, sample), (own, sample)]
        assert "modbase_models=" in header["RG"][1]["DS"] and header["RG"][1]["PL"] == "ONT"
        assert {pg["PN"] for pg in header["PG"]} >= {"dorado"}
        expected = {rid for i, rid in enumerate(chain["ids"]) if 1 + i % 2 == barcode}
        assert {r.query_name for r in records} == expected  # every read of its barcode, no other
        assert {r.get_tag("RG") for r in records} == {own}
        for rec in records[:20]:
            assert {"qs", "ch", "mx", "rn", "MM", "ML", "BC", "NM"} <= {t for t, _ in rec.get_tags()}
            assert rec.modified_bases is not None
        reads = root / "results" / "genomics" / sample / "reads.bam"
        assert pysam.AlignmentFile(str(reads), "rb", check_sq=False).header.to_dict()["RG"][-1]["SM"] == sample
        qc = json.loads((root / "results" / "genomics" / sample / "qc.json").read_text())
        assert qc["reads"] == len(expected) and qc["mapped_fraction"] == 1.0
        assert qc["read_groups"] == [base, own]


def test_callers_get_platform_and_gpu_options(chain):
    root = chain["root"]
    (pb,) = double_calls(root, "pbrun")
    assert pb[:1] == ["deepvariant"] and pb[pb.index("--mode") + 1] == "shortread"
    assert pb[pb.index("--num-gpus") + 1] == "1" and pb[-1] == "CUDA_VISIBLE_DEVICES=0"
    assert pb[pb.index("--num-streams-per-gpu") + 1] == "1"  # placed on a 16 GB T4
    clair = double_calls(root, "run_clair3.sh")
    assert len(clair) == 2 and all("--platform=ont" in c and "--model_path=clair3_model" in c for c in clair)
    assert {c for call in clair for c in call if c.startswith("--sample_name=")} == {
        "--sample_name=bcA",
        "--sample_name=bcB",
    }
    for sample in ("bcA", "bcB", "illu1"):
        with pysam.VariantFile(str(root / "results" / "genomics" / sample / "variants.vcf.gz")) as fh:
            assert list(fh.header.samples) == [sample] and sum(1 for _ in fh) > 10
    # the same samples with DeepVariant on the CPU: only calling and finishing run again
    (root / "config" / "cpu_dv.yaml").write_text(
        json.dumps({"genomics": {"variants": {"caller": {"illumina": "deepvariant", "ont": "deepvariant"}}}})
    )
    with pytest.MonkeyPatch.context() as mp:
        for key, value in chain["env"].items():
            mp.setenv(key, value)
        proc = run_snakemake(
            root,
            "--configfile",
            "config/config.yaml",
            "config/chain.yaml",
            "config/cpu_dv.yaml",
            "--cores",
            "2",
            *chain["targets"],
        )
    ran = set(re.findall(r"rule (\w+):", proc.stdout + proc.stderr))
    assert ran <= {"call_deepvariant", "finish_variants"} and "call_deepvariant" in ran
    models = sorted(next(a for a in c if a.startswith("--model_type=")) for c in double_calls(root, "run_deepvariant"))
    assert models == ["--model_type=ONT_R104", "--model_type=ONT_R104", "--model_type=WGS"]


# --------------------------------------------------------------------------- placement on a cluster


def dry_run_jobs(output: str) -> dict[str, list[dict]]:
    """rule -> [{resources, shell}] from `snakemake -n -p`."""
    jobs: dict[str, list[dict]] = {}
    for block in re.split(r"\n(?=\[.*\]\n|(?:local)?rule \w+:)", output):
        match = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not match:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        resources = dict(kv.split("=", 1) for kv in re.split(r", (?=[\w.-]+=)", res.group(1))) if res else {}
        jobs.setdefault(match.group(1), []).append({"resources": resources, "shell": shell.group(1) if shell else ""})
    return jobs


def test_gpu_jobs_are_placed_by_their_needs(chain, tmp_path):
    root = chain["root"]
    # shards unbalanced: each on the fastest GPU (the spread is tested in test_slurm_demo.py)
    (root / "config" / "placed.yaml").write_text(
        json.dumps(
            {
                "gpu": {"balance": False},
                "genomics": {
                    "variants": {"parabricks": {"gpus": 2}},
                    "variant_effects": {
                        "enabled": True,
                        "weights": "resources/demo/genomics/enformer_tiny",
                        "sequence_length": 512,
                    },
                },
            }
        )
    )
    workdir = tmp_path / "fresh"  # nothing done yet: every job shows
    shutil.copytree(root / "config", workdir / "config")
    for name in ("resources", "pod5", "models", "clair3_model"):
        (workdir / name).symlink_to(root / name)
    # the cluster profile as a user runs it (env-modules: no conda needed for a dry-run here)
    proc = run_snakemake(
        workdir,
        "-n",
        "-p",
        "--profile",
        str(REPO / "profiles" / "slurm-gpu"),
        "--sdm",
        "env-modules",
        "--configfile",
        "config/config.yaml",
        "config/chain.yaml",
        "config/placed.yaml",
    )
    jobs = dry_run_jobs(proc.stdout)
    from gpubio.genomics.basecall import shard_count

    assert len(jobs["basecall"]) == shard_count(root / "pod5" / "run1.pod5", 0.15) >= 3
    for job in jobs["basecall"]:  # >= 8 GB, compute capability >= 6.0, fastest GPU
        assert (job["resources"]["slurm_partition"], job["resources"]["gpu_model"]) == ("gpu-h100", "h100")
        assert "--gpus 1" in job["shell"] and "--gpu-args='--device cuda:all' --cpu-args='-x cpu'" in job["shell"]
    (pb,) = jobs["call_parabricks"]  # >= 16 GB, cheapest: a T4, so one stream per GPU
    assert (pb["resources"]["slurm_partition"], pb["resources"]["gpu"]) == ("gpu-t4", "2")
    assert "--num-gpus 2 --num-streams-per-gpu 1" in pb["shell"] and "--mode shortread" in pb["shell"]
    for job in jobs["variant_effects"]:  # Enformer fits a T4
        assert job["resources"]["slurm_partition"] == "gpu-t4"
    for rule in ("pod5_shards", "merge_basecalls", "demux", "align_dorado", "call_clair3", "finish_variants"):
        assert {j["resources"]["slurm_partition"] for j in jobs[rule]} == {"cpu"}, rule


def test_sheet_errors_stop_the_run_before_any_job(chain, tmp_path):
    workdir = tmp_path / "bad"
    shutil.copytree(chain["root"] / "config", workdir / "config")
    for name in ("resources", "pod5"):
        (workdir / name).symlink_to(chain["root"] / name)
    (workdir / "config" / "genomics.tsv").write_text(
        "sample\tplatform\tpod5\tbarcode\nbcA\tont\tpod5/run1.pod5\tbarcode01\n"
    )
    proc = run_snakemake(workdir, "-n", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in output
    assert (
        "config/genomics.tsv row 1 (line 2, sample 'bcA'): barcode 'barcode01' given but genomics.basecall.kit_name"
        in output
    )

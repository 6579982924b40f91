"""DeepSEA-style variant effects (family ``deepsea``): tiny random checkpoints the tests build in
the documented layout, scores checked against the torch module run directly on one-hot windows
built here, and one run of the genomics module through Snakemake with that family."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import pytest
import torch

from conftest import REPO, run_snakemake
from gpubio.genomics import deepsea, effects
from gpubio.genomics.inputs import InputError
from independent.deepsea import (
    apply_snvs,
    expected_effects,
    strand_probabilities,
    write_beluga_shaped,
    write_checkpoint,
    write_tiled_bam,
)
from independent.genomics import write_fasta

torch.set_num_threads(1)

FEATURES_A = [f"DNase|cellA{i}" for i in range(5)] + ["CTCF|cellB", "H3K27ac|cellC"]
FEATURES_B = [f"TF_{i}|tissue" for i in range(9)]
# DeepSEA-like: 1,000 bp, ACGT (default order), N = 0; Beluga-like: 2,000 bp, AGCT, Conv2d
# weights, two convolutions per pooling, N = 0.25
CHECKPOINTS = {
    "deepsea1000": dict(
        window=1000,
        conv=[
            {"channels": 6, "kernel": 8, "pool": 4},
            {"channels": 8, "kernel": 8, "pool": 4},
            {"channels": 10, "kernel": 8},
        ],
        hidden=[16],
        features=FEATURES_A,
        alphabet=None,
        unknown_base=None,
        conv2d=False,
    ),
    "beluga2000": dict(
        window=2000,
        conv=[
            {"channels": 5, "kernel": 8},
            {"channels": 5, "kernel": 8, "pool": 4},
            {"channels": 7, "kernel": 8},
            {"channels": 7, "kernel": 8, "pool": 4},
        ],
        hidden=[11],
        features=FEATURES_B,
        alphabet="AGCT",
        unknown_base=0.25,
        conv2d=True,
    ),
}


def random_contig(rng: np.random.Generator, length: int, masked: tuple[int, int] | None = None) -> str:
    seq = np.array(list("ACGT"))[rng.integers(0, 4, length)]
    if masked:
        seq[masked[0] : masked[1]] = np.char.lower(seq[masked[0] : masked[1]])
    return "".join(seq)


@pytest.fixture(scope="module")
def genome(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A long contig with a soft-masked stretch and a contig shorter than either window."""
    rng = np.random.default_rng(2015)
    contigs = {"ctg_long.1": random_contig(rng, 3100, masked=(1400, 1700)), "ctg_short.2": random_contig(rng, 640)}
    path = write_fasta(contigs, tmp_path_factory.mktemp("genome") / "genome.fa")
    pysam.faidx(str(path))
    return path, contigs


def variants_of(contigs: dict[str, str]) -> list[tuple]:
    """(chrom, pos, REF, ALT): first and last base of a contig, near the ends, the middle, a
    deletion, an insertion, and a contig shorter than the window (padded on both sides)."""
    long, short = contigs["ctg_long.1"].upper(), contigs["ctg_short.2"].upper()
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    out = [("ctg_long.1", p, long[p - 1], other[long[p - 1]]) for p in (1, 7, 480, 1550, 2990, 3100)]
    out.append(("ctg_long.1", 900, long[899:903], long[899]))  # deletion of 3 bases
    out.append(("ctg_long.1", 1201, long[1200], long[1200] + "GATTACA"))  # insertion
    out += [("ctg_short.2", p, short[p - 1], other[short[p - 1]]) for p in (2, 320, 639)]
    return out


def write_vcf(path: Path, contigs: dict[str, str], records: list[tuple]) -> Path:
    lines = ["##fileformat=VCFv4.2"] + [f"##contig=<ID={c},length={len(s)}>" for c, s in contigs.items()]
    lines.append("#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO")
    lines += [f"{c}\t{p}\t.\t{r}\t{a}\t50\tPASS\t." for c, p, r, a in records]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module", params=sorted(CHECKPOINTS))
def checkpoint(request, tmp_path_factory):
    spec = CHECKPOINTS[request.param]
    directory = tmp_path_factory.mktemp("weights") / request.param
    module = write_checkpoint(directory, seed=13, **spec)
    return directory, module, spec


def load(directory: Path):
    return effects.load_effect_model("deepsea", directory, 196608, "cpu")


def test_scores_are_the_two_strand_average_of_the_module(genome, checkpoint, tmp_path):
    fasta, contigs = genome
    directory, module, spec = checkpoint
    records = variants_of(contigs)
    model = load(directory)
    assert model.sequence_length == spec["window"]  # the checkpoint's window, not sequence_length
    rows = effects.score_variants(
        model,
        str(fasta),
        list(effects.read_variants(str(write_vcf(tmp_path / "v.vcf", contigs, records)))),
        batch_size=4,
    )
    alphabet, unknown = spec["alphabet"] or "ACGT", spec["unknown_base"] or 0.0
    expected = expected_effects(module, contigs, records, spec["window"], alphabet, unknown, spec["features"])
    assert [(r["chrom"], r["pos"], r["ref"], r["alt"]) for r in rows] == records
    for row, want in zip(rows, expected):
        assert row["top_track"] == want["top_track"], row["variant"]
        for key in ("score", "top_track_delta", "top_track_log_odds_delta", "mean_abs_delta"):
            assert row[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (row["variant"], key)
    assert min(r["score"] for r in rows) > 1e-6  # every variant moves the prediction
    # the strands disagree for this model, so the average is not the forward prediction alone
    forward = expected_effects(module, contigs, records, spec["window"], alphabet, unknown, spec["features"], "forward")
    gaps = [abs(f["top_track_delta"] - w["top_track_delta"]) for f, w in zip(forward, expected)]
    assert max(gaps) > 1e-4  # far beyond the 1e-5 relative tolerance above


def test_prediction_of_a_strand_asymmetric_window_is_the_mean_of_both_strands(checkpoint):
    directory, module, spec = checkpoint
    window, alphabet, unknown = spec["window"], spec["alphabet"] or "ACGT", spec["unknown_base"] or 0.0
    rng = np.random.default_rng(3)
    # A-rich then C-rich (its reverse complement is G-rich then T-rich), and a random window with Ns
    skewed = "".join(rng.choice(list("AAAAAAAT"), window // 2)) + "".join(rng.choice(list("CCCCCCCG"), window // 2))
    mixed = "N" * 37 + "".join(rng.choice(list("ACGT"), window - 37))
    forward, reverse = strand_probabilities(module, [skewed, mixed], alphabet, unknown)
    assert np.abs(forward - reverse).max() > 0.05  # the module itself is not strand-symmetric
    got = load(directory).probabilities([skewed, mixed])
    assert got.shape == (2, len(spec["features"]))
    assert np.allclose(got, (forward + reverse) / 2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got, forward, rtol=1e-3, atol=1e-4)


def test_scores_are_deterministic_one_row_per_variant(genome, checkpoint, tmp_path):
    fasta, contigs = genome
    directory, _, spec = checkpoint
    variants = list(effects.read_variants(str(write_vcf(tmp_path / "v.vcf", contigs, variants_of(contigs)))))
    first = effects.score_variants(load(directory), str(fasta), variants, batch_size=3)
    again = effects.score_variants(load(directory), str(fasta), variants, batch_size=3)
    assert first == again and len(first) == len(variants) == 11
    assert {r["top_track"] for r in first} <= set(spec["features"])
    out = tmp_path / "effects.tsv"
    model = load(directory)
    effects.write_effects(first, str(out), model.columns)
    table = pd.read_csv(out, sep="\t")
    assert list(table.columns) == effects.EFFECT_COLUMNS + ["top_track_log_odds_delta"]
    assert len(table) == 11 and table["variant"].is_unique
    # log-odds change has the sign of the probability change
    assert (np.sign(table["top_track_log_odds_delta"]) == np.sign(table["top_track_delta"])).all()


def test_a_published_state_dict_loads_as_is_with_its_layer_names(genome, tmp_path):
    """Beluga's module structure and key names: model.pt is its state dict unchanged, config.json
    names the layers; scores match the module run directly (AGCT order, N = 0, 2,000 bp)."""
    fasta, contigs = genome
    features = [f"Beluga_{i}" for i in range(6)]
    module = write_beluga_shaped(
        tmp_path / "beluga", window=2000, channels=(5, 6, 7), hidden=9, features=features, seed=21
    )
    assert "model.1.4.1.weight" in torch.load(tmp_path / "beluga" / "model.pt", weights_only=True)
    records = variants_of(contigs)
    vcf = write_vcf(tmp_path / "v.vcf", contigs, records)
    rows = effects.score_variants(load(tmp_path / "beluga"), str(fasta), list(effects.read_variants(str(vcf))), 5)
    expected = expected_effects(module, contigs, records, 2000, "AGCT", 0.0, features)
    assert [r["top_track"] for r in rows] == [e["top_track"] for e in expected]
    for row, want in zip(rows, expected):  # this module's sigmoid is float32: ~1e-7 per probability
        for key in ("score", "top_track_delta", "top_track_log_odds_delta", "mean_abs_delta"):
            assert row[key] == pytest.approx(want[key], rel=1e-5, abs=2e-6), (row["variant"], key)

    config = json.loads((tmp_path / "beluga" / "config.json").read_text())
    config["state_dict_keys"]["dense"][1] = "model.1.4.0"
    (tmp_path / "beluga" / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"model.pt has no model.1.4.0.weight \(state_dict_keys in config.json\)"):
        load(tmp_path / "beluga")


def test_lower_case_alleles_score_as_upper_case(genome, checkpoint, tmp_path):
    """A VCF from a soft-masked reference may carry lower-case alleles: same scores, upper-case out."""
    fasta, contigs = genome
    directory, _, _ = checkpoint
    chrom, pos = "ctg_long.1", 1500
    assert contigs[chrom][pos - 1].islower()  # inside the soft-masked stretch
    ref = contigs[chrom][pos - 1]
    alt = {"a": "c", "c": "g", "g": "t", "t": "a"}[ref]
    lower = list(effects.read_variants(str(write_vcf(tmp_path / "lower.vcf", contigs, [(chrom, pos, ref, alt)]))))
    upper = list(
        effects.read_variants(str(write_vcf(tmp_path / "upper.vcf", contigs, [(chrom, pos, ref.upper(), alt.upper())])))
    )
    model = load(directory)
    (row_lower,) = effects.score_variants(model, str(fasta), lower, batch_size=1)
    (row_upper,) = effects.score_variants(model, str(fasta), upper, batch_size=1)
    assert (row_lower["ref"], row_lower["alt"]) == (ref.upper(), alt.upper())
    assert row_lower == row_upper


def test_checkpoint_problems_name_the_file_and_the_fix(tmp_path):
    spec = CHECKPOINTS["deepsea1000"]
    good = tmp_path / "good"
    write_checkpoint(good, seed=1, **spec)
    assert deepsea.checkpoint_problems(good, "config.yaml: weights") == []

    no_weights = tmp_path / "no_weights"
    shutil.copytree(good, no_weights)
    (no_weights / "model.pt").unlink()
    (line,) = deepsea.checkpoint_problems(no_weights, "config.yaml: weights")
    assert line.startswith(f"config.yaml: weights: {no_weights / 'model.pt'} is missing")

    wrong_window = tmp_path / "wrong_window"
    shutil.copytree(good, wrong_window)
    config = json.loads((good / "config.json").read_text())
    (wrong_window / "config.json").write_text(json.dumps({**config, "window": 2000}))
    assert deepsea.checkpoint_problems(wrong_window, "k") == []  # only loading the weights can tell
    with pytest.raises(
        InputError, match=r"dense.0 takes 530 inputs but a 2000-bp window through conv_layers gives 1150"
    ):
        load(wrong_window)

    typo = tmp_path / "typo"
    shutil.copytree(good, typo)
    (typo / "config.json").write_text(json.dumps({**config, "kernel_size": 8}))
    (line,) = deepsea.checkpoint_problems(typo, "k")
    assert line == f"k: {typo / 'config.json'}: unknown key(s) kernel_size; see the README, DeepSEA-style effects"

    few_names = tmp_path / "few_names"
    shutil.copytree(good, few_names)
    (few_names / "features.txt").write_text("DNase\nCTCF\n")
    with pytest.raises(InputError, match="2 track names for a model with 7 output tracks"):
        load(few_names)


def test_gpu_memory_grows_with_batch_size_and_stays_small(tmp_path):
    directory = tmp_path / "w"
    write_checkpoint(directory, seed=1, **CHECKPOINTS["beluga2000"])
    one, many = deepsea.vram_gb(directory, 1), deepsea.vram_gb(directory, 4096)
    assert 1.0 <= one < many < 16  # a T4 holds even a large batch of this model
    settings = {"family": "deepsea", "weights": str(directory), "batch_size": 4096}
    assert effects.effect_vram_gb(settings) == many
    assert effects.effect_vram_gb({**settings, "family": "enformer"}) == 12.0


# --------------------------------------------------------------------------- through the workflow


def project(root: Path, weights: Path, contigs: dict[str, str]) -> Path:
    """Genomics only: one aligned-BAM sample, the deepsea family."""
    shutil.copytree(REPO / "config", root / "config")
    for sheet in ("transcriptomics", "imaging"):
        (root / "config" / f"{sheet}.tsv").write_text("")
    (root / "config" / "genomics.tsv").write_text("sample\tplatform\tbam\nsea1\tillumina\tdata/sea1.bam\n")
    # track_names overrides features.txt; its path has a space, so it must reach the shell quoted
    settings = {
        "genomics": {
            "reference": "data/genome.fa",
            "variant_effects": {
                "enabled": True,
                "family": "deepsea",
                "weights": str(weights),
                "batch_size": 5,
                "track_names": "data/feature names.txt",
            },
        }
    }
    (root / "config" / "deepsea.yaml").write_text(json.dumps(settings))
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "feature names.txt").write_text(
        "".join(f"renamed {n}\n" for n in CHECKPOINTS["deepsea1000"]["features"])
    )
    write_fasta(contigs, root / "data" / "genome.fa")
    return root


CONFIG = ("--configfile", "config/config.yaml", "config/deepsea.yaml")  # last: --configfile takes all after it


@pytest.fixture(scope="module")
def deepsea_run(tmp_path_factory):
    """One aligned-BAM sample with planted SNVs (near both ends of a contig, in soft-masked
    sequence, on a contig shorter than the window) run to variant_effects.tsv."""
    tmp = tmp_path_factory.mktemp("deepsea-run")
    rng = np.random.default_rng(44)
    contigs = {"ctg_long.1": random_contig(rng, 2400, masked=(900, 1300)), "ctg_short.2": random_contig(rng, 700)}
    long, short = contigs["ctg_long.1"].upper(), contigs["ctg_short.2"].upper()
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    snvs = [("ctg_long.1", p, long[p - 1], other[long[p - 1]]) for p in (30, 1000, 2380)]
    snvs += [("ctg_short.2", p, short[p - 1], other[short[p - 1]]) for p in (40, 400)]
    spec = CHECKPOINTS["deepsea1000"]
    module = write_checkpoint(tmp / "weights", seed=5, **spec)
    root = project(tmp / "run", tmp / "weights", contigs)
    write_tiled_bam(apply_snvs(contigs, snvs), root / "data" / "sea1.bam")
    run_snakemake(root, "--cores", "2", "results/genomics/sea1/variant_effects.tsv", *CONFIG)
    return {"root": root, "weights": tmp / "weights", "module": module, "contigs": contigs, "snvs": snvs}


def test_workflow_scores_called_variants_with_deepsea(deepsea_run):
    root, contigs, snvs = deepsea_run["root"], deepsea_run["contigs"], deepsea_run["snvs"]
    table = pd.read_csv(root / "results" / "genomics" / "sea1" / "variant_effects.tsv", sep="\t")
    with pysam.VariantFile(str(root / "results" / "genomics" / "sea1" / "variants.vcf.gz")) as fh:
        called = [(r.chrom, r.pos, r.ref, a) for r in fh if list(r.filter) in ([], ["PASS"]) for a in r.alts]
    assert sorted(called) == sorted(snvs)  # the planted variants, near both contig ends too
    assert list(zip(table.chrom, table.pos, table.ref, table.alt)) == called
    features = CHECKPOINTS["deepsea1000"]["features"]
    expected = expected_effects(deepsea_run["module"], contigs, called, 1000, "ACGT", 0.0, features)
    assert list(table["top_track"]) == [f"renamed {e['top_track']}" for e in expected]
    for column in ("score", "top_track_delta", "top_track_log_odds_delta"):
        assert np.allclose(table[column], [e[column] for e in expected], rtol=2e-5, atol=1e-7), column
    log = (root / "logs" / "genomics" / "sea1" / "variant_effects.log").read_text()
    assert "variant effects on the CPU" in log and "1000-bp windows from config.json" in log


def test_cluster_plan_puts_the_deepsea_job_on_a_small_gpu(deepsea_run, tmp_path):
    fresh = tmp_path / "plan"  # nothing done yet: every job shows
    shutil.copytree(deepsea_run["root"] / "config", fresh / "config")
    (fresh / "data").symlink_to(deepsea_run["root"] / "data")
    proc = run_snakemake(
        fresh, "-n", "-p", "--profile", str(REPO / "profiles" / "slurm-gpu"), "--sdm", "env-modules", *CONFIG
    )
    block = proc.stdout[proc.stdout.index("rule variant_effects:") :]
    resources = block[block.index("resources: ") :].splitlines()[0]
    assert "gpu=1" in resources and "gpu_model=t4" in resources and "slurm_partition=gpu-t4" in resources
    vram = int(resources.split("vram_gb=")[1].split(",")[0])  # whole GB, rounded up
    assert vram == math.ceil(deepsea.vram_gb(deepsea_run["weights"], 5)) == 2  # not Enformer's 12
    assert "--family deepsea" in block


def test_bad_checkpoints_stop_the_run_or_fail_the_job_with_one_line(deepsea_run, tmp_path):
    root = tmp_path / "project"  # a copy: the failed job below removes its output
    shutil.copytree(deepsea_run["root"], root, symlinks=True)
    # model.pt missing: refused before any job
    bare = tmp_path / "bare"
    shutil.copytree(deepsea_run["weights"], bare)
    (bare / "model.pt").unlink()
    settings = json.loads((root / "config" / "deepsea.yaml").read_text())
    settings["genomics"]["variant_effects"]["weights"] = str(bare)
    (root / "config" / "bare.yaml").write_text(json.dumps(settings))
    proc = run_snakemake(root, "-n", "--configfile", "config/config.yaml", "config/bare.yaml", check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Building DAG" not in output and "Traceback" not in output
    assert f"genomics.variant_effects.weights: {bare / 'model.pt'} is missing" in output

    # a window that does not fit the weights: only loading can tell, so the job fails with one line
    wrong = tmp_path / "wrong window"  # a space: the path reaches the shell quoted
    shutil.copytree(deepsea_run["weights"], wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "window": 2000}))
    settings["genomics"]["variant_effects"]["weights"] = str(wrong)
    (root / "config" / "wrong.yaml").write_text(json.dumps(settings))
    proc = run_snakemake(
        root,
        "--cores",
        "1",
        "--forcerun",
        "variant_effects",
        "results/genomics/sea1/variant_effects.tsv",
        "--configfile",
        "config/config.yaml",
        "config/wrong.yaml",
        check=False,
    )
    assert proc.returncode != 0
    log = (root / "logs" / "genomics" / "sea1" / "variant_effects.log").read_text()
    assert "Traceback" not in log
    (line,) = [line for line in log.splitlines() if "dense.0 takes" in line]
    assert line.startswith(f"gpubio: variant-effects: {wrong / 'model.pt'}: dense.0 takes 530 inputs but a 2000-bp")

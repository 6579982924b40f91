"""scripts/stage-models: which models a config needs, and --check of a staged site directory offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from gpubio.models.staging import ModelNeed, StagingError, _stage_dorado, check, model_needs, stage

SCRIPT = REPO / "scripts" / "stage-models"
SIMPLEX = "dna_r10.4.1_e8.2_400bps_sup@v5.2.0"
MODBASE = "dna_r10.4.1_e8.2_400bps_sup@v5.2.0_5mCG_5hmCG@v2"


def write_config(tmp_path: Path) -> Path:
    """A project unlike the demo: barcoded POD5 input, a DNABERT-style effect model, a CellTypist
    model file, Geneformer-style embeddings and a built-in Cellpose model."""
    sheet = tmp_path / "genomics.tsv"
    sheet.write_text("sample\tplatform\tpod5\tbarcode\n# a comment\nbc1\tont\truns/r1.pod5\tbarcode01\n")
    config = {
        "genomics": {
            "samples": str(sheet),
            "basecall": {"model": "sup@v5.2.0,5mCG_5hmCG", "models_directory": ""},
            "variant_effects": {"enabled": True, "family": "dnabert", "weights": "models/dnabert"},
        },
        "transcriptomics": {
            "annotation": {"celltypist": {"enabled": True, "model": "models/Immune_All_Low.pkl"}},
            "embeddings": {"weights": "models/geneformer"},
        },
        "imaging": {"segmentation": {"model": "nuclei"}, "training": {"base_model": "cyto3"}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def tiny_bert(path: Path, vocab: list[str], masked_lm: bool = False) -> None:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=64,
    )
    (BertForMaskedLM if masked_lm else BertModel)(config).save_pretrained(path, safe_serialization=False)


def build_site(site: Path) -> None:
    """Every model write_config's project needs, in the staged layout, as tiny real models."""
    from transformers import BertTokenizer

    for name in (SIMPLEX, MODBASE):
        (site / "dorado" / name).mkdir(parents=True)
        (site / "dorado" / name / "config.toml").write_text('[model]\ntype = "lstm"\n')
    dnabert = site / "variant_effects" / "dnabert"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *("ACG", "ACT", "TTA", "GGC")]
    (site / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(site / "vocab.txt"), do_lower_case=False).save_pretrained(dnabert)
    tiny_bert(dnabert, vocab)
    (site / "vocab.txt").unlink()
    embeddings = site / "embeddings"
    tiny_bert(embeddings, ["<pad>", "<mask>", "G1", "G2", "G3"], masked_lm=True)
    (embeddings / "token_dictionary.json").write_text(json.dumps({"<pad>": 0, "<mask>": 1, "G1": 2, "G2": 3, "G3": 4}))
    (site / "celltypist").mkdir()
    (site / "celltypist" / "Immune_All_Low.pkl").write_bytes(b"\x80\x04N.")
    (site / "cellpose").mkdir()
    (site / "cellpose" / "nucleitorch_0").write_bytes(b"\0" * 64)


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_needs_follow_the_config(tmp_path):
    needs = {(n.kind, n.name, n.target) for n in model_needs(yaml.safe_load(write_config(tmp_path).read_text()))}
    assert needs == {
        ("dorado", "sup@v5.2.0,5mCG_5hmCG", "dorado"),
        ("dnabert", "zhihan1996/DNABERT-2-117M", "variant_effects/dnabert"),
        ("celltypist", "Immune_All_Low.pkl", "celltypist/Immune_All_Low.pkl"),
        ("embeddings", "ctheodoris/Geneformer", "embeddings"),
        ("cellpose", "nuclei", "cellpose/nucleitorch_0"),  # base_model: no training step runs
    }
    # full dorado names: one model each; no POD5 rows and no names: no dorado at all
    named = model_needs({}, dorado_models=[SIMPLEX, MODBASE])
    assert [(n.name, n.target) for n in named] == [(SIMPLEX, f"dorado/{SIMPLEX}"), (MODBASE, f"dorado/{MODBASE}")]
    assert model_needs({"genomics": {"variant_effects": {"enabled": False, "weights": "x"}}}) == []
    trained = model_needs({"imaging": {"segmentation": {"model": "trained"}, "training": {"base_model": "cyto2"}}})
    assert [(n.config_key, n.target) for n in trained] == [("imaging.training.base_model", "cellpose/cyto2torch_0")]
    # the default model, the installed Cellpose's generalist: cyto3 with Cellpose 3
    generalist = model_needs({"imaging": {"samples": "config/imaging.tsv"}})
    assert [(n.config_key, n.name, n.target) for n in generalist] == [
        ("imaging.segmentation.model", "cyto3", "cellpose/cyto3")
    ]


def test_check_passes_on_a_complete_site_and_prints_the_config_lines(tmp_path):
    config = write_config(tmp_path)
    site = tmp_path / "site"
    build_site(site)
    proc = run_script("--check", str(site), "--configfile", str(config))
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if not line.startswith("#"))
    assert lines == {
        "genomics.basecall.models_directory": str(site / "dorado"),
        "genomics.variant_effects.weights": str(site / "variant_effects" / "dnabert"),
        "transcriptomics.annotation.celltypist.model": str(site / "celltypist" / "Immune_All_Low.pkl"),
        "transcriptomics.embeddings.weights": str(site / "embeddings"),
        "imaging.segmentation.model": str(site / "cellpose" / "nucleitorch_0"),
    }
    # the staged models load as the workflow loads them, offline
    from gpubio.genomics.effects import load_effect_model
    from gpubio.transcriptomics.embeddings import load_model

    assert load_effect_model("dnabert", lines["genomics.variant_effects.weights"], 30, "cpu") is not None
    assert load_model(lines["transcriptomics.embeddings.weights"]).config.hidden_size == 12


@pytest.mark.parametrize(
    "remove, named",
    [
        (f"dorado/{MODBASE}", "5mCG_5hmCG modified-base model"),
        (f"dorado/{SIMPLEX}", "no dorado sup@v5.2.0 model"),
        ("variant_effects/dnabert/vocab.txt", "tokenizer.json or vocab.txt"),
        ("variant_effects/dnabert/pytorch_model.bin", "model.safetensors or pytorch_model.bin"),
        ("embeddings/token_dictionary.json", "token_dictionary.json or token_dictionary.pkl"),
        ("celltypist/Immune_All_Low.pkl", "Immune_All_Low.pkl is missing"),
        ("cellpose/nucleitorch_0", "nucleitorch_0 is missing"),
    ],
)
def test_check_names_what_is_missing(tmp_path, remove, named):
    config = write_config(tmp_path)
    site = tmp_path / "site"
    build_site(site)
    for extra in ("tokenizer.json", "tokenizer_config.json"):  # the tokenizer files besides vocab.txt
        if remove.endswith("vocab.txt"):
            (site / "variant_effects" / "dnabert" / extra).unlink(missing_ok=True)
    target = site / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    proc = run_script("--check", str(site), "--configfile", str(config))
    assert proc.returncode == 1 and proc.stdout == ""
    problems = proc.stderr.strip().splitlines()
    assert len(problems) == 1 and named in problems[0], proc.stderr
    assert "stage" in problems[0]  # and what to do about it


def test_stage_fetches_only_what_is_missing(tmp_path):
    site = tmp_path / "site"
    build_site(site)
    (site / "cellpose" / "nucleitorch_0").unlink()
    needs = model_needs(yaml.safe_load(write_config(tmp_path).read_text()))
    fetched = []

    def fetch_cellpose(need, target):
        fetched.append(need.name)
        target.write_bytes(b"\0" * 8)

    problems = stage(site, needs, stagers={"cellpose": fetch_cellpose}, log=lambda _: None)
    assert fetched == ["nuclei"] and problems == []


def test_dorado_staging_command_and_complex_names(tmp_path):
    calls = []

    def run(cmd, **_):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    need = ModelNeed("dorado", SIMPLEX, f"dorado/{SIMPLEX}", "genomics.basecall.models_directory", "dorado")
    _stage_dorado(need, tmp_path / "dorado" / SIMPLEX, run=run)
    assert calls == [["dorado", "download", "--model", SIMPLEX, "--models-directory", str(tmp_path / "dorado")]]
    with pytest.raises(StagingError, match="--dorado-model"):
        _stage_dorado(ModelNeed("dorado", "hac", "dorado", "k", "dorado"), tmp_path / "dorado")
    assert check(tmp_path / "nowhere", [need])[0].endswith(
        "(scripts/stage-models --out " + str(tmp_path / "nowhere") + ")"
    )


def test_help():
    proc = run_script("--help")
    assert proc.returncode == 0 and "--check" in proc.stdout and "--dorado-model" in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "--convert KIND SRC DIR" in text and "KIND conch:" in text and "KIND deepsea:" in text


def test_check_of_a_staged_enformer(tmp_path):
    import torch
    from enformer_pytorch import Enformer

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"genomics": {"variant_effects": {"family": "enformer", "weights": "w"}}}))
    site = tmp_path / "site"
    weights = site / "variant_effects" / "enformer"
    torch.manual_seed(3)
    Enformer.from_hparams(
        dim=24,
        depth=1,
        heads=2,
        attn_dim_key=4,
        num_downsamples=3,
        dim_divisible_by=4,
        output_heads={"human": 3},
        target_length=-1,
        dropout_rate=0.0,
        attn_dropout=0.0,
        pos_dropout=0.0,
    ).save_pretrained(str(weights), safe_serialization=False)
    proc = run_script("--check", str(site), "--configfile", str(config))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"genomics.variant_effects.weights: {weights}"
    from gpubio.genomics.effects import load_effect_model

    model = load_effect_model("enformer", weights, 256, "cpu")  # the workflow's own loader, offline
    assert model.delta(["ACGT" * 64], ["ACGA" + "ACGT" * 63]).shape == (1, 3)  # one variant, three tracks

    (weights / "config.json").unlink()
    proc = run_script("--check", str(site), "--configfile", str(config))
    assert proc.returncode == 1 and "has no config.json" in proc.stderr


def test_check_knows_the_deepsea_scgpt_conch_and_restoration_layouts(tmp_path):
    """The models downloaded by hand: what is missing is named in one line per model (scGPT: per
    file) with the config key and what to do; a complete site passes."""
    from gpubio.models.staging import check, model_needs, stage

    config = {
        "genomics": {"variant_effects": {"enabled": True, "family": "deepsea", "weights": "w/deepsea"}},
        "transcriptomics": {"embeddings": {"family": "scgpt", "weights": "w/scgpt"}},
        "histopathology": {"model": "w/conch"},
        "imaging": {"restoration": {"enabled": True, "model": "denoise_cyto3"}, "segmentation": {"model": "/m"}},
    }
    needs = {n.kind: n for n in model_needs(config)}
    assert {"deepsea", "scgpt", "conch", "cellpose"} <= set(needs)
    assert needs["cellpose"].target == "cellpose/denoise_cyto3"
    site = tmp_path / "site"
    site.mkdir()
    problems = check(site, list(needs.values()))
    for name in ("args.json", "best_model.pt", "vocab.json"):
        assert (
            sum(
                line.startswith("transcriptomics.embeddings.weights: ")
                and line.split("; ")[0].endswith(f"has no {name}")
                for line in problems
            )
            == 1
        )
    deepsea_dir, conch_dir = site / "variant_effects" / "deepsea", site / "histopathology"
    assert (
        f"genomics.variant_effects.weights: {deepsea_dir / 'config.json'} is missing; a deepsea checkpoint is "
        "Beluga's deepsea.beluga.pth as released, or config.json, model.pt and features.txt" in problems
    )
    (conch_line,) = [line for line in problems if line.startswith("histopathology.model: ")]
    assert conch_line.startswith(
        f"histopathology.model: {conch_dir}: missing pytorch_model.bin, conch_byte_level_bpe_uncased.json;"
    )
    assert any(line.startswith("imaging.restoration.model:") for line in problems)
    files = {
        "deepsea": ["deepsea.beluga.pth"],
        "scgpt": ["args.json", "best_model.pt", "vocab.json"],
        "conch": ["pytorch_model.bin", "conch_byte_level_bpe_uncased.json"],
    }
    for need in needs.values():
        target = site / need.target
        if need.kind == "cellpose":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"weights")
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in files[need.kind]:
            (target / name).write_text("x")
    assert check(site, list(needs.values())) == []
    # a CONCH model config that is not CONCH's cannot load: named by --check
    (conch_dir / "conch_ViT-B-16.json").write_text(json.dumps({"embed_dim": 512, "vision_cfg": {"depth": 12}}))
    assert check(site, [needs["conch"]]) == [
        f"histopathology.model: {conch_dir / 'conch_ViT-B-16.json'}: unknown key(s) depth in vision_cfg"
    ]
    with pytest.raises(Exception, match="checkpoint is downloaded by hand"):
        stage(tmp_path / "other", [needs["scgpt"]], log=lambda *_: None)

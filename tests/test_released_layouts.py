"""Model files in the layouts their authors release, at small size with random weights: CONCH
(pytorch_model.bin with CoCa's keys, CONCH's tokenizer file and model config), Beluga
(deepsea.beluga.pth alone) and Kipoi's port of DeepSEA 0.94 through `stage-models --convert`.

The state dicts are written here key by key from the published architectures (CONCH's
conch/open_clip_custom code: timm ViT trunk, open_clip attentional pooler and text tower;
ExPecto's Beluga class; Kipoi's DeepSEA model_architecture.py), and each output is checked
against a forward pass written here in float64, not gpubio's modules.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import REPO
from independent.deepsea import BelugaShaped, expected_effects
from independent.genomics import write_fasta
from tiny_vlm import SPECIAL_TOKENS, model_config, write_tokenizer

torch.set_num_threads(1)
SCRIPT = REPO / "scripts" / "stage-models"
PROMPTS = ["an H&E image of tumor tissue", "stroma with pink fibres", "lymphocytes", "necrosis and debris"]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- CONCH


def conch_state(config: dict, seed: int) -> dict:
    """Every key of CONCH's CoCa (conch/open_clip_custom/coca_model.py) for `config`, random."""
    g = torch.Generator().manual_seed(seed)
    v, t, m = config["vision_cfg"], config["text_cfg"], config["multimodal_cfg"]
    width, embed, caption, tw = v["width"], config["embed_dim"], config["embed_dim_caption"], t["width"]
    grid = v["image_size"] // v["patch_size"]

    def w(*shape, scale=None):
        return torch.randn(*shape, generator=g) * (scale if scale is not None else shape[-1] ** -0.5)

    def ln(prefix, n):
        return {f"{prefix}.weight": 1 + w(n, scale=0.1), f"{prefix}.bias": w(n, scale=0.1)}

    def linear(prefix, n_out, n_in):
        return {f"{prefix}.weight": w(n_out, n_in), f"{prefix}.bias": w(n_out, scale=0.1)}

    def openclip_block(prefix, n, cross=False):
        block = {**ln(f"{prefix}.ln_1", n), **ln(f"{prefix}.ln_2", n)}
        block |= {f"{prefix}.attn.in_proj_weight": w(3 * n, n), f"{prefix}.attn.in_proj_bias": w(3 * n, scale=0.1)}
        block |= linear(f"{prefix}.attn.out_proj", n, n)
        block |= linear(f"{prefix}.mlp.c_fc", 4 * n, n) | linear(f"{prefix}.mlp.c_proj", n, 4 * n)
        return block | (ln(f"{prefix}.ln_1_kv", n) if cross else {})

    state = {"logit_scale": torch.tensor(math.log(1 / 0.07))}
    state |= {"text.text_projection": w(tw, embed), "text.cls_emb": w(tw, scale=0.5)}
    state |= {"text.positional_embedding": w(t["context_length"], tw, scale=0.5)}
    state |= {"text.token_embedding.weight": w(t["vocab_size"], tw, scale=1.0), **ln("text.ln_final", tw)}
    for i in range(t["layers"]):
        state |= openclip_block(f"text.transformer.resblocks.{i}", tw)
    trunk = "visual.trunk"
    state |= {
        f"{trunk}.cls_token": w(1, 1, width, scale=0.5),
        f"{trunk}.pos_embed": w(1, grid * grid + 1, width, scale=0.5),
    }
    state |= {f"{trunk}.patch_embed.proj.weight": w(width, 3, v["patch_size"], v["patch_size"], scale=0.1)}
    state |= {f"{trunk}.patch_embed.proj.bias": w(width, scale=0.1), **ln(f"{trunk}.norm", width)}
    for i in range(v["layers"]):
        b = f"{trunk}.blocks.{i}"
        state |= ln(f"{b}.norm1", width) | ln(f"{b}.norm2", width)
        state |= linear(f"{b}.attn.qkv", 3 * width, width) | linear(f"{b}.attn.proj", width, width)
        state |= linear(f"{b}.mlp.fc1", 4 * width, width) | linear(f"{b}.mlp.fc2", width, 4 * width)
    pool = "visual.attn_pool_contrast"  # d_model embed_dim, keys and values from the trunk's width
    state |= {f"{pool}.query": w(1, embed, scale=1.0), f"{pool}.attn.q_proj_weight": w(embed, embed)}
    state |= {f"{pool}.attn.k_proj_weight": w(embed, width), f"{pool}.attn.v_proj_weight": w(embed, width)}
    state |= {f"{pool}.attn.in_proj_bias": w(3 * embed, scale=0.1)} | linear(f"{pool}.attn.out_proj", embed, embed)
    state |= ln(f"{pool}.ln_q", embed) | ln(f"{pool}.ln_k", width) | ln("visual.ln_contrast", embed)
    state |= {"visual.proj_contrast": w(embed, embed)}
    # captioning: not used for embeddings, present in the released file
    cap = "visual.attn_pool_caption"
    state |= {f"{cap}.query": w(v["n_queries_caption"], caption), f"{cap}.attn.in_proj_weight": w(3 * caption, caption)}
    state |= {f"{cap}.attn.in_proj_bias": w(3 * caption)} | linear(f"{cap}.attn.out_proj", caption, caption)
    state |= ln(f"{cap}.ln_q", caption) | ln(f"{cap}.ln_k", width) | ln("visual.ln_caption", caption)
    for i in range(m["layers"]):
        state |= openclip_block(f"text_decoder.resblocks.{i}", m["width"])
        state |= openclip_block(f"text_decoder.cross_attn.{i}", m["width"], cross=True)
    state |= ln("text_decoder.ln_final", m["width"]) | {"text_decoder.text_projection": w(m["width"], m["vocab_size"])}
    return state


def write_conch(directory: Path, seed: int = 0, context_length: int = 16) -> tuple[dict, dict]:
    size = write_tokenizer(directory / "conch_byte_level_bpe_uncased.json", PROMPTS, vocab_size=290)
    config = model_config(size, context_length)
    config["vision_cfg"]["width"] = 24  # not embed_dim: the pooler projects keys and values apart
    state = conch_state(config, seed)
    torch.save(state, directory / "pytorch_model.bin")
    (directory / "conch_ViT-B-16.json").write_text(json.dumps(config))
    return config, state


def layer_norm(x, s, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], s[f"{prefix}.weight"], s[f"{prefix}.bias"], eps)


def attention(q, k, v, heads, mask=None):
    """(batch, n, d) each; softmax(q k^T / sqrt(head dim) + mask) v, heads concatenated."""
    b, n, d = q.shape
    split = [x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2) for x in (q, k, v)]
    scores = split[0] @ split[1].transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores + mask[:, None]
    return (torch.softmax(scores, -1) @ split[2]).transpose(1, 2).reshape(b, n, d)


def reference_image(state: dict, config: dict, pixels: torch.Tensor) -> np.ndarray:
    """CONCH's encode_image(normalize=False) in float64: timm ViT, attentional pooler, projection."""
    s = {k: x.double() for k, x in state.items()}
    v, heads = config["vision_cfg"], config["vision_cfg"]["num_heads"]
    t = "visual.trunk"
    x = F.conv2d(
        pixels.double(), s[f"{t}.patch_embed.proj.weight"], s[f"{t}.patch_embed.proj.bias"], stride=v["patch_size"]
    )
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s[f"{t}.cls_token"].expand(len(x), 1, -1), x], 1) + s[f"{t}.pos_embed"]
    for i in range(v["layers"]):
        b = f"{t}.blocks.{i}"
        h = layer_norm(x, s, f"{b}.norm1", 1e-6)
        q, k, val = (h @ s[f"{b}.attn.qkv.weight"].T + s[f"{b}.attn.qkv.bias"]).chunk(3, -1)
        x = x + attention(q, k, val, heads) @ s[f"{b}.attn.proj.weight"].T + s[f"{b}.attn.proj.bias"]
        h = F.gelu(layer_norm(x, s, f"{b}.norm2", 1e-6) @ s[f"{b}.mlp.fc1.weight"].T + s[f"{b}.mlp.fc1.bias"])
        x = x + h @ s[f"{b}.mlp.fc2.weight"].T + s[f"{b}.mlp.fc2.bias"]
    tokens = layer_norm(layer_norm(x, s, f"{t}.norm", 1e-6), s, "visual.attn_pool_contrast.ln_k", 1e-5)
    p = "visual.attn_pool_contrast"
    e = config["embed_dim"]
    query = layer_norm(s[f"{p}.query"], s, f"{p}.ln_q", 1e-5).expand(len(x), -1, -1)
    bias = s[f"{p}.attn.in_proj_bias"]
    q = query @ s[f"{p}.attn.q_proj_weight"].T + bias[:e]
    k = tokens @ s[f"{p}.attn.k_proj_weight"].T + bias[e : 2 * e]
    val = tokens @ s[f"{p}.attn.v_proj_weight"].T + bias[2 * e :]
    pooled = (
        attention(q, k, val, v["attn_pooler_heads"]) @ s[f"{p}.attn.out_proj.weight"].T + s[f"{p}.attn.out_proj.bias"]
    )
    return (layer_norm(pooled[:, 0], s, "visual.ln_contrast", 1e-5) @ s["visual.proj_contrast"]).numpy()


def reference_text(state: dict, config: dict, tokens: torch.Tensor) -> np.ndarray:
    """CONCH's encode_text(normalize=False) in float64 on (batch, context_length - 1) ids: the
    class embedding appended, causal attention, and the class token seeing the text as open_clip's
    build_cls_mask lets it (column 0 always; column j + 1 when token j is not <pad> = 0)."""
    s = {k: x.double() for k, x in state.items()}
    t = config["text_cfg"]
    n, length = tokens.shape
    x = torch.cat([s["text.token_embedding.weight"][tokens], s["text.cls_emb"].expand(n, 1, -1)], 1)
    x = x + s["text.positional_embedding"][: length + 1]
    mask = torch.zeros(n, length + 1, length + 1, dtype=torch.float64)
    for i in range(length + 1):
        mask[:, i, i + 1 :] = float("-inf")
    for row in range(n):
        for j in range(length):
            if tokens[row, j] == 0:
                mask[row, length, j + 1] = float("-inf")
    for i in range(t["layers"]):
        b = f"text.transformer.resblocks.{i}"
        h = layer_norm(x, s, f"{b}.ln_1", 1e-5)
        q, k, val = (h @ s[f"{b}.attn.in_proj_weight"].T + s[f"{b}.attn.in_proj_bias"]).chunk(3, -1)
        x = x + attention(q, k, val, t["heads"], mask) @ s[f"{b}.attn.out_proj.weight"].T + s[f"{b}.attn.out_proj.bias"]
        h = F.gelu(layer_norm(x, s, f"{b}.ln_2", 1e-5) @ s[f"{b}.mlp.c_fc.weight"].T + s[f"{b}.mlp.c_fc.bias"])
        x = x + h @ s[f"{b}.mlp.c_proj.weight"].T + s[f"{b}.mlp.c_proj.bias"]
    return (layer_norm(x[:, -1], s, "text.ln_final", 1e-5) @ s["text.text_projection"]).numpy()


@pytest.fixture(scope="module")
def conch(tmp_path_factory):
    directory = tmp_path_factory.mktemp("conch")
    config, state = write_conch(directory)
    return directory, config, state


def test_conch_as_released_embeds_images_and_texts_as_its_architecture(conch):
    from gpubio.histopathology.model import load_model

    directory, config, state = conch
    model = load_model(directory)
    rng = np.random.default_rng(5)
    tiles = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    images = model.embed_images(tiles)
    assert images.shape == (3, 16) and images.dtype == np.float32
    pixels = torch.from_numpy(tiles).permute(0, 3, 1, 2).double() / 255
    mean, std = torch.tensor(model.mean.flatten().tolist()), torch.tensor(model.std.flatten().tolist())
    pixels = (pixels - mean.view(1, 3, 1, 1).double()) / std.view(1, 3, 1, 1).double()
    np.testing.assert_allclose(images, reference_image(state, config, pixels), rtol=1e-4, atol=1e-4)

    texts = [PROMPTS[0], "pink FIBRES", "a prompt far longer than the sixteen tokens of this context " * 3]
    ids = model.tokenizer.encode(texts, 15)
    assert ids.shape == (3, 15) and (ids[:, 0] == SPECIAL_TOKENS.index("<start_of_text>")).all()
    assert ids[2, -1] == SPECIAL_TOKENS.index("<end_of_text>") and (ids[1, -3:] == 0).all()  # cut, padded
    np.testing.assert_allclose(model.embed_texts(texts), reference_text(state, config, ids), rtol=1e-4, atol=1e-4)
    assert model.logit_scale == pytest.approx(1 / 0.07)

    again = load_model(directory)  # deterministic on the CPU: the same numbers from a second load
    assert np.array_equal(again.embed_images(tiles), images) and np.array_equal(
        again.embed_texts(texts), model.embed_texts(texts)
    )


def test_conch_tokens_are_conchs_tokenize_recipe(conch):
    """CONCH's tokenize(): PreTrainedTokenizerFast, max_length 127, padded, then the last place kept
    for the class embedding: the same ids as the loader's at the full context length."""
    from transformers import PreTrainedTokenizerFast

    from gpubio.histopathology.model import load_model

    directory, _, _ = conch
    theirs = PreTrainedTokenizerFast(
        tokenizer_file=str(directory / "conch_byte_level_bpe_uncased.json"),
        bos_token="<start_of_text>",
        eos_token="<end_of_text>",
        pad_token="<pad>",
    )
    expected = theirs.batch_encode_plus(
        PROMPTS, max_length=15, truncation=True, padding="max_length", return_tensors="pt"
    )
    assert torch.equal(load_model(directory).tokenizer.encode(PROMPTS, 15), expected["input_ids"])


def test_conch_files_that_do_not_fit_fail_with_one_line_each(conch, tmp_path):
    from gpubio.histopathology.model import ModelError, load_model

    directory, config, state = conch

    def variant(name: str, state=state, config=config, tokenizer=True) -> Path:
        d = tmp_path / name
        d.mkdir()
        torch.save(state, d / "pytorch_model.bin")
        (d / "conch_ViT-B-16.json").write_text(json.dumps(config))
        if tokenizer:
            (d / "conch_byte_level_bpe_uncased.json").write_bytes(
                (directory / "conch_byte_level_bpe_uncased.json").read_bytes()
            )
        return d

    cases = {
        "no_tokenizer": (
            variant("no_tokenizer", tokenizer=False),
            r"missing conch_byte_level_bpe_uncased.json; a CONCH",
        ),
        "missing": (
            variant("missing", state={k: x for k, x in state.items() if k != "visual.proj_contrast"}),
            r"1 weights of CONCH's image and text towers are missing \(e.g. visual.proj_contrast\)",
        ),
        "wider": (
            variant("wider", config={**config, "embed_dim": 32}),
            r"text.text_projection has shape \(32, 16\) but conch_ViT-B-16.json implies \(32, 32\)",
        ),
        "extra": (
            variant("extra", state={**state, "visual.head.proj.weight": torch.zeros(2, 2)}),
            r"weights CONCH does not have \(e.g. visual.head.proj.weight\)",
        ),
        "not_conch": (
            variant("not_conch", config={**config, "text_cfg": {**config["text_cfg"], "embed_cls": False}}),
            r"not CONCH's architecture",
        ),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(ModelError, match=message) as error:
            load_model(path)
        assert "\n" not in str(error.value), name
    damaged = variant("damaged")
    (damaged / "pytorch_model.bin").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="pytorch_model.bin cannot be read as a torch state dict"):
        load_model(damaged)


def test_convert_conch_gathers_the_weights_and_the_code_tokenizer(conch, tmp_path):
    """The Hugging Face folder with a clone of CONCH's code inside: --convert writes the three
    files the workflow reads and loads them; without the tokenizer it names the file to get."""
    directory, _, _ = conch
    download = tmp_path / "MahmoodLab-CONCH"
    code = download / "CONCH" / "conch" / "open_clip_custom"
    (code / "tokenizers").mkdir(parents=True)
    (code / "model_configs").mkdir()
    (download / "pytorch_model.bin").write_bytes((directory / "pytorch_model.bin").read_bytes())
    (download / "meta.yaml").write_text("license: cc-by-nc-nd-4.0\n")
    name = "conch_byte_level_bpe_uncased.json"
    (code / "tokenizers" / name).write_bytes((directory / name).read_bytes())
    (code / "model_configs" / "conch_ViT-B-16.json").write_bytes((directory / "conch_ViT-B-16.json").read_bytes())
    dest = tmp_path / "site" / "histopathology"
    proc = run_script("--convert", "conch", str(download), str(dest))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["conch_ViT-B-16.json", name, "pytorch_model.bin"]
    assert proc.stdout.splitlines()[-1] == f"histopathology.model: {dest.resolve()}"
    assert "CONCH loads: ViT 2 x 24 at 32 px, text 2 x 32, 16-dimensional embeddings" in proc.stdout

    (code / "tokenizers" / name).unlink()
    proc = run_script("--convert", "conch", str(download), str(tmp_path / "other"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith(f"stage-models: --convert conch: {download}: no {name}; put CONCH's code")


# --------------------------------------------------------------------------- Beluga and DeepSEA


class KipoiDeepsea(nn.Module):
    """Kipoi's DeepSEA/variantEffects module (model_architecture.py): ReCodeAlphabet (ACGT to
    AGCT) then the Torch7 net, so its keys are 1.0, 1.4, 1.8, 1.12.1, 1.14.1. Small widths."""

    outputs_probabilities = True

    def __init__(self, channels: tuple[int, int, int], hidden: int, outputs: int):
        super().__init__()
        a, b, c = channels
        net = nn.Sequential(
            nn.Conv2d(4, a, (1, 8)),
            nn.Threshold(0, 1e-06),
            nn.MaxPool2d((1, 4), (1, 4)),
            nn.Dropout(0.2),
            nn.Conv2d(a, b, (1, 8)),
            nn.Threshold(0, 1e-06),
            nn.MaxPool2d((1, 4), (1, 4)),
            nn.Dropout(0.2),
            nn.Conv2d(b, c, (1, 8)),
            nn.Threshold(0, 1e-06),
            nn.Dropout(0.5),
            nn.Flatten(),  # Kipoi's weightless Lambda
            nn.Sequential(nn.Identity(), nn.Linear(c * 53, hidden)),
            nn.Threshold(0, 1e-06),
            nn.Sequential(nn.Identity(), nn.Linear(hidden, outputs)),
            nn.Sigmoid(),
        )
        self.model = nn.Sequential(nn.Identity(), net)  # index 0: ReCodeAlphabet holds no weights

    def forward(self, x):  # (batch, 4, 1000) in ACGT order
        return self.model(x[:, [0, 2, 1, 3]].unsqueeze(2))

    def state_dict(self, *args, **kwargs):
        return {k.removeprefix("model."): v for k, v in super().state_dict(*args, **kwargs).items()}


@pytest.fixture(scope="module")
def genome(tmp_path_factory):
    import pysam

    rng = np.random.default_rng(18)
    contigs = {"chr7": "".join(np.array(list("ACGT"))[rng.integers(0, 4, 2600)])}
    path = write_fasta(contigs, tmp_path_factory.mktemp("genome") / "genome.fa")
    pysam.faidx(str(path))
    return path, contigs


def score(weights: Path, fasta: Path, contigs: dict, records: list[tuple], tmp_path: Path):
    from gpubio.genomics import effects

    vcf = tmp_path / "v.vcf"
    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={c},length={len(s)}>" for c, s in contigs.items())]
    lines += [
        "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO",
        *(f"{c}\t{p}\t.\t{r}\t{a}\t50\tPASS\t." for c, p, r, a in records),
    ]
    vcf.write_text("\n".join(lines) + "\n")
    model = effects.load_effect_model("deepsea", weights, 196608, "cpu")
    return effects.score_variants(model, str(fasta), list(effects.read_variants(str(vcf))), 3)


def snvs(contig: str, positions: list[int]) -> list[tuple]:
    other = {"A": "G", "C": "T", "G": "A", "T": "C"}
    return [("chr7", p, contig[p - 1], other[contig[p - 1]]) for p in positions]


def test_beluga_as_released_scores_with_its_authors_architecture(genome, tmp_path):
    """deepsea.beluga.pth alone (no config.json, no names): Beluga's window, AGCT order, N = 0,
    widths read from the weights, outputs named track_<i>; with features.txt, by name."""
    fasta, contigs = genome
    torch.manual_seed(4)
    module = BelugaShaped(2000, (5, 6, 7), 9, 6).eval()
    with torch.no_grad():
        module.model[1][4][1].weight.mul_(25.0)
    weights = tmp_path / "beluga"
    weights.mkdir()
    torch.save(module.state_dict(), weights / "deepsea.beluga.pth")
    records = snvs(contigs["chr7"], [3, 900, 1300, 2598])
    rows = score(weights, fasta, contigs, records, tmp_path)
    names = [f"track_{i}" for i in range(6)]
    expected = expected_effects(module, contigs, records, 2000, "AGCT", 0.0, names)
    assert [r["top_track"] for r in rows] == [e["top_track"] for e in expected]
    for row, want in zip(rows, expected):
        for key in ("score", "top_track_delta", "top_track_log_odds_delta", "mean_abs_delta"):
            assert row[key] == pytest.approx(want[key], rel=1e-5, abs=2e-6), (row["variant"], key)
    assert max(r["score"] for r in rows) > 1e-4  # the variants move the predictions
    assert score(weights, fasta, contigs, records, tmp_path) == rows  # deterministic

    (weights / "features.txt").write_text("".join(f"Beluga_{i}\n" for i in range(6)))
    named = score(weights, fasta, contigs, records, tmp_path)
    assert [r["top_track"] for r in named] == [e["top_track"].replace("track_", "Beluga_") for e in expected]

    from gpubio.genomics import deepsea
    from gpubio.genomics.inputs import InputError

    assert deepsea.checkpoint_problems(weights, "k") == []
    torch.save({"model.0.0.weight": torch.zeros(5, 4, 1, 8)}, weights / "deepsea.beluga.pth")
    with pytest.raises(InputError, match=r"is not Beluga's state dict \(no model.0.2.weight, model.0.6.weight"):
        deepsea.load_network(weights, "cpu")


def test_convert_deepsea_reads_kipois_port_and_refuses_torch7(genome, tmp_path):
    fasta, contigs = genome
    torch.manual_seed(7)
    module = KipoiDeepsea((5, 6, 7), 8, 5).eval()
    with torch.no_grad():
        module.model[1][14][1].weight.mul_(20.0)
    download = tmp_path / "kipoi"
    download.mkdir()
    torch.save(module.state_dict(), download / "deepsea_variant_effects.pth")
    assert "1.12.1.weight" in torch.load(download / "deepsea_variant_effects.pth", weights_only=True)
    features = [f"DNase|cell{i}" for i in range(5)]
    (download / "predictor_names.txt").write_text("\n".join(features) + "\n")
    dest = tmp_path / "site" / "variant_effects" / "deepsea"
    proc = run_script("--convert", "deepsea", str(download / "deepsea_variant_effects.pth"), str(dest))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"genomics.variant_effects.weights: {dest.resolve()}"
    config = json.loads((dest / "config.json").read_text())
    assert (config["window"], config["alphabet"], config["unknown_base"], config["threshold_value"]) == (
        1000,
        "AGCT",
        0.25,
        1e-6,
    )
    records = snvs(contigs["chr7"], [2, 450, 1250, 2599])
    rows = score(dest, fasta, contigs, records, tmp_path)
    # Kipoi feeds ACGT with N = 0.25 in every channel and recodes to AGCT inside the module
    expected = expected_effects(module, contigs, records, 1000, "ACGT", 0.25, features)
    assert [r["top_track"] for r in rows] == [e["top_track"] for e in expected]
    for row, want in zip(rows, expected):
        for key in ("score", "top_track_delta", "mean_abs_delta"):
            assert row[key] == pytest.approx(want[key], rel=1e-5, abs=2e-6), (row["variant"], key)

    torch7 = tmp_path / "deepsea.cpu"
    torch7.write_bytes(np.array([4, 1], dtype="<i4").tobytes() + b"\x00" * 64)  # a Torch7 object header
    proc = run_script("--convert", "deepsea", str(torch7), str(tmp_path / "t7"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        f"{torch7} is not a PyTorch state dict; Torch7 files (DeepSEA 0.94's deepsea.cpu) are not read" in proc.stderr
    )

    (download / "predictor_names.txt").unlink()
    proc = run_script("--convert", "deepsea", str(download / "deepsea_variant_effects.pth"), str(tmp_path / "x"))
    assert proc.returncode == 1 and "give the feature names with --features" in proc.stderr

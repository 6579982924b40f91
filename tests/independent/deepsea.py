"""Tiny DeepSEA-style checkpoints, the expected scores computed straight from the torch module,
and a small genome with reads for a workflow run: for the deepsea variant-effect family.

The modules here are written independently of gpubio: they only share the checkpoint layout
(config.json, model.pt with conv.<i>/dense.<j> keys, features.txt), so a loader that builds
the network wrongly, one-hot encodes in the wrong channel order or averages the strands
wrongly disagrees with them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pysam
import torch
from torch import nn

from independent.genomics import revcomp

EPSILON = 1e-6  # DeepSEA's: probabilities are offset by it before taking odds


class TinyDeepsea(nn.Module):
    """Conv -> ReLU [-> max-pool] per layer, then dense ReLU layers, then logits.

    ``conv2d`` builds Beluga's Conv2d layers with (1, k) kernels over (batch, 4, 1, L) input,
    so the state dict holds 4-D conv weights as the published Beluga file does.
    """

    def __init__(self, window: int, conv: list[dict], hidden: list[int], outputs: int, conv2d: bool = False):
        super().__init__()
        self.conv2d, self.pools = conv2d, [layer.get("pool", 1) for layer in conv]
        channels = [4] + [layer["channels"] for layer in conv]
        make = (lambda i, o, k: nn.Conv2d(i, o, (1, k))) if conv2d else nn.Conv1d
        self.conv = nn.ModuleList(make(channels[i], layer["channels"], layer["kernel"]) for i, layer in enumerate(conv))
        length = window
        for layer in conv:
            length = (length - layer["kernel"] + 1) // layer.get("pool", 1)
        sizes = [channels[-1] * length, *hidden, outputs]
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):  # x: (batch, 4, L)
        if self.conv2d:
            x = x.unsqueeze(2)
        for conv, pool in zip(self.conv, self.pools):
            x = torch.relu(conv(x))
            if pool > 1:
                x = nn.functional.max_pool2d(x, (1, pool)) if self.conv2d else nn.functional.max_pool1d(x, pool)
        x = x.reshape(x.shape[0], -1)
        for dense in self.dense[:-1]:
            x = torch.relu(dense(x))
        return self.dense[-1](x)


class BelugaShaped(nn.Module):
    """Beluga's published module structure (Zhou et al. 2018), so its state dict has the same
    keys (model.0.0 ... model.1.4.1), with small channel counts. Takes (batch, 4, L) in AGCT
    order and returns probabilities, as Beluga ends in a sigmoid."""

    outputs_probabilities = True

    def __init__(self, window: int, channels: tuple[int, int, int], hidden: int, outputs: int):
        super().__init__()
        a, b, c = channels
        length = ((window - 14) // 4 - 14) // 4 - 14
        self.model = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(4, a, (1, 8)),
                nn.ReLU(),
                nn.Conv2d(a, a, (1, 8)),
                nn.ReLU(),
                nn.Dropout(0.2),
                nn.MaxPool2d((1, 4), (1, 4)),
                nn.Conv2d(a, b, (1, 8)),
                nn.ReLU(),
                nn.Conv2d(b, b, (1, 8)),
                nn.ReLU(),
                nn.Dropout(0.2),
                nn.MaxPool2d((1, 4), (1, 4)),
                nn.Conv2d(b, c, (1, 8)),
                nn.ReLU(),
                nn.Conv2d(c, c, (1, 8)),
                nn.ReLU(),
            ),
            nn.Sequential(  # Beluga's Lambda layers hold no weights: Flatten / Identity keep the indices
                nn.Dropout(0.5),
                nn.Flatten(),
                nn.Sequential(nn.Identity(), nn.Linear(c * length, hidden)),
                nn.ReLU(),
                nn.Sequential(nn.Identity(), nn.Linear(hidden, outputs)),
            ),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return self.model(x.unsqueeze(2))


def write_beluga_shaped(
    out: Path, *, window: int, channels: tuple[int, int, int], hidden: int, features: list[str], seed: int
) -> BelugaShaped:
    """Its state dict saved as is (as a user copies deepsea.beluga.pth), and a config.json naming its layers."""
    torch.manual_seed(seed)
    module = BelugaShaped(window, channels, hidden, len(features))
    with torch.no_grad():
        module.model[1][4][1].weight.mul_(25.0)
    out.mkdir(parents=True, exist_ok=True)
    a, b, c = channels
    config = {
        "window": window,
        "alphabet": "AGCT",
        "conv_layers": [
            {"channels": a, "kernel": 8},
            {"channels": a, "kernel": 8, "pool": 4},
            {"channels": b, "kernel": 8},
            {"channels": b, "kernel": 8, "pool": 4},
            {"channels": c, "kernel": 8},
            {"channels": c, "kernel": 8},
        ],
        "hidden": [hidden],
        "state_dict_keys": {
            "conv": ["model.0.0", "model.0.2", "model.0.6", "model.0.8", "model.0.12", "model.0.14"],
            "dense": ["model.1.2.1", "model.1.4.1"],
        },
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    torch.save(module.state_dict(), out / "model.pt")
    (out / "features.txt").write_text("".join(f"{name}\n" for name in features))
    return module.eval()


def write_checkpoint(
    out: Path,
    *,
    window: int,
    conv: list[dict],
    hidden: list[int],
    features: list[str],
    seed: int,
    alphabet: str | None = None,
    unknown_base: float | None = None,
    conv2d: bool = False,
) -> TinyDeepsea:
    """A random-init model saved in the deepsea layout; returns the module (eval mode)."""
    torch.manual_seed(seed)
    module = TinyDeepsea(window, conv, hidden, len(features), conv2d=conv2d)
    with torch.no_grad():  # larger output weights: probabilities spread over (0, 1), not all near 0.5
        module.dense[-1].weight.mul_(25.0)
    out.mkdir(parents=True, exist_ok=True)
    config = {"window": window, "conv_layers": conv, "hidden": hidden}
    if alphabet is not None:
        config["alphabet"] = alphabet
    if unknown_base is not None:
        config["unknown_base"] = unknown_base
    (out / "config.json").write_text(json.dumps(config, indent=1))
    torch.save(module.state_dict(), out / "model.pt")
    (out / "features.txt").write_text("".join(f"{name}\n" for name in features))
    return module.eval()


def encode(seq: str, alphabet: str, unknown_base: float) -> np.ndarray:
    """(4, L) one-hot in the given channel order; any other letter is unknown_base in every channel."""
    out = np.full((4, len(seq)), unknown_base, dtype=np.float32)
    for i, base in enumerate(seq.upper()):
        if base in alphabet:
            out[:, i] = 0.0
            out[alphabet.index(base), i] = 1.0
    return out


def strand_probabilities(module: TinyDeepsea, seqs: list[str], alphabet: str, unknown_base: float):
    """(forward, reverse-complement) sigmoid outputs, each (n, features) float64."""

    def run(strings):
        x = torch.from_numpy(np.stack([encode(s, alphabet, unknown_base) for s in strings]))
        with torch.no_grad():
            out = module(x).double()
        return (out if getattr(module, "outputs_probabilities", False) else torch.sigmoid(out)).numpy()

    return run(seqs), run([revcomp(s) for s in seqs])


def ref_alt_windows(contig: str, pos: int, ref: str, alt: str, window: int) -> tuple[str, str]:
    """Windows with the variant's first base at index window // 2, N beyond the contig ends."""
    padded = "N" * window + contig.upper() + "N" * (window + len(ref))
    start = pos - 1 - window // 2 + window
    context = padded[start : start + window + len(ref)]
    centre = window // 2
    assert context[centre : centre + len(ref)] == ref.upper()
    return context[:window], (context[:centre] + alt.upper() + context[centre + len(ref) :])[:window]


def expected_effects(
    module,
    contigs: dict[str, str],
    variants: list[tuple],
    window: int,
    alphabet: str,
    unknown_base: float,
    features: list[str],
    strands: str = "both",
) -> list[dict]:
    """Per variant: score, top feature, its delta and log-odds change, mean |delta|.

    strands: "both" (DeepSEA's average), or "forward" to show what skipping the average gives.
    """
    pairs = [ref_alt_windows(contigs[c], p, r, a, window) for c, p, r, a in variants]
    ref_f, ref_r = strand_probabilities(module, [p[0] for p in pairs], alphabet, unknown_base)
    alt_f, alt_r = strand_probabilities(module, [p[1] for p in pairs], alphabet, unknown_base)
    if strands == "both":
        ref_p, alt_p = (ref_f + ref_r) / 2, (alt_f + alt_r) / 2
    else:
        ref_p, alt_p = ref_f, alt_f
    rows = []
    for i in range(len(variants)):
        delta = alt_p[i] - ref_p[i]
        top = int(np.argmax(np.abs(delta)))
        a, r = alt_p[i, top], ref_p[i, top]
        log_odds = np.log((a + EPSILON) / (1 - a + EPSILON)) - np.log((r + EPSILON) / (1 - r + EPSILON))
        rows.append(
            {
                "score": abs(delta[top]),
                "top_track": features[top],
                "top_track_delta": delta[top],
                "top_track_log_odds_delta": log_odds,
                "mean_abs_delta": np.abs(delta).mean(),
            }
        )
    return rows


# --------------------------------------------------------------------------- a genome with reads


def apply_snvs(contigs: dict[str, str], snvs: list[tuple]) -> dict[str, str]:
    """The sample's (homozygous) sequence: each SNV's ALT in place, case of the reference kept."""
    out = {name: list(seq) for name, seq in contigs.items()}
    for chrom, pos, ref, alt in snvs:
        assert out[chrom][pos - 1].upper() == ref
        out[chrom][pos - 1] = alt if out[chrom][pos - 1].isupper() else alt.lower()
    return {name: "".join(seq) for name, seq in out.items()}


def write_tiled_bam(sample_contigs: dict[str, str], out: Path, read_length: int = 90, step: int = 3) -> int:
    """A coordinate-sorted aligned BAM of error-free reads tiling every contig on both strands,
    extra reads flush with each contig end, so variants near the ends have depth too."""
    header = {
        "HD": {"VN": "1.6", "SO": "coordinate"},
        "SQ": [{"SN": name, "LN": len(seq)} for name, seq in sample_contigs.items()],
    }
    count = 0
    with pysam.AlignmentFile(str(out), "wb", header=header) as bam:
        for tid, (name, seq) in enumerate(sample_contigs.items()):
            last = len(seq) - read_length
            starts = sorted([*range(0, last + 1, step), *[0] * 12, *[last] * 12])
            for k, start in enumerate(starts):
                rec = pysam.AlignedSegment(bam.header)
                rec.query_name = f"{name}_r{k}"
                rec.flag = 16 if k % 2 else 0
                rec.reference_id, rec.reference_start, rec.mapping_quality = tid, start, 60
                rec.cigarstring = f"{read_length}M"
                rec.query_sequence = seq[start : start + read_length].upper()
                rec.query_qualities = pysam.qualitystring_to_array("I" * read_length)
                bam.write(rec)
                count += 1
    return count

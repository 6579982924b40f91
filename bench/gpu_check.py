"""Each GPU path of the workflow on the GPU and on the CPU, on the same small inputs made here:
time of each (GPU / CPU ratio in the same run), agreement of the two, peak GPU memory against
what the rule declares.

Paths: Cellpose segmentation on a tiled image and Cellpose training for a few steps (Cellpose
3, from scratch), learned registration, Enformer-style and DeepSEA (Beluga) variant scoring,
scVI training for a few epochs, CONCH tile embedding, Geneformer- and scGPT-style cell
embedding. The networks have the published architectures at small size with random weights
(nothing is downloaded): the check is that the GPU computes what the CPU computes, and how fast.
Agreement: segmentation ARI >= 0.95 (and matched-cell IoU), embeddings' correlation >= 0.99,
scores within 1e-3 of the largest score, training losses within 10 %.

    python bench/gpu_check.py                       # on a GPU machine: GPU and CPU, writes the table
    python bench/gpu_check.py --device cpu          # the same code on the CPU only (small inputs)

On a GPU the table goes to bench/results/gpu.md (with the machine, versions and command);
with --device cpu to --out (default: printed only). RAPIDS (rapids-singlecell) is checked
only where it is installed. Exit status 1 when a check disagrees.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "workflow"))

# input sizes: "full" for a GPU run (one call within 10 minutes, CPU legs included), "quick" for --device cpu
SIZES = {
    "full": {
        "image": 1024,
        "tile": 512,
        "overlap": 64,
        "train_images": 4,
        "train_steps": 60,
        "register": 256,
        "register_iterations": 200,
        "variants": 64,
        "enformer_length": 8192,
        "cells": 2000,
        "scvi_epochs": 10,
        "tiles": 64,
        "sentences": 256,
    },
    "quick": {
        "image": 128,
        "tile": 80,
        "overlap": 16,
        "train_images": 1,
        "train_steps": 1,
        "register": 48,
        "register_iterations": 10,
        "variants": 4,
        "enformer_length": 1024,
        "cells": 120,
        "scvi_epochs": 2,
        "tiles": 4,
        "sentences": 8,
    },
}


def timed(fn, device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn(device)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None
    return out, seconds, peak


def correlation(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if np.allclose(a, b):
        return 1.0
    return float(np.corrcoef(a, b)[0, 1])


def score_agreement(cpu, gpu):
    """Variant scores agree within 1e-3 of the largest score."""
    diff = float(np.abs(cpu - gpu).max() / max(np.abs(cpu).max(), 1e-12))
    return diff <= 1e-3, f"largest score difference {diff:.2e} of the largest score"


def rowwise_agreement(unit: str):
    """Embeddings agree when every row's correlation across the two devices is >= 0.99."""

    def agree(cpu, gpu):
        r = min(correlation(a, b) for a, b in zip(cpu, gpu))
        return r >= 0.99, f"lowest per-{unit} correlation {r:.6f}"

    return agree


# --------------------------------------------------------------------------- imaging


def synthetic_nuclei(size: int, seed: int):
    """(2, size, size) network input in [0, 1] and its labels (the demo's nuclei)."""
    from gpubio.demo.imaging import random_nuclei, render, to_image

    rng = np.random.default_rng(seed)
    nuclei = random_nuclei(rng, (size, size), max(4, size * size // 1500))
    labels, brightness = render(nuclei, (size, size))
    image = to_image(rng, labels, brightness).astype(np.float32)
    low, high = np.percentile(image, 1, axis=(1, 2)), np.percentile(image, 99.8, axis=(1, 2))
    return np.clip((image - low[:, None, None]) / (high - low)[:, None, None], 0, 1), labels.astype(np.int32)


def cellpose_training(size: dict, work: Path):
    from gpubio.imaging.cellpose_models import import_cellpose, train_model

    cellpose = import_cellpose()
    pairs = [synthetic_nuclei(256, seed) for seed in range(size["train_images"])]

    def run(device):
        import torch

        torch.manual_seed(0)
        np.random.seed(0)
        result = train_model(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            work / f"train_{device}",
            "check",
            torch.device(device),
            cellpose=cellpose,
            steps=size["train_steps"],
            crop_size=128,
            batch_size=8,
        )
        return result

    def agree(cpu, gpu):
        a, b = cpu["losses"][-1], gpu["losses"][-1]
        return abs(a - b) / max(abs(a), 1e-12) <= 0.10, f"final loss {a:.4g} / {b:.4g}"

    return run, agree


def cellpose_segmentation(size: dict, work: Path, model_file: Path):
    from sklearn.metrics import adjusted_rand_score

    from gpubio.imaging.cellpose_models import CellposeSegmenter, ModelChoice, import_cellpose
    from gpubio.imaging.tiling import segment_tiled

    cellpose = import_cellpose()
    image, _ = synthetic_nuclei(size["image"], 7)

    class Image:
        shape = image.shape

        @staticmethod
        def region(y0, y1, x0, x1):
            return image[:, y0:y1, x0:x1]

    class Labels:
        def __init__(self):
            self.data = np.zeros(image.shape[1:], np.uint32)

        def read(self, y0, y1, x0, x1):
            return self.data[y0:y1, x0:x1]

        def write(self, y0, x0, block):
            self.data[y0 : y0 + block.shape[0], x0 : x0 + block.shape[1]] = block

    def run(device):
        import torch

        segmenter = CellposeSegmenter(
            ModelChoice("check", model_file, False), torch.device(device), cellpose, diameter=0.0
        )
        out = Labels()
        summary = segment_tiled(Image, out, segmenter.segment, size["tile"], size["overlap"])
        return {"labels": out.data, **summary}

    def agree(cpu, gpu):
        a, b = cpu["labels"], gpu["labels"]
        ari = adjusted_rand_score(a.ravel(), b.ravel())
        both = (a > 0) | (b > 0)
        iou = float(((a > 0) & (b > 0)).sum() / both.sum()) if both.any() else 1.0
        return ari >= 0.95, f"ARI {ari:.4f}, foreground IoU {iou:.4f}, cells {cpu['cells']} / {gpu['cells']}"

    return run, agree


def learned_registration(size: dict):
    from gpubio.demo.imaging import random_nuclei, render
    from gpubio.imaging.registration import register_learned

    n = size["register"]
    rng = np.random.default_rng(3)
    nuclei = random_nuclei(rng, (2 * n, 2 * n), n * n // 200)
    _, reference = render(nuclei, (n, n))
    shift = np.array([[1, 0, 2.5], [0, 1, -3.0], [0, 0, 1]])
    _, moved = render(nuclei, (n, n), shift)

    def run(device):
        import torch

        result = register_learned(
            reference[None].astype(np.float32),
            moved[None].astype(np.float32),
            levels=(2, 1),
            iterations=size["register_iterations"],
            device=torch.device(device),
            seed=0,
        )
        return result.registered[0]

    def agree(cpu, gpu):
        r = correlation(cpu, gpu)
        return r >= 0.99, f"registered images' correlation {r:.5f}"

    return run, agree


# --------------------------------------------------------------------------- genomics


def random_windows(rng, count: int, length: int) -> tuple[list[str], list[str]]:
    ref = ["".join(rng.choice(list("ACGT"), length)) for _ in range(count)]
    alt = [
        s[: length // 2] + {"A": "C", "C": "G", "G": "T", "T": "A"}[s[length // 2]] + s[length // 2 + 1 :] for s in ref
    ]
    return ref, alt


def enformer_scoring(size: dict, work: Path):
    from gpubio.demo.genomics import write_tiny_enformer
    from gpubio.genomics.effects import load_effect_model

    weights = write_tiny_enformer(work / "enformer", 0, depth=2, num_downsamples=5, output_heads={"human": 16})
    ref, alt = random_windows(np.random.default_rng(1), size["variants"], size["enformer_length"])

    def run(device):
        model = load_effect_model("enformer", weights, size["enformer_length"], device)
        return np.concatenate([model.delta(ref[i : i + 8], alt[i : i + 8]) for i in range(0, len(ref), 8)])

    return run, score_agreement, lambda: 12.0


def deepsea_scoring(size: dict, work: Path):
    import torch

    from gpubio.genomics import deepsea
    from gpubio.genomics.effects import load_effect_model

    torch.manual_seed(0)
    config = deepsea.beluga_config((32, 48, 64), 128)
    network = deepsea.build_network(config, 96)
    state = {}
    for prefix, (key, value) in zip(
        [k for k in deepsea.BELUGA_KEYS["conv"] for _ in (0, 1)]
        + [k for k in deepsea.BELUGA_KEYS["dense"] for _ in (0, 1)],
        network.state_dict().items(),
    ):
        part = key.rsplit(".", 1)[1]
        state[f"{prefix}.{part}"] = value.unsqueeze(2) if key.startswith("conv.") and part == "weight" else value
    weights = work / "beluga"
    weights.mkdir()
    torch.save(state, weights / deepsea.BELUGA_FILE)
    ref, alt = random_windows(np.random.default_rng(2), size["variants"], 2000)

    def run(device):
        model = load_effect_model("deepsea", weights, 2000, device)
        return np.concatenate([model.delta(ref[i : i + 32], alt[i : i + 32]) for i in range(0, len(ref), 32)])

    return run, score_agreement, lambda: deepsea.vram_gb(weights, 32)


# --------------------------------------------------------------------------- transcriptomics


def synthetic_counts(cells: int, genes: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    programme = rng.integers(0, 3, cells)
    rate = np.full((cells, genes), 0.2)
    for p in range(3):
        rate[programme == p, p * 40 : p * 40 + 40] = 6.0
    return rng.poisson(rate).astype(np.float32), programme


def scvi_training(size: dict):
    import anndata as ad

    counts, _ = synthetic_counts(size["cells"])

    def run(device):
        import scvi

        scvi.settings.seed = 0
        adata = ad.AnnData(counts.copy())
        adata.layers["counts"] = adata.X.copy()
        scvi.model.SCVI.setup_anndata(adata, layer="counts")
        vae = scvi.model.SCVI(adata, n_latent=10, n_hidden=64)
        vae.train(
            max_epochs=size["scvi_epochs"],
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            batch_size=128,
            enable_progress_bar=False,
            enable_checkpointing=False,
        )
        return float(vae.history["elbo_train"].iloc[-1, 0])

    def agree(cpu, gpu):
        return abs(cpu - gpu) / abs(cpu) <= 0.10, f"final ELBO {cpu:.5g} / {gpu:.5g}"

    return run, agree


def geneformer_embedding(size: dict):
    import torch
    from transformers import BertConfig, BertModel

    from gpubio.transcriptomics.embeddings import embed_sentences

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=500,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
        )
    ).eval()
    rng = np.random.default_rng(4)
    sentences = [rng.choice(np.arange(3, 500), rng.integers(50, 400), replace=False) for _ in range(size["sentences"])]

    def run(device):
        return embed_sentences(model, sentences, 0, {0}, 16, -2, device)

    return run, rowwise_agreement("cell")


def scgpt_embedding(size: dict):
    import torch

    from gpubio.transcriptomics.scgpt import ScgptArgs, build_model, embed_cells, encode_cells

    torch.manual_seed(0)
    args = ScgptArgs(embsize=64, nheads=4, d_hid=128, nlayers=2, n_bins=51)
    counts, _ = synthetic_counts(size["sentences"] * 4, 300, seed=5)
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, **{f"G{i}": i + 3 for i in range(300)}}
    model = build_model(args, len(vocab)).eval()
    encoded = encode_cells(counts, [f"G{i}" for i in range(300)], vocab, args.n_bins, 512, args.pad_value)

    def run(device):
        return embed_cells(model, encoded, 0, args.pad_value, 16, device)

    return run, rowwise_agreement("cell")


# --------------------------------------------------------------------------- histopathology


def conch_embedding(size: dict):
    import torch

    from gpubio.histopathology.model import Conch, LoadedModel
    from gpubio.histopathology.settings import tile_embedding_vram_gb
    from gpubio.histopathology.weights import PUBLISHED_CONFIG, architecture

    torch.manual_seed(0)
    config = json.loads(json.dumps(PUBLISHED_CONFIG))
    config["vision_cfg"] |= {"image_size": 224, "layers": 4}  # ViT-B/16 width, fewer blocks
    config["text_cfg"] |= {"layers": 1}
    model = Conch(architecture(config, "check")).eval()
    tiles = np.random.default_rng(6).integers(0, 256, (size["tiles"], 224, 224, 3), dtype=np.uint8)

    def run(device):
        loaded = LoadedModel(model, None, device)
        return np.concatenate([loaded.embed_images(tiles[i : i + 16]) for i in range(0, len(tiles), 16)])

    return run, rowwise_agreement("tile"), lambda: tile_embedding_vram_gb("", 16)


def rapids_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("rapids_singlecell") is not None and importlib.util.find_spec("cupy") is not None


# --------------------------------------------------------------------------- driver


def checks(size: dict, work: Path) -> list[tuple[str, object, object, object]]:
    """(name, run(device), agree(cpu, gpu), declared VRAM or None) in order; training makes the
    Cellpose model that segmentation then uses on both devices."""
    out = []
    train_run, train_agree = cellpose_training(size, work)
    out.append(("Cellpose training (Cellpose 3, from scratch)", train_run, train_agree, None))
    out.append(("Cellpose segmentation (tiled)", None, None, None))  # filled once training ran
    out.append(("learned registration", *learned_registration(size), None))
    out.append(("Enformer-style scoring", *enformer_scoring(size, work)))
    out.append(("DeepSEA (Beluga) scoring", *deepsea_scoring(size, work)))
    out.append(("scVI training", *scvi_training(size), None))
    out.append(("CONCH tile embedding", *conch_embedding(size)))
    out.append(("Geneformer-style embedding", *geneformer_embedding(size), None))
    out.append(("scGPT-style embedding", *scgpt_embedding(size), None))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: the CPU only (default: cuda and cpu)"
    )
    parser.add_argument("--size", choices=sorted(SIZES), help="input sizes (default: full on cuda, quick on cpu)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--out", type=Path, help="where to write the table (default on a GPU: bench/results/gpu.md)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; run with --device cpu for the CPU-only check", file=sys.stderr)
        return 1
    size = SIZES[args.size or ("full" if args.device == "cuda" else "quick")]
    other = args.device  # the second leg: the GPU, or the CPU again (same code, CPU only)
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plan = checks(size, work)
        for name, run, agree, declared in plan:
            if run is None:  # segmentation with the model training just wrote (the CPU leg's)
                run, agree = cellpose_segmentation(size, work, Path(rows[0]["cpu_out"]["model"]))
            cpu_out, cpu_s, _ = timed(run, "cpu")
            dev_out, dev_s, peak = timed(run, other)
            ok, detail = agree(cpu_out, dev_out)
            row = {
                "name": name,
                "cpu_s": cpu_s,
                "dev_s": dev_s,
                "peak": peak,
                "ok": ok,
                "detail": detail,
                "cpu_out": cpu_out,
            }
            row["declared"] = declared() if declared else None
            rows.append(row)
            if not ok:
                failed.append(name)
            print(
                f"{name}: CPU {cpu_s:.2f} s, {other} {dev_s:.2f} s, {'agree' if ok else 'DISAGREE'} ({detail})",
                flush=True,
            )
        if rapids_available():
            print("rapids-singlecell is installed: the transcriptomics GPU backend is covered by its own tests")

    table = render(rows, args, size)
    out = args.out or (REPO / "bench" / "results" / "gpu.md" if args.device == "cuda" else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
        print(f"wrote {out}")
    else:
        print(table)
    return 1 if failed else 0


def render(rows: list[dict], args, size: dict) -> str:
    import torch

    gpu = args.device == "cuda"
    device = torch.cuda.get_device_name(0) if gpu else "none (--device cpu: both legs on the CPU)"
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("cellpose", "scvi", "enformer_pytorch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = "not installed"
    lines = [
        "# GPU check: each GPU path on the GPU and the CPU",
        "",
        f"Command: `python bench/gpu_check.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
        f"Machine: {platform.node()}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads; GPU: {device}  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "  ",
        f"Inputs: {json.dumps(size)}",
        "",
        "| path | CPU s | "
        + ("GPU s | GPU / CPU | peak GPU GB | declared GB" if gpu else "CPU again s")
        + " | agreement |",
        "| --- | --- | " + ("--- | --- | --- | ---" if gpu else "---") + " | --- |",
    ]
    for r in rows:
        verdict = ("ok: " if r["ok"] else "FAILS: ") + r["detail"]
        if gpu:
            declared = f"{r['declared']:.1f}" if r["declared"] is not None else "-"
            lines.append(
                f"| {r['name']} | {r['cpu_s']:.2f} | {r['dev_s']:.2f} | {r['dev_s'] / r['cpu_s']:.3f} | "
                f"{r['peak']:.2f} | {declared} | {verdict} |"
            )
        else:
            lines.append(f"| {r['name']} | {r['cpu_s']:.2f} | {r['dev_s']:.2f} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

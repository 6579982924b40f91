"""Variant effect scores from sequence models: predictions for the reference and the
alternative sequence window around each variant, compared track by track.

A model family is a class with ``load`` (weights from a local directory, offline) and
``delta`` (alt minus ref, one value per output track, for a batch of windows), registered
by name in ``MODEL_FAMILIES``. Enformer (enformer-pytorch), a DNABERT-style encoder
(transformers) and DeepSEA-style chromatin-feature convnets (torch) are built in; another family
is one more class with the same two methods.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

log = logging.getLogger("gpubio")

MODEL_FAMILIES: dict[str, type[EffectModel]] = {}
EFFECT_COLUMNS = ["variant", "chrom", "pos", "ref", "alt", "score", "top_track", "top_track_delta", "mean_abs_delta"]


def register_family(cls: type[EffectModel]) -> type[EffectModel]:
    MODEL_FAMILIES[cls.family] = cls
    return cls


def pick_device(prefer_gpu: bool = True) -> str:
    """``cuda`` when torch sees a GPU (the one the CLI pinned), else ``cpu``."""
    import torch

    return "cuda" if prefer_gpu and torch.cuda.is_available() else "cpu"


class EffectModel(ABC):
    """One model family. Subclasses set ``family`` and implement ``load`` and ``delta``."""

    family: ClassVar[str]
    # columns a family adds to the table, each taken at the top track (see ``compare``)
    extra_columns: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sequence_length: int, device: str, track_names: list[str]):
        self.sequence_length = sequence_length
        self.device = device
        self.track_names = track_names

    @classmethod
    @abstractmethod
    def load(cls, weights: str | Path, sequence_length: int, device: str, **options) -> EffectModel:
        """The model from a local weights directory (never from the network)."""

    @abstractmethod
    def delta(self, ref: list[str], alt: list[str]) -> np.ndarray:
        """Alt minus ref for a batch of windows: shape (batch, tracks), float64."""

    def compare(self, ref: list[str], alt: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``delta`` and, per extra column, its values for every track: (batch, tracks) each."""
        return self.delta(ref, alt), {}

    @property
    def columns(self) -> list[str]:
        return EFFECT_COLUMNS + list(self.extra_columns)


def effect_vram_gb(settings: dict) -> float:
    """GPU memory of a scoring job (the rule's ``vram_gb``): a DeepSEA-style model's from its
    checkpoint and the batch size; 12 GB for Enformer and DNABERT-style models."""
    if settings["family"] == "deepsea":
        from gpubio.genomics.deepsea import vram_gb

        return vram_gb(settings["weights"], settings["batch_size"])
    return 12.0


def load_effect_model(family: str, weights: str | Path, sequence_length: int, device: str, **options) -> EffectModel:
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known: {', '.join(sorted(MODEL_FAMILIES))}")
    weights = Path(weights)
    if not weights.is_dir():
        raise FileNotFoundError(
            f"weights directory {weights} does not exist; stage the {family} weights there "
            "(see the README, 'Staging models offline')"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return MODEL_FAMILIES[family].load(weights, sequence_length, device, **options)


def _track_names(path: str | Path | None, count: int) -> list[str]:
    """Names from a file (one per line, or a TSV with a ``description`` column), else track_<i>."""
    if not path:
        return [f"track_{i}" for i in range(count)]
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    if "description" in header:
        col = header.index("description")
        names = [line.split("\t")[col] for line in lines[1:] if line.strip()]
    else:
        names = [line.strip() for line in lines if line.strip()]
    if len(names) != count:
        raise ValueError(f"{path}: {len(names)} track names for a model with {count} output tracks")
    return names


_ONE_HOT = np.zeros((256, 4), dtype=np.float32)
for _i, _base in enumerate("ACGT"):
    _ONE_HOT[ord(_base)] = _ONE_HOT[ord(_base.lower())] = np.eye(4, dtype=np.float32)[_i]


def one_hot(sequences: list[str]) -> np.ndarray:
    """(batch, length, 4) float32; N and other letters are all-zero rows (as Enformer was trained)."""
    codes = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
    return _ONE_HOT[codes].reshape(len(sequences), -1, 4)


@register_family
class EnformerModel(EffectModel):
    """Enformer: predicted tracks per 128-bp bin; delta = sum over bins of alt - ref (SAD) per track."""

    family = "enformer"

    def __init__(self, model, head: str, **kwargs):
        super().__init__(**kwargs)
        self.model, self.head = model, head

    @classmethod
    def load(cls, weights, sequence_length, device, head: str = "human", track_names=None, **_):
        from enformer_pytorch import Enformer

        model = Enformer.from_pretrained(str(weights), local_files_only=True)
        downsample = 2**model.config.num_downsamples
        if sequence_length % downsample:
            raise ValueError(
                f"sequence_length {sequence_length} must be a multiple of {downsample} "
                f"(2^num_downsamples of the Enformer in {weights})"
            )
        heads = dict(model.config.output_heads)
        if head not in heads:
            raise ValueError(f"{weights}: no output head {head!r}; heads: {', '.join(heads)}")
        model.eval().to(device)
        names = _track_names(track_names, heads[head])
        log.info(
            "Enformer from %s: dim %d, depth %d, head %s (%d tracks), %d-bp windows, on %s",
            weights,
            model.config.dim,
            model.config.depth,
            head,
            heads[head],
            sequence_length,
            device,
        )
        return cls(model, head, sequence_length=sequence_length, device=device, track_names=names)

    def delta(self, ref, alt):
        import torch

        x = torch.from_numpy(one_hot(list(ref) + list(alt))).to(self.device)
        with torch.inference_mode():
            pred = self.model(x, head=self.head).double()  # (2b, bins, tracks)
        n = len(ref)
        return (pred[n:] - pred[:n]).sum(dim=1).cpu().numpy()


@register_family
class DnabertModel(EffectModel):
    """DNABERT-style encoder: one track, the cosine distance of mean-pooled embeddings."""

    family = "dnabert"

    def __init__(self, model, tokenizer, kmer: int | None, **kwargs):
        super().__init__(**kwargs)
        self.model, self.tokenizer, self.kmer = model, tokenizer, kmer

    @classmethod
    def load(cls, weights, sequence_length, device, trust_remote_code: bool = False, **_):
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            str(weights), local_files_only=True, trust_remote_code=trust_remote_code
        )
        model = AutoModel.from_pretrained(str(weights), local_files_only=True, trust_remote_code=trust_remote_code)
        model.eval().to(device)
        kmer = _kmer_size(tokenizer.get_vocab())
        log.info(
            "DNABERT-style encoder from %s (%s tokens), %d-bp windows, on %s",
            weights,
            f"{kmer}-mer" if kmer else "subword",
            sequence_length,
            device,
        )
        return cls(
            model,
            tokenizer,
            kmer,
            sequence_length=sequence_length,
            device=device,
            track_names=["embedding_cosine_distance"],
        )

    def _embed(self, sequences: list[str]):

        if self.kmer:  # DNABERT (v1): overlapping k-mers separated by spaces
            k = self.kmer
            sequences = [" ".join(s[i : i + k] for i in range(len(s) - k + 1)) for s in sequences]
        batch = self.tokenizer(sequences, return_tensors="pt", padding=True, truncation=True).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1)

    def delta(self, ref, alt):
        import torch

        with torch.inference_mode():
            emb = self._embed(list(ref) + list(alt)).double()
        n = len(ref)
        cosine = torch.nn.functional.cosine_similarity(emb[:n], emb[n:], dim=-1)
        return (1.0 - cosine).unsqueeze(-1).cpu().numpy()


def _kmer_size(vocab: dict) -> int | None:
    """k when the vocabulary holds all 4^k DNA k-mers of one length (DNABERT v1), else None."""
    kmers = [t for t in vocab if len(t) > 1 and set(t) <= set("ACGT")]
    lengths = {len(t) for t in kmers}
    if len(lengths) == 1:
        k = lengths.pop()
        if len(kmers) == 4**k:
            return k
    return None


@register_family
class DeepseaModel(EffectModel):
    """DeepSEA-style convnet (gpubio.genomics.deepsea): feature probabilities averaged over the
    forward and reverse-complement window, as DeepSEA does; delta = alt - ref per feature, and
    the log-odds change of the top feature in its own column."""

    family = "deepsea"
    extra_columns = ("top_track_log_odds_delta",)

    def __init__(self, network, config, **kwargs):
        super().__init__(**kwargs)
        self.network, self.config = network, config

    @classmethod
    def load(cls, weights, sequence_length, device, track_names=None, **_):
        from gpubio.genomics import deepsea
        from gpubio.genomics.inputs import InputError

        config, network, outputs = deepsea.load_network(weights, device)
        try:
            names = _track_names(track_names or deepsea.features_file(weights), outputs)
        except (OSError, ValueError) as error:
            raise InputError(str(error)) from None
        log.info(
            "DeepSEA-style model from %s: %d conv layers, %d features, %d-bp windows from %s "
            "(sequence_length %d is not used by this family), both strands, on %s",
            weights,
            len(config.conv_layers),
            outputs,
            config.window,
            f"Beluga's architecture ({deepsea.BELUGA_FILE})" if deepsea.is_beluga(weights) else deepsea.CONFIG_FILE,
            sequence_length,
            device,
        )
        return cls(network, config, sequence_length=config.window, device=device, track_names=names)

    def probabilities(self, sequences: list[str]) -> np.ndarray:
        """(batch, features) float64: the mean of the forward and reverse-complement predictions."""
        import torch

        from gpubio.genomics import deepsea

        forward = deepsea.one_hot(sequences, self.config.alphabet, self.config.unknown_base)
        both = np.concatenate([forward, deepsea.reverse_complement(forward, self.config.alphabet)])
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(both).to(self.device)).double()
        prob = torch.sigmoid(logits).cpu().numpy()
        n = len(sequences)
        return (prob[:n] + prob[n:]) / 2

    def compare(self, ref, alt):
        from gpubio.genomics.deepsea import log_odds_change

        prob = self.probabilities(list(ref) + list(alt))
        n = len(ref)
        return prob[n:] - prob[:n], {"top_track_log_odds_delta": log_odds_change(prob[:n], prob[n:])}

    def delta(self, ref, alt):
        return self.compare(ref, alt)[0]


# --------------------------------------------------------------------------- windows


@dataclass(frozen=True)
class Variant:
    chrom: str
    pos: int  # 1-based, as in the VCF
    ref: str
    alt: str

    @property
    def name(self) -> str:
        return f"{self.chrom}:{self.pos}:{self.ref}>{self.alt}"


def _fetch(fasta, chrom: str, start: int, end: int) -> str:
    """Reference sequence over [start, end), N-padded beyond the contig ends."""
    length = fasta.get_reference_length(chrom)
    left, right = max(0, -start), max(0, end - length)
    core = fasta.fetch(chrom, max(0, start), min(end, length)).upper()
    return "N" * left + core + "N" * right


def windows(fasta, variant: Variant, length: int) -> tuple[str, str]:
    """Reference and alternative windows of ``length`` bp with the variant's first base at the centre.

    The alternative window is the reference with REF replaced by ALT, cut or extended on the
    right (from the reference) back to ``length``, so indels keep the window size.
    """
    start0 = variant.pos - 1
    begin = start0 - length // 2
    extra = max(0, len(variant.ref) - len(variant.alt))
    context = _fetch(fasta, variant.chrom, begin, begin + length + extra)
    offset = start0 - begin
    if context[offset : offset + len(variant.ref)] != variant.ref.upper():
        raise ValueError(f"{variant.name}: REF does not match the reference; was the VCF made with another FASTA?")
    ref = context[:length]
    alt = (context[:offset] + variant.alt.upper() + context[offset + len(variant.ref) :])[:length]
    return ref, alt


def read_variants(vcf: str, pass_only: bool = True) -> Iterator[Variant]:
    """Biallelic records (multi-allelic ones give one Variant per ALT); symbolic alleles skipped."""
    import pysam

    with pysam.VariantFile(vcf) as fh:
        for rec in fh:
            if pass_only and list(rec.filter) not in ([], ["PASS"]):
                continue
            for alt in rec.alts or ():
                if alt.startswith("<") or "*" in alt or "[" in alt or "]" in alt:
                    continue
                # upper case: a soft-masked reference gives lower-case alleles in some VCFs
                yield Variant(rec.chrom, rec.pos, rec.ref.upper(), alt.upper())


# --------------------------------------------------------------------------- scoring


def score_variants(model: EffectModel, fasta_path: str, variants: list[Variant], batch_size: int) -> list[dict]:
    """One row per variant: score = the largest |delta| over tracks, its track, and the mean |delta|."""
    import pysam

    rows = []
    with pysam.FastaFile(fasta_path) as fasta:
        for first in range(0, len(variants), batch_size):
            batch = variants[first : first + batch_size]
            pairs = [windows(fasta, v, model.sequence_length) for v in batch]
            delta, extras = model.compare([p[0] for p in pairs], [p[1] for p in pairs])
            for i, (v, d) in enumerate(zip(batch, delta)):
                top = int(np.argmax(np.abs(d)))
                rows.append(
                    {
                        "variant": v.name,
                        "chrom": v.chrom,
                        "pos": v.pos,
                        "ref": v.ref,
                        "alt": v.alt,
                        "score": float(np.abs(d[top])),
                        "top_track": model.track_names[top],
                        "top_track_delta": float(d[top]),
                        "mean_abs_delta": float(np.abs(d).mean()),
                        **{column: float(values[i, top]) for column, values in extras.items()},
                    }
                )
    return rows


def write_effects(rows: list[dict], out: str, columns: list[str] = EFFECT_COLUMNS) -> None:
    """The table; ``columns`` is the model's (``EffectModel.columns``), so an empty table has them too."""
    from gpubio.atomic import atomic_path

    with atomic_path(out) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(columns) + "\n")
        for row in rows:
            fh.write("\t".join(_cell(row[c]) for c in columns) + "\n")


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)

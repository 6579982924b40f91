"""Figures of the genomics module for the report: read QC, coverage, variants and their effects."""

from __future__ import annotations

import json
from pathlib import Path

COLOURS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]


def _sample_of(path: str) -> str:
    return Path(path).parent.name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str) -> None:
    from gpubio.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)


def plot_read_qc(qc_files: list[str], out: str) -> None:
    """Read length and per-read quality distributions, mapped fraction and mean depth per sample."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    samples = []
    for k, path in enumerate(qc_files):
        qc = json.loads(Path(path).read_text())
        sample, colour = _sample_of(path), COLOURS[k % len(COLOURS)]
        samples.append((sample, qc, colour))
        for ax, key in ((axes[0], "length_histogram"), (axes[1], "quality_histogram")):
            hist = qc[key]
            fraction = [c / max(1, sum(hist["counts"])) for c in hist["counts"]]
            ax.stairs(fraction, hist["edges"], label=sample, color=colour)
    axes[0].set(xscale="log", xlabel="read length (bp)", ylabel="fraction of reads", title="read lengths")
    axes[1].set(xlabel="mean base quality per read (Phred)", ylabel="fraction of reads", title="read quality")
    names = [s for s, _, _ in samples]
    colours = [c for _, _, c in samples]
    axes[2].bar(names, [100 * qc["mapped_fraction"] for _, qc, _ in samples], color=colours)
    axes[2].set(ylabel="mapped reads (%)", ylim=(0, 100), title="mapping rate")
    axes[3].bar(names, [qc["mean_depth"] for _, qc, _ in samples], color=colours)
    axes[3].set(ylabel="mean depth (x)", title="depth")
    axes[0].legend(fontsize=8)
    for ax in axes[2:]:
        ax.tick_params(axis="x", rotation=45)
    _save(fig, out)


def plot_coverage(coverage_files: list[str], out: str) -> None:
    """Binned depth along the genome, one row per sample, contigs side by side."""
    import pandas as pd

    plt = _pyplot()
    fig, axes = plt.subplots(len(coverage_files), 1, figsize=(12, 2.2 * len(coverage_files)), squeeze=False)
    for k, (ax, path) in enumerate(zip(axes[:, 0], coverage_files)):
        table = pd.read_csv(path, sep="\t")
        offsets, offset, ticks = {}, 0, []
        for contig, rows in table.groupby("contig", sort=False):
            offsets[contig] = offset
            ticks.append((offset + rows["end"].max() / 2, contig))
            offset += rows["end"].max()
            ax.axvline(offset, color="#999999", lw=0.5)
        x = table["start"] + table["contig"].map(offsets)
        ax.fill_between(x, table["depth"], step="post", color=COLOURS[k % len(COLOURS)], alpha=0.8)
        ax.set(ylabel="depth (x)", xlim=(0, offset), title=_sample_of(path))
        ax.set_xticks([t for t, _ in ticks], [c for _, c in ticks])
    _save(fig, out)


def variant_summary(vcfs: list[str]):
    """One row per sample: PASS SNPs / indels / MNPs and LowQual records."""
    import pandas as pd

    from gpubio.genomics.variants import vcf_records

    rows = []
    for path in vcfs:
        records = pd.DataFrame(vcf_records(path), columns=["type", "filter", "qual"])
        passing = records[records["filter"] == "PASS"]
        rows.append(
            {
                "sample": _sample_of(path),
                "pass": len(passing),
                "pass_snps": int((passing["type"] == "snp").sum()),
                "pass_indels": int((passing["type"] == "indel").sum()),
                "pass_mnps": int((passing["type"] == "mnp").sum()),
                "low_qual": len(records) - len(passing),
            }
        )
    return pd.DataFrame(rows)


def plot_variants(vcfs: list[str], min_qual: float, effect_files: list[str], out_png: str, out_tsv: str) -> None:
    """QUAL distribution with the filter threshold, counts by type and filter, effect scores."""
    import numpy as np
    import pandas as pd

    from gpubio.atomic import atomic_path
    from gpubio.genomics.variants import vcf_records

    plt = _pyplot()
    panels = 3 if effect_files else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6))
    summary = variant_summary(vcfs)
    quals = [np.array([r["qual"] or 0.0 for r in vcf_records(v)]) for v in vcfs]
    top = max([q.max() for q in quals if q.size] + [min_qual * 10, 10])
    bins = np.logspace(0, np.log10(top) + 0.1, 40)
    for k, (path, q) in enumerate(zip(vcfs, quals)):
        axes[0].hist(
            np.clip(q, 1, None), bins=bins, histtype="step", color=COLOURS[k % len(COLOURS)], label=_sample_of(path)
        )
    axes[0].axvline(min_qual, color="black", ls="--", lw=1, label=f"QUAL filter ({min_qual:g})")
    axes[0].set(xscale="log", xlabel="QUAL", ylabel="records", title="variant quality")
    axes[0].legend(fontsize=8)
    x = np.arange(len(summary))
    bottom = np.zeros(len(summary))
    for column, label, colour in (
        ("pass_snps", "SNP (PASS)", COLOURS[0]),
        ("pass_indels", "indel (PASS)", COLOURS[1]),
        ("pass_mnps", "MNP (PASS)", COLOURS[3]),
        ("low_qual", "LowQual", COLOURS[6]),
    ):
        axes[1].bar(x, summary[column], bottom=bottom, label=label, color=colour)
        bottom += summary[column].to_numpy()
    axes[1].set_xticks(x, summary["sample"], rotation=45)
    axes[1].set(ylabel="records", title="variants by type and filter")
    axes[1].legend(fontsize=8)
    if effect_files:
        for k, path in enumerate(effect_files):
            effects = pd.read_csv(path, sep="\t")
            kinds = np.where(effects["ref"].str.len() == effects["alt"].str.len(), 0.0, 1.0)
            jitter = (np.random.default_rng(0).random(len(effects)) - 0.5) * 0.3
            axes[2].scatter(
                kinds + jitter + 0.08 * k,
                effects["score"],
                s=10,
                color=COLOURS[k % len(COLOURS)],
                label=_sample_of(path),
            )
        axes[2].set_xticks([0, 1], ["SNP / MNP", "indel"])
        axes[2].set(ylabel="effect score (max |alt - ref| over tracks)", title="predicted regulatory effect")
        axes[2].legend(fontsize=8)
    _save(fig, out_png)
    with atomic_path(out_tsv) as tmp:
        summary.to_csv(tmp, sep="\t", index=False)

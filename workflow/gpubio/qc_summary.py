"""One table and one figure per domain from the per-sample QC JSON files (for the report)."""

from __future__ import annotations

import json
from pathlib import Path

# domain -> (column in the table, JSON path, axis label of its panel)
PANELS = {
    "genomics": [
        ("reads", ("reads",), "reads"),
        ("n50", ("n50",), "read length N50 (bp)"),
        ("mean_quality", ("mean_quality",), "mean base quality (Phred)"),
        ("mapped_fraction", ("mapped_fraction",), "fraction of reads mapped"),
    ],
    "transcriptomics": [
        ("cells", ("cells",), "cells before QC"),
        ("cells_after_qc", ("cells_after_qc",), "cells after QC"),
        ("mean_pct_mito", ("mean_pct_mito",), "mean mitochondrial %"),
    ],
    "imaging": [
        ("height", ("shape", 0), "height (px)"),
        ("channels", ("channels",), "channels"),
        ("max_saturated_fraction", ("saturated_fraction", "max"), "saturated fraction (worst channel)"),
    ],
}


def _lookup(record: dict, path: tuple):
    value = record
    for key in path:
        value = max(value) if key == "max" else value[key]
    return value


def qc_table(domain: str, json_files: list[str]):
    import pandas as pd

    rows = []
    for f in json_files:
        record = json.loads(Path(f).read_text())
        row = {"sample": Path(f).parent.name}
        row |= {col: _lookup(record, path) for col, path, _ in PANELS[domain]}
        rows.append(row)
    return pd.DataFrame(rows)


def write_qc_summary(domain: str, json_files: list[str], out_tsv: str, out_png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    table = qc_table(domain, json_files)
    panels = PANELS[domain]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, (col, _, label) in zip(axes[0], panels):
        ax.bar(table["sample"], table[col], color="#4477aa")
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
    fig.suptitle(f"{domain} QC")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    with atomic_path(out_tsv) as tmp:
        table.to_csv(tmp, sep="\t", index=False)

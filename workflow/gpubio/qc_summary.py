"""One table and one figure per domain from the per-sample QC JSON files (for the report), with
the columns of any per-sample table a later step adds (a ``sample`` column + numbers)."""

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


def _numeric_column(column) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _lookup(record: dict, path: tuple):
    value = record
    for key in path:
        value = max(value) if key == "max" else value[key]
    return value


def qc_table(domain: str, json_files: list[str], tables: list[str] = ()):
    """The per-sample QC records as one table; each of ``tables`` (TSV, one row per sample in a
    ``sample`` column) adds its columns, matched by sample."""
    import pandas as pd

    rows = []
    for f in json_files:
        record = json.loads(Path(f).read_text())
        row = {"sample": Path(f).parent.name}
        row |= {col: _lookup(record, path) for col, path, _ in PANELS[domain]}
        rows.append(row)
    table = pd.DataFrame(rows)
    parts = []
    for path in tables:  # one row per sample each (a step's table per sample), or several
        extra = pd.read_csv(path, sep="\t", dtype={"sample": str})
        if "sample" not in extra.columns:
            raise ValueError(f"{path}: a QC table needs a 'sample' column")
        parts.append(extra)
    if parts:
        extra = pd.concat(parts, ignore_index=True).groupby("sample", sort=False).first().reset_index()
        table = table.merge(extra, on="sample", how="left")
    return table


def write_qc_summary(domain: str, json_files: list[str], out_tsv: str, out_png: str, tables: list[str] = ()) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpubio.atomic import atomic_path

    table = qc_table(domain, json_files, tables)
    known = {col for col, _, _ in PANELS[domain]}
    added = [c for c in table.columns if c != "sample" and c not in known and _numeric_column(table[c])]
    panels = PANELS[domain] + [(col, (), col.replace("_", " ")) for col in added]
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

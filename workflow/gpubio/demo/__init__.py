"""Deterministic synthetic demo data with planted truth for all three domains."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHEET_COLUMNS = {
    "genomics": ["sample", "platform", "pod5", "fastq_1", "fastq_2", "bam"],
    "transcriptomics": ["sample", "counts", "batch", "spatial"],
    "imaging": ["sample", "image", "reference_image"],
}
PATH_COLUMNS = {"pod5", "fastq_1", "fastq_2", "bam", "counts", "spatial", "image", "reference_image"}


def make_demo(outdir: str | Path = "resources/demo", seed: int = 1) -> dict[str, dict]:
    """Write every domain's demo data under outdir; return sheet rows per domain (paths relative to outdir's parent)."""
    from gpubio.demo.genomics import make_genomics
    from gpubio.demo.imaging import make_imaging
    from gpubio.demo.transcriptomics import make_transcriptomics

    outdir = Path(outdir)
    makers = {"genomics": make_genomics, "transcriptomics": make_transcriptomics, "imaging": make_imaging}
    rows = {}
    for k, (domain, make) in enumerate(makers.items()):
        rng = np.random.default_rng([seed, k])  # one stream per domain: each is reproducible alone
        rows[domain] = {
            sample: {col: (str(outdir / domain / v) if col in PATH_COLUMNS else v) for col, v in row.items()}
            for sample, row in make(outdir / domain, rng).items()
        }
    return rows


def sheet_text(domain: str, rows: dict[str, dict]) -> str:
    """A sample sheet (TSV) for rows of one domain."""
    columns = SHEET_COLUMNS[domain]
    lines = ["\t".join(columns)]
    lines += ["\t".join([sample] + [row.get(c, "") for c in columns[1:]]) for sample, row in rows.items()]
    return "\n".join(lines) + "\n"


def write_sheets(rows: dict[str, dict], sheet_dir: str | Path) -> None:
    sheet_dir = Path(sheet_dir)
    sheet_dir.mkdir(parents=True, exist_ok=True)
    for domain, domain_rows in rows.items():
        (sheet_dir / f"{domain}.tsv").write_text(sheet_text(domain, domain_rows))


def gzip_text(path: str | Path):
    """A text handle writing gzip with a zero timestamp, so the same seed gives the same bytes."""
    import gzip
    import io

    return io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=1, mtime=0), encoding="ascii")

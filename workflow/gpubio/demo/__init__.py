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


DEMO_OVERLAY = "config/demo/config.yaml"  # what `make demo` lays over config/config.yaml


def demo_config(repo: str | Path) -> dict:
    """A repository's config/config.yaml with the demo overlay's settings merged in by
    Snakemake's own merge (as `--configfile` does); sheet paths stay config/<domain>.tsv."""
    import yaml
    from snakemake.utils import update_config

    repo = Path(repo)
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    overlay = yaml.safe_load((repo / DEMO_OVERLAY).read_text())
    for section in overlay.values():
        section.pop("samples", None)
    update_config(config, overlay)
    return config


def demo_as_project(repo: str | Path, root: str | Path) -> dict:
    """Set `root` up as a project holding the demo, as a user would make the demo their own:
    the repository's config/ copied, the overlay's settings in config/config.yaml, the demo
    sheets as config/<domain>.tsv. Returns that config."""
    import shutil

    import yaml

    repo, root = Path(repo), Path(root)
    shutil.copytree(repo / "config", root / "config")
    config = demo_config(repo)
    overlay = yaml.safe_load((repo / DEMO_OVERLAY).read_text())
    for domain, section in overlay.items():
        if section.get("samples"):
            shutil.copy(repo / section["samples"], root / config[domain]["samples"])
    (root / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def gzip_text(path: str | Path):
    """A text handle writing gzip with a zero timestamp, so the same seed gives the same bytes."""
    import gzip
    import io

    return io.TextIOWrapper(gzip.GzipFile(path, "wb", compresslevel=1, mtime=0), encoding="ascii")

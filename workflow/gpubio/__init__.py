"""gpubio: the science and plumbing behind the gpubio Snakemake workflow."""

__version__ = "0.1.0"

"""Python's cyclic garbage collector while Snakemake builds the DAG.

The DAG of a large project is millions of objects that live for the whole run. The collector
scans its youngest objects every 700 allocations and the older generations every few
collections, so while the DAG grows it walks the same long-lived jobs, files and rules again
and again: about a tenth of a 13,000-job dry-run (bench/dag_overhead.py). gpubio lets it
collect less often until the DAG is built (the Snakefile calls ``collect_less``), marks the
objects of the start-up pass (modules, schemas, sample sheets) as permanent (``freeze``), and
Snakemake's ``onstart`` hook puts the thresholds back (``restore``) before the first job runs,
so the hours-long scheduling loop collects as usual. ``GPUBIO_GC=default`` in the environment
keeps Python's own settings throughout.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping

# (young, middle, old): collections of the youngest generation every 100,000 net allocations
# instead of 700; the oldest generation (all of the DAG) almost never while it is built
DAG_THRESHOLDS = (100_000, 50, 100)
ENV = "GPUBIO_GC"


def _tuned(environ: Mapping[str, str] | None) -> bool:
    environ = os.environ if environ is None else environ
    return environ.get(ENV, "").strip().lower() != "default"


def collect_less(environ: Mapping[str, str] | None = None) -> tuple[int, int, int]:
    """Raise the collector's thresholds for the DAG build; returns the thresholds to restore."""
    previous = gc.get_threshold()
    if _tuned(environ):
        gc.set_threshold(*DAG_THRESHOLDS)
    return previous


def freeze(environ: Mapping[str, str] | None = None) -> None:
    """Exempt every object alive now (what the start-up pass made) from later collections."""
    if _tuned(environ):
        gc.freeze()


def restore(thresholds: tuple[int, int, int]) -> None:
    """Python's thresholds as they were before ``collect_less`` (Snakemake's ``onstart``)."""
    gc.set_threshold(*thresholds)

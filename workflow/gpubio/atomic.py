"""Write outputs under a temporary name and rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary sibling path; on success rename it to `path`, on error remove it.

    The temporary name keeps the final suffix so libraries that pick a format by extension
    (h5ad, tif, png) still do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove what a killed writer of `path` left (``.<stem>.tmp<pid><suffix>``; a kill skips
    the cleanup above). Only one job writes a given output at a time, so any such sibling is
    stale when that job starts again. Returns what was removed."""
    path = Path(path)
    return _remove_matching(path.parent, rf"\.{re.escape(path.stem)}\.tmp\d+{re.escape(path.suffix)}")


def _remove_matching(folder: Path, pattern: str) -> list[Path]:
    """Remove the entries of `folder` whose whole name matches `pattern`; returns them."""
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if re.fullmatch(pattern, entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def scratch_dir(path: str | os.PathLike, purpose: str):
    """A working folder beside `path` for the job that writes it, ``.<name>.<purpose><pid>``:
    removed when the job ends, whatever the ending, and one a killed run left is removed when
    the job runs again (only one job writes a given output at a time)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_matching(path.parent, rf"\.{re.escape(path.name)}\.{re.escape(purpose)}\d+")
    work = path.with_name(f".{path.name}.{purpose}{os.getpid()}")
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)

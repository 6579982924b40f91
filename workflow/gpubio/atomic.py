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
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.tmp\d+{re.escape(path.suffix)}")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        if pattern.fullmatch(entry.name):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)

"""Start-up checks of the images config/imaging.tsv names: each must be a whole, readable TIFF.

The schema checks already say that every file exists and ends in .tif / .tiff; this reads
each file's headers (no pixels), so a corrupt or truncated image stops the run with one
line before any job starts, not a traceback in the middle of it.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_COLUMNS = ("image", "reference_image")


def image_file_problems(sheet, sheet_path: str, workdir: str | Path = ".") -> list[str]:
    """One line per unreadable image in the sheet: row, column, file, problem and fix."""
    from gpubio.config import row_where
    from gpubio.image_io import tiff_problem

    if sheet is None:
        return []
    problems, checked = [], {}
    for i, row in enumerate(sheet.to_dict("records"), start=1):
        for column in IMAGE_COLUMNS:
            value = row.get(column) or ""
            if not value:
                continue
            path = Path(workdir) / value
            if path not in checked:  # a reference shared by many rows is read once
                checked[path] = tiff_problem(path)
            if checked[path]:
                where = row_where(sheet_path, sheet, i, row["sample"])
                problems.append(f"{where}: {column} '{value}': {checked[path]}")
    return problems

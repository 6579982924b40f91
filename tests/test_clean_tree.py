"""The suite fails when a test leaves files in the repository (tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys

from conftest import REPO


def test_a_test_that_leaves_a_file_in_the_repository_fails_the_run(tmp_path):
    # a small repository with this project's conftest and two tests, one of them littering
    shutil.copytree(REPO / "tests" / "offline", tmp_path / "tests" / "offline")
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    (tmp_path / ".gitignore").write_text("__pycache__/\n.pytest_cache/\nignored.out\n")
    (tmp_path / "tests" / "test_litter.py").write_text(
        "from pathlib import Path\n"
        "ROOT = Path(__file__).resolve().parent.parent\n"
        "def test_clean(tmp_path):\n    (tmp_path / 'fine.txt').write_text('x')\n"
        "def test_litter():\n    (ROOT / 'data' / 'stray.nii').parent.mkdir()\n"
        "    (ROOT / 'data' / 'stray.nii').write_text('x')\n    (ROOT / 'ignored.out').write_text('x')\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "start"]):
        subprocess.run([*git, *args], check=True, capture_output=True)

    def pytest_run(*select: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    clean = pytest_run("tests/test_litter.py::test_clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    littered = pytest_run("tests/test_litter.py")
    assert littered.returncode == 1
    assert "2 passed" in littered.stdout and "?? data/stray.nii" in littered.stdout
    assert "ignored.out" not in littered.stdout  # what .gitignore ignores does not count

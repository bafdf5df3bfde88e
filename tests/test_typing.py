"""The library, its apps included, type-checks and lints clean (mypy and ruff, run by `pytest`)."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_mypy_finds_no_errors_in_the_library():
    pytest.importorskip("mypy", reason="mypy is in the test extra")

    result = _run("mypy", "fedtune")

    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing_in_the_tree():
    pytest.importorskip("ruff", reason="ruff is in the test extra")

    result = _run("ruff", "check", "--no-cache", ".")

    assert result.returncode == 0, result.stdout + result.stderr

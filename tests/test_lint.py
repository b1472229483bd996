"""ruff keeps the library, the tests and the notebooks' cells linted and formatted
(notebook cells at 79 columns: notebooks/.ruff.toml)."""

import subprocess
import sys

from conftest import REPO

TARGETS = ["course_lib", "tests", "notebooks", "_ext"]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint_is_clean():
    result = _ruff("check", "--no-cache", *TARGETS)
    assert result.returncode == 0, result.stdout[-4000:]


def test_ruff_format_is_clean():
    result = _ruff("format", "--check", "--no-cache", *TARGETS)
    assert result.returncode == 0, result.stdout[-4000:] + "\nrun: ruff format " + " ".join(TARGETS)

"""The book build's execution cache (_ext/execution_cache.py): an unchanged rebuild executes
nothing; a change to course_lib executes the chapters again (issue 25)."""

from __future__ import annotations

import os
import shutil
import subprocess

import nbformat
import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.book


def _book(root):
    """A two-page book with the course's _config.yml and _ext: one chapter imports course_lib."""
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copytree(REPO / "_ext", root / "_ext")
    shutil.copytree(REPO / "_static", root / "_static")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n- file: 09_c\n")
    (root / "intro.md").write_text("# Intro\n\nA page.\n")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_markdown_cell("# Chapter 9"),
        nbformat.v4.new_code_cell("import course_lib\n\nprint('ran')"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / "09_c.ipynb")


def _build(root, env) -> str:
    done = subprocess.run(
        ["jupyter-book", "build", str(root), "-W", "--all"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


def test_a_rebuild_executes_only_after_course_lib_changes(tmp_path):
    book, library = tmp_path / "book", tmp_path / "lib"
    book.mkdir()
    _book(book)
    # a copy of course_lib ahead of the installed one, so the test can change it
    shutil.copytree(REPO / "course_lib", library / "course_lib", ignore=shutil.ignore_patterns("__pycache__"))
    env = os.environ | {"PYTHONPATH": str(library)}
    assert "09_c.ipynb: Executing notebook" in _build(book, env)
    again = _build(book, env)  # --all re-reads every page: the outputs come from the cache
    assert "09_c.ipynb: Using cached notebook" in again and "Executing notebook" not in again
    with (library / "course_lib" / "display.py").open("a") as module:
        module.write("\n# a change\n")
    assert "09_c.ipynb: Executing notebook" in _build(book, env)

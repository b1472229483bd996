"""Number each chapter's exercises after the chapter: Exercise 8.1, 8.2, ... in chapter 8.

sphinx-exercise numbers exercises through Sphinx's figure numbering, which counts across the whole
book when the toctree is not numbered (chapter 8's first exercise was Exercise 22), and numbering
the toctree would renumber every heading too. This extension runs after Sphinx has assigned the
numbers and replaces each exercise's with (chapter, position in the chapter); the exercise title,
the "Solution to" heading and every reference read the same table, so they all agree.
"""

from __future__ import annotations

import re

from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

CHAPTER = re.compile(r"(?:^|/)(A?\d+)_[^/]*$")


def chapter_of(docname: str) -> int | str | None:
    """``notebooks/08_sft_lora`` -> 8, ``notebooks/A1_common_errors`` -> "A1", else None."""
    found = CHAPTER.search(docname)
    if not found:
        return None
    label = found.group(1)
    return int(label) if label.isdigit() else label


def renumber(app: Sphinx, env: BuildEnvironment) -> list[str]:
    changed = []
    for docname, numbers in env.toc_fignumbers.items():
        chapter = chapter_of(docname)
        exercises = numbers.get("exercise")
        if chapter is None or not exercises:
            continue
        in_order = sorted(exercises, key=lambda ident: exercises[ident])
        renumbered = {ident: (chapter, i) for i, ident in enumerate(in_order, 1)}
        if renumbered != exercises:
            numbers["exercise"] = renumbered
            changed.append(docname)
    return changed


def setup(app: Sphinx) -> dict:
    # after the toctree collector (priority 500), which assigns the book-wide numbers
    app.connect("env-get-updated", renumber, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Checked claims: every sentence of a page that states a measured comparison is printed by a
cell that computes it, and the build fails where it does not hold.

A chapter writes ``claim("QLoRA's held-out loss falls", after < before, f"{before:.3f} -> {after:.3f}")``
next to the numbers it speaks of. The page shows one line, ``✓ QLoRA's held-out loss falls
(6.18 -> 4.42)``. When the comparison is false on the machine that builds the book, the cell
raises :class:`ClaimFailed`, so CI fails instead of publishing a false sentence. Runs where
effects are not expected (random weights under a synthetic Hub) set ``COURSE_CLAIMS=report``:
failed claims are then printed, marked, and the run goes on. A learner's Colab runtime reports
too: another machine may train another model, and the page should run to its end there.
"""

from __future__ import annotations

import os

from .profiles import CourseError, in_colab

MODE_ENV = "COURSE_CLAIMS"
MODES = ("enforce", "report")


# How a claim that does not hold starts its line in report mode (the hub run counts them).
FAILED_MARK = "✗ does not hold on this run: "


class ClaimFailed(CourseError):
    """A sentence on the page states something this run's numbers do not show."""


def claim_mode() -> str:
    """``enforce`` (default: a false claim raises) or ``report`` (it is printed and marked;
    the default in Colab)."""
    mode = os.environ.get(MODE_ENV) or ("report" if in_colab() else "enforce")
    if mode not in MODES:
        raise CourseError(f"{MODE_ENV}={mode!r}: use one of {', '.join(MODES)}.")
    return mode


def claim(statement: str, holds: bool, measured: str = "") -> bool:
    """Print ``statement`` with a check mark and the numbers behind it; raise when it is false.

    ``holds`` is the comparison itself (``after < before``), computed in the cell that calls
    this, so the reader sees both the test and its inputs.
    """
    holds = bool(holds)
    detail = f" ({measured})" if measured else ""
    if holds:
        print(f"✓ {statement}{detail}")
        return True
    message = f"{FAILED_MARK}{statement}{detail}"
    if claim_mode() == "report":
        print(message)
        return False
    raise ClaimFailed(
        f"{message}. The page states it, so the build stops here: change the "
        "experiment or the sentence, not the check."
    )

"""How much a chapter trains and samples on this runtime: the one knob every chapter reads.

A page writes its full counts (``max_steps=budget.scaled(100)``, ``SEEDS[: budget.scaled(3)]``) and
runs them all where the numbers are the lesson: offline (the course's small models on any CPU) and
on a GPU. A CPU runtime under the hub profile (Colab's free tier) runs the real models' full shapes,
where one training step takes seconds: it runs a share of the counts, and the setup cell says so.
CI's hub run checks that every line runs, not what it learns (its claims only report), and sets the
smallest budget.

``COURSE_BUDGET`` overrides the choice: ``full``, ``short`` or ``smoke``.
"""

from __future__ import annotations

import os

from .profiles import HUB, CourseError, active_profile

BUDGET_ENV = "COURSE_BUDGET"

# the share of each count a budget runs; every count keeps at least its `minimum`
SHARES = {"full": 1.0, "short": 0.25, "smoke": 0.1}

SUMMARIES = {
    "full": "full: every step and sample the page describes",
    "short": (
        "short: a quarter of the training steps and samples (a CPU runtime at "
        "the real models' shapes); the numbers are not the page's, use a GPU "
        "runtime or COURSE_PROFILE=offline for those"
    ),
    "smoke": "smoke: the fewest steps and samples that run every line",
}


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def current() -> str:
    """The budget in force: ``$COURSE_BUDGET``, else ``short`` for the hub profile on a CPU,
    else ``full``."""
    chosen = os.environ.get(BUDGET_ENV, "").strip()
    if chosen:
        if chosen not in SHARES:
            raise CourseError(
                f"{BUDGET_ENV}={chosen!r} is not a budget: use one of {', '.join(SHARES)}, or unset it."
            )
        return chosen
    return "short" if active_profile() == HUB and not _has_gpu() else "full"


def scaled(count: int, minimum: int = 1) -> int:
    """``count`` on the ``full`` budget; otherwise its share, never below ``minimum``
    (nor above ``count``)."""
    if count < minimum:
        raise CourseError(f"scaled({count}, minimum={minimum}): the count is below its minimum.")
    return max(minimum, min(count, round(count * SHARES[current()])))


def describe() -> str:
    """One line for the setup cell: what this runtime will run."""
    return f"budget {SUMMARIES[current()]}"

"""Answer checks for the chapters' exercises, one module per chapter (``ch01``, ...).

Each check returns a :class:`Feedback`: ``passed`` for graders, a message that
says what is right or what to look at next for learners.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """The outcome of one exercise check."""

    passed: bool
    message: str

    def __str__(self) -> str:
        return ("✅ " if self.passed else "❌ ") + self.message

    __repr__ = __str__

    def _repr_markdown_(self) -> str:  # shown as the cell's result in Jupyter
        return str(self)


def verdict(problems: list[str], success: str) -> Feedback:
    """Passed when ``problems`` is empty; otherwise the problems joined into one message."""
    return Feedback(True, success) if not problems else Feedback(False, " ".join(problems))


def accumulation_matches(accumulate, model, batch, micro_batches: int, atol: float = 1e-5) -> bool:
    """Whether ``accumulate(model, batch, micro_batches)`` leaves in every ``.grad`` the gradient
    of one backward pass on the whole ``batch`` (the hidden tests of chapters 11 and 15 call it
    on models and batches of their own)."""
    import torch

    model.zero_grad()
    model(input_ids=batch, labels=batch).loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    accumulate(model, batch.clone(), micro_batches)
    got = [p.grad for p in model.parameters()]
    return all(g is not None and torch.allclose(g, e, atol=atol) for g, e in zip(got, expected))

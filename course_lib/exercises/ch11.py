"""Checks for chapter 11 (a training loop in plain PyTorch)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import Feedback, verdict


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The expected multiplier: linear warm-up from ``1/warmup_steps`` to 1, then constant."""
    return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)


def _loss_and_backward(model: torch.nn.Module, batch: torch.Tensor) -> None:
    batch = batch.to(model.device)
    model(input_ids=batch, labels=batch).loss.backward()


def check_tokens_per_step(config: dict, block_size: int, answer: int) -> Feedback:
    """Easy: how many tokens one optimizer step of ``config`` (the chapter's CONFIG dict, with
    ``batch_size`` and ``accumulation``) trains on."""
    batch_size, accumulation = config["batch_size"], config["accumulation"]
    expected = batch_size * accumulation * block_size
    if answer == expected:
        return Feedback(
            True, f"{answer:,} tokens per optimizer step: batch_size x accumulation x block_size."
        )
    if answer == batch_size * block_size:
        return Feedback(
            False,
            f"{answer:,} is one micro-batch; an optimizer step sums {accumulation} of them (accumulation).",
        )
    return Feedback(
        False, f"{answer:,} is not it: count the blocks behind one step, then the tokens in each block."
    )


def check_warmup(factor: Callable[[int], float], warmup_steps: int = 5) -> Feedback:
    """Medium: ``factor(step)`` (0-based optimizer step) must be the linear warm-up multiplier
    of chapter 11's scheduler: 1/W, 2/W, ..., 1, then 1 forever."""
    problems = []
    steps = range(3 * warmup_steps)
    got = [float(factor(step)) for step in steps]
    expected = [warmup_factor(step, warmup_steps) for step in steps]
    if got[0] == 0:
        problems.append(
            "factor(0) is 0, so the first optimizer step does nothing; LambdaLR "
            "passes 0 for the first step, so use (step + 1) / warmup_steps."
        )
    mismatches = [s for s in steps if abs(got[s] - expected[s]) > 1e-9]
    if mismatches and not problems:
        s = mismatches[0]
        problems.append(
            f"factor({s}) = {got[s]:.4g}, expected {expected[s]:.4g} "
            f"(warm-up over {warmup_steps} steps, then constant 1.0)."
        )
    return verdict(problems, f"matches the linear warm-up on steps 0..{len(steps) - 1}.")


def check_accumulation(
    accumulate: Callable, model: torch.nn.Module, batch: torch.Tensor, micro_batches: int = 4
) -> Feedback:
    """Hard: ``accumulate(model, batch, micro_batches)`` must leave in ``.grad`` the gradient
    of one forward/backward on the whole ``batch``."""
    if len(batch) % micro_batches:
        return Feedback(False, f"use a batch whose size ({len(batch)}) divides by {micro_batches}.")
    model.zero_grad(set_to_none=True)
    _loss_and_backward(model, batch)
    reference = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    accumulate(model, batch, micro_batches)
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    if any(g is None for g in grads):
        return Feedback(False, "some parameters have no .grad: call loss.backward() on each micro-batch.")
    ratio = (sum(g.norm() ** 2 for g in grads) / sum(r.norm() ** 2 for r in reference)).sqrt().item()
    if all(torch.allclose(g, r, rtol=1e-4, atol=1e-7) for g, r in zip(grads, reference)):
        return Feedback(True, f"{micro_batches} micro-batches give the big-batch gradient.")
    if abs(ratio - micro_batches) < 0.05 * micro_batches:
        return Feedback(
            False,
            f"the gradient is {ratio:.2f}x too large: divide each micro-batch's loss "
            f"by {micro_batches} before backward().",
        )
    return Feedback(
        False,
        f"the gradient differs from the big-batch one (norm ratio {ratio:.3f}); did "
        "you zero the gradients between micro-batches, or split the batch unevenly?",
    )

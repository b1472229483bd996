"""Checks for chapter 13 (quantization and QLoRA)."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable

import torch
from torch import nn

from . import Feedback, verdict


def _fits_the_page(check: Callable[..., Feedback]) -> Callable[..., Feedback]:
    """Wrap the check's message to 76 columns, so the page shows it without a scroll bar."""

    @functools.wraps(check)
    def wrapped(*args, **kwargs) -> Feedback:
        feedback = check(*args, **kwargs)
        return Feedback(feedback.passed, textwrap.fill(feedback.message, 76))

    return wrapped


@_fits_the_page
def check_compression(rows: list[dict], method: str, answer: float) -> Feedback:
    """Easy: how many times smaller ``method``'s saved folder is than the fp32 baseline's (2 decimals)."""
    by_name = {r["method"]: r for r in rows}
    if method not in by_name or "fp32 (baseline)" not in by_name:
        return Feedback(
            False, f"The table needs rows 'fp32 (baseline)' and {method!r}; it has {sorted(by_name)}."
        )
    expected = by_name["fp32 (baseline)"]["saved_MB"] / by_name[method]["saved_MB"]
    if abs(answer - expected) <= 0.01 * expected:
        return Feedback(
            True,
            f"{expected:.2f}x smaller on disk. Not 32/{by_name[method]['weight_bits']}: "
            "only the linear layers are quantized; embeddings and norms stay as they were.",
        )
    if abs(answer - 1 / expected) <= 0.01 / expected:
        return Feedback(False, "That is the inverse: divide the fp32 size by the quantized size.")
    return Feedback(False, f"{answer} is not it: use the saved_MB column (the files), not footprint_MB.")


@_fits_the_page
def check_group_sizes(
    valid_group_sizes: Callable[[nn.Module, list[int]], list[int]],
    model: nn.Module,
    candidates: tuple[int, ...] = (16, 32, 48, 64, 96, 100, 128, 256),
) -> Feedback:
    """Medium: ``valid_group_sizes(model, candidates)`` keeps the candidates that divide the input size
    of every ``nn.Linear`` in ``model``."""
    inputs = {m.in_features for m in model.modules() if isinstance(m, nn.Linear)}
    expected = [g for g in candidates if all(size % g == 0 for size in inputs)]
    got = list(valid_group_sizes(model, list(candidates)))
    problems = []
    if sorted(got) != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        if missing:
            problems.append(f"missing {missing}.")
        if extra:
            problems.append(
                f"{extra} do not divide every input size {sorted(inputs)} (the output head too?)."
            )
    return verdict(problems, f"{expected} divide every linear layer's input size {sorted(inputs)}.")


@torch.no_grad()
@_fits_the_page
def check_absmax_roundtrip(
    quantize: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    dequantize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Feedback:
    """Hard: per-row absmax int8. ``quantize(w) -> (q int8, scale per row)``, ``dequantize(q, scale) -> w'``;
    every element must come back within half a quantization step of the original."""
    torch.manual_seed(0)
    weight = torch.randn(16, 64) * torch.linspace(0.1, 3.0, 16).unsqueeze(
        1
    )  # rows with very different ranges
    q, scale = quantize(weight)
    problems = []
    if q.dtype != torch.int8:
        problems.append(f"q should be torch.int8, got {q.dtype}.")
    if q.shape != weight.shape:
        problems.append(f"q should keep the shape {tuple(weight.shape)}, got {tuple(q.shape)}.")
    if scale.numel() != weight.shape[0]:
        problems.append(f"one scale per row: expected {weight.shape[0]} scales, got {scale.numel()}.")
    if problems:
        return verdict(problems, "")
    if int(q.abs().max()) > 127:
        return Feedback(False, "Values outside [-127, 127]: scale = absmax / 127 per row.")
    restored = dequantize(q, scale)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    error = (restored - weight).abs()
    if not bool((error <= step / 2 + 1e-6).all()):
        return Feedback(
            False,
            f"The largest error is {float(error.max()):.4f}, more than half a step: round "
            "(not truncate) w / scale, and multiply back by the same per-row scale.",
        )
    return Feedback(
        True,
        f"Round trip within half a step everywhere (max error {float(error.max()):.4f}); "
        "int8 stores 1 byte per weight plus one scale per row.",
    )

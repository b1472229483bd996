"""Checks for chapter 15 (memory and speed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from . import Feedback, verdict

GIB = 2**30


def check_optimizer_state(adamw_gb: float, adamw8bit_gb: float, parameters: float = 7e9) -> Feedback:
    """Easy: GB (1e9 bytes) of optimizer state for ``parameters`` weights: AdamW in float32 (two
    moments, 8 bytes per parameter) and AdamW8bit (about 2 bytes per parameter)."""
    expected = {"AdamW": parameters * 8 / 1e9, "AdamW8bit": parameters * 2 / 1e9}
    answers = {"AdamW": float(adamw_gb), "AdamW8bit": float(adamw8bit_gb)}
    problems = []
    for name, value in answers.items():
        if abs(value - expected[name]) > 0.02 * expected[name]:
            hint = (
                "two float32 moments, 4 bytes each, per parameter"
                if name == "AdamW"
                else "two 8-bit moments, 1 byte each, per parameter"
            )
            if abs(value - expected[name] / 2) <= 0.02 * expected[name]:
                hint = "count both moments (the mean and the mean of squares)"
            problems.append(f"{name}: {value:g} GB is not it; {hint}.")
    return verdict(
        problems,
        f"AdamW: {expected['AdamW']:.0f} GB of state, AdamW8bit: about"
        f" {expected['AdamW8bit']:.0f} GB (bf16 weights: {parameters * 2 / 1e9:.0f} GB).",
    )


def llama_7b_shape():
    """The LlamaConfig of Llama 2 7B (the chapter's 15.11)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    )


def device_plan(config, max_memory: dict, dtype: torch.dtype = torch.bfloat16) -> tuple[dict, dict]:
    """``infer_auto_device_map`` for ``config`` on the meta device (no weights), decoder layers
    kept whole; returns ``(device_map, bytes placed per device)``."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sizes = compute_module_sizes(empty, dtype=dtype)
    planner = logging.getLogger("accelerate.utils.modeling")
    level = planner.level
    planner.setLevel(logging.ERROR)  # the GPUs are planned for, not present
    try:
        device_map = infer_auto_device_map(
            empty, max_memory=dict(max_memory), no_split_module_classes=["LlamaDecoderLayer"], dtype=dtype
        )
    finally:
        planner.setLevel(level)
    used: dict[Any, int] = {}
    for module, device in device_map.items():
        used[device] = used.get(device, 0) + sizes[module]
    return device_map, used


def check_two_gpu_plan(max_memory: dict) -> Feedback:
    """Medium: a ``max_memory`` that spreads the 7B Llama (bf16) over GPUs 0 and 1, at most
    8 GiB each, nothing on the CPU or disk."""
    if not isinstance(max_memory, dict):
        return Feedback(False, 'max_memory is a dict such as {0: "8GiB", 1: "8GiB"}.')
    try:
        _, used = device_plan(llama_7b_shape(), max_memory)
    except (ValueError, TypeError, KeyError) as error:
        return Feedback(False, f"infer_auto_device_map rejected it: {error}")
    problems = []
    elsewhere = sorted(str(d) for d in used if d not in (0, 1))
    if elsewhere:
        problems.append(
            f"modules landed on {', '.join(elsewhere)}: give the GPUs enough room together"
            " (the model is 12.6 GiB) and the CPU none."
        )
    for gpu in (0, 1):
        if used.get(gpu, 0) > 8 * GIB:
            problems.append(f"GPU {gpu} holds {used[gpu] / GIB:.1f} GiB, over 8 GiB.")
        if gpu not in used:
            problems.append(f"GPU {gpu} holds nothing: lower the other GPU's budget.")
    placed = ", ".join(f"{d}: {b / GIB:.1f} GiB" for d, b in used.items())
    return verdict(problems, f"Both GPUs used, nothing offloaded ({placed}).")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        use_cache=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).train()


def gradients(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def check_accumulation(accumulate: Callable[[Any, torch.Tensor, int], Any]) -> Feedback:
    """Hard: ``accumulate(model, batch, micro_batches)`` leaves the full batch's gradients."""
    model = _tiny_llama()
    batch = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    model(input_ids=batch.to(model.device), labels=batch.to(model.device)).loss.backward()
    expected = gradients(model)
    problems = []
    for micro_batches in (2, 4):
        model.zero_grad(set_to_none=True)
        accumulate(model, batch, micro_batches)
        got = gradients(model)
        if set(got) != set(expected):
            problems.append(f"with {micro_batches} micro-batches some parameters have no gradient.")
            continue
        error = max(float((got[n] - expected[n]).abs().max()) for n in expected)
        scale = max(float(g.abs().max()) for g in expected.values())
        if error > 1e-5 * max(scale, 1.0):
            ratio = float(got["lm_head.weight"].norm() / expected["lm_head.weight"].norm())
            hint = (
                f" Your gradients are {ratio:.2f}x the full batch's: divide each micro-batch's"
                " loss by the number of micro-batches."
                if abs(ratio - micro_batches) < 0.1 * micro_batches
                else ""
            )
            problems.append(f"with {micro_batches} micro-batches the gradients differ by {error:.2e}.{hint}")
    return verdict(
        problems,
        "Same gradients as the full batch for 2 and 4 micro-batches.",
    )

"""The course's one table of decoding presets, and a seeded short form of ``generate`` for the
chapters after chapter 1 (which writes ``GenerationConfig(...)`` and ``model.generate(...)`` out).

Every preset is a plain dict of ``GenerationConfig`` fields, spread into the real constructor:
``GenerationConfig(**PRESETS["greedy"], max_new_tokens=40)``.
"""

from __future__ import annotations

import torch

from .profiles import CourseError

PRESETS: dict[str, dict] = {
    # Chapter 1's three presets; "greedy" and "balanced" are also the defaults of chapters 4, 7 and 10.
    # Greedy is deterministic; the sampling presets trade faithfulness for variety.
    "greedy": {"do_sample": False, "repetition_penalty": 1.3},
    "balanced": {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2},
    "creative": {"do_sample": True, "temperature": 1.2, "top_k": 0, "top_p": 0.98},
    # Chapter 9's decoding strategies, bare: the page adds the repetition controls to them.
    "greedy (no penalty)": {"do_sample": False},
    "beam search (4 beams)": {"do_sample": False, "num_beams": 4},
    "top-k sampling (k=20)": {"do_sample": True, "top_k": 20, "top_p": 1.0, "temperature": 1.0},
    "top-p sampling (p=0.9)": {"do_sample": True, "top_k": 0, "top_p": 0.9, "temperature": 1.0},
}


@torch.no_grad()
def generate_text(
    model, tokenizer, prompt: str, preset: str = "greedy", max_new_tokens: int = 40, seed: int = 0
) -> str:
    """Continue ``prompt`` with a preset of :data:`PRESETS`; returns only the new text. Seeded, so
    repeatable. Chapter 1 writes this out; later chapters use it to show a model's writing."""
    from transformers import GenerationConfig  # not set_seed: importing it loads bitsandbytes

    if preset not in PRESETS:
        raise CourseError(f"Unknown generation preset {preset!r}; choose from {sorted(PRESETS)}.")
    if max_new_tokens < 1:
        raise CourseError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    config = GenerationConfig(
        **PRESETS[preset],
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    torch.manual_seed(seed)  # sampling draws from torch's generator only
    output = model.generate(**inputs, generation_config=config)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def new_token_ids(output: torch.Tensor, prompt_width: int, tokenizer) -> list[list[int]]:
    """Each row's generated ids from a left-padded batch's ``generate`` output: the ids after the
    first ``prompt_width`` columns, cut at the first eos or padding (what a metric should see)."""
    done = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    rows = []
    for row in output[:, prompt_width:].tolist():
        cut = next((i for i, token in enumerate(row) if token in done), len(row))
        rows.append(row[:cut])
    return rows

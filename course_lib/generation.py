"""Generation presets as real ``GenerationConfig`` objects, and a seeded side-by-side comparison."""
from __future__ import annotations

import torch

from .profiles import CourseError

# Greedy is deterministic; the sampling presets trade faithfulness for variety.
PRESETS: dict[str, dict] = {
    "greedy": {"do_sample": False, "repetition_penalty": 1.3},
    "balanced": {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.9,
                 "repetition_penalty": 1.2},
    "creative": {"do_sample": True, "temperature": 1.2, "top_k": 0, "top_p": 0.98},
}


def generation_config(preset: str, tokenizer, max_new_tokens: int = 40):
    """A validated ``GenerationConfig`` for a named preset, with the tokenizer's special ids."""
    from transformers import GenerationConfig

    if preset not in PRESETS:
        raise CourseError(f"Unknown generation preset {preset!r}; choose from {sorted(PRESETS)}.")
    if max_new_tokens < 1:
        raise CourseError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **PRESETS[preset])
    config.validate(strict=True)
    return config


@torch.no_grad()
def generate_text(model, tokenizer, prompt: str, preset: str = "greedy",
                  max_new_tokens: int = 40, seed: int = 0) -> str:
    """Continue ``prompt`` with a preset; returns only the new text. Seeded, so repeatable."""
    from transformers import set_seed

    config = generation_config(preset, tokenizer, max_new_tokens)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    set_seed(seed)
    output = model.generate(**inputs, generation_config=config)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def compare_presets(model, tokenizer, prompts: list[str], presets=tuple(PRESETS),
                    max_new_tokens: int = 40, seed: int = 0) -> list[dict]:
    """One row per prompt, one column per preset: the generated continuations."""
    return [{"prompt": prompt} | {name: generate_text(model, tokenizer, prompt, name, max_new_tokens, seed)
                                  for name in presets}
            for prompt in prompts]

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


# --- decoding strategies side by side (chapter 9) -----------------------------------------------

# Each strategy is a set of GenerationConfig fields; the controls are added on top of a strategy.
DECODING_STRATEGIES: dict[str, dict] = {
    "greedy": {"do_sample": False},
    "beam search (4 beams)": {"do_sample": False, "num_beams": 4},
    "top-k sampling (k=20)": {"do_sample": True, "top_k": 20, "top_p": 1.0, "temperature": 1.0},
    "top-p sampling (p=0.9)": {"do_sample": True, "top_k": 0, "top_p": 0.9, "temperature": 1.0},
}
REPETITION_CONTROLS: dict[str, dict] = {
    "repetition_penalty=1.3": {"repetition_penalty": 1.3},
    "no_repeat_ngram_size=3": {"no_repeat_ngram_size": 3},
}


def decoding_config(tokenizer, max_new_tokens: int = 40, **settings):
    """A strictly validated ``GenerationConfig`` from any fields (e.g. a :data:`DECODING_STRATEGIES`
    entry plus a :data:`REPETITION_CONTROLS` entry), with the tokenizer's eos and pad ids."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise CourseError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    config = GenerationConfig(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **settings)
    try:
        config.validate(strict=True)
    except ValueError as error:
        raise CourseError(f"Inconsistent generation settings {settings}: {error}") from None
    return config


from transformers import StoppingCriteria  # noqa: E402  (kept next to the class that needs it)


class StopOnText(StoppingCriteria):
    """A custom ``StoppingCriteria``: stop a sequence once its generated text (after the first
    ``prompt_length`` tokens) contains any of ``stops``, e.g. ``"."`` for one sentence."""

    def __init__(self, tokenizer, stops: list[str], prompt_length: int):
        if not stops or any(not stop for stop in stops):
            raise CourseError("StopOnText needs at least one non-empty stop text.")
        self.tokenizer, self.stops, self.prompt_length = tokenizer, list(stops), prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([any(stop in text for stop in self.stops) for text in texts],
                            dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_batch(model, tokenizer, prompts: list[str], settings: dict, max_new_tokens: int = 40,
                   seed: int = 0, stop_texts: list[str] | None = None) -> list[list[int]]:
    """Generate for all ``prompts`` in one left-padded batch; returns each prompt's new token ids
    (eos and padding removed). ``stop_texts`` adds a :class:`StopOnText` criterion."""
    from transformers import StoppingCriteriaList, set_seed

    side, pad = tokenizer.padding_side, tokenizer.pad_token
    tokenizer.padding_side = "left"  # generation appends on the right: prompts must end at the same column
    if pad is None:  # many base models have no pad token: pad with eos (masked by the attention mask)
        tokenizer.pad_token = tokenizer.eos_token
    try:
        config = decoding_config(tokenizer, max_new_tokens, **settings)
        inputs = tokenizer(list(prompts), return_tensors="pt", padding=True).to(model.device)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    width = inputs["input_ids"].shape[1]
    criteria = StoppingCriteriaList([StopOnText(tokenizer, stop_texts, width)]) if stop_texts else None
    set_seed(seed)
    output = model.generate(**inputs, generation_config=config, stopping_criteria=criteria)
    done = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    new_ids = []
    for row in output[:, width:].tolist():
        cut = next((i for i, token in enumerate(row) if token in done), len(row))
        new_ids.append(row[:cut])
    return new_ids


def compare_decoding(model, tokenizer, prompts: list[str], settings: dict[str, dict],
                     max_new_tokens: int = 40, seed: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """For each named setting: :func:`course_lib.evaluation.generation_metrics` of its generations
    (on token ids) and the decoded texts. Returns ``(metric rows, texts by setting)``."""
    from .evaluation import generation_metrics

    rows, texts = [], {}
    for name, fields in settings.items():
        generated = generate_batch(model, tokenizer, prompts, fields, max_new_tokens, seed)
        rows.append({"decoding": name, **generation_metrics(generated)})
        texts[name] = [tokenizer.decode(ids, skip_special_tokens=True) for ids in generated]
    return rows, texts

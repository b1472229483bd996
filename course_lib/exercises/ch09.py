"""Checks for chapter 9 (evaluation)."""

from __future__ import annotations

import math

import torch

from ..evaluation import distinct_n
from . import Feedback, verdict

DISTINCT_PROBE = [[1, 2, 1, 2, 1, 2], [3, 4, 5], [1, 2, 7]]
PERPLEXITY_TEXT = "Return a new dictionary initialized from an optional positional argument."
NEWLINE_PROMPTS = ["The module defines", "Return the", "The with statement"]


def check_distinct_2(distinct_2) -> Feedback:
    """Easy: ``distinct_2(sequences)``: unique bigrams / all bigrams, pooled over the sequences."""
    expected = distinct_n(DISTINCT_PROBE, 2)
    got = float(distinct_2([list(s) for s in DISTINCT_PROBE]))
    if math.isclose(got, expected, rel_tol=1e-9):
        return Feedback(True, f"{got:.3f}: {round(expected * 10)} distinct bigrams among 10.")
    per_sequence = sum(distinct_n([s], 2) for s in DISTINCT_PROBE) / len(DISTINCT_PROBE)
    if math.isclose(got, per_sequence, rel_tol=1e-9):
        return Feedback(
            False,
            "That is the mean of per-sequence ratios; pool the bigrams of all sequences "
            "first, then divide unique by total.",
        )
    return Feedback(
        False,
        f"Expected {expected:.3f}, got {got:.3f}. Bigrams are pairs of neighbours "
        "inside one sequence (none across sequences).",
    )


@torch.no_grad()
def check_text_perplexity(answer: float, model, tokenizer) -> Feedback:
    """Medium: the perplexity of :data:`PERPLEXITY_TEXT` (no special tokens), from one forward pass."""
    ids = tokenizer(PERPLEXITY_TEXT, return_tensors="pt", add_special_tokens=False)["input_ids"].to(
        model.device
    )
    logits = model(input_ids=ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits.float(), ids[0, 1:]).item()
    expected = math.exp(nll)
    if math.isclose(answer, expected, rel_tol=1e-3):
        return Feedback(
            True, f"{expected:.1f} over {ids.shape[1] - 1} predicted tokens (the first has no context)."
        )
    if math.isclose(answer, nll, rel_tol=1e-3):
        return Feedback(False, "That is the loss (mean negative log-likelihood); perplexity is exp of it.")
    return Feedback(
        False,
        f"{answer:.4g} is not it: score tokens 1..n-1, each from the logits one position "
        "earlier, and take exp of the mean negative log-probability.",
    )


def check_newline_stopper(make_criterion, model, tokenizer, max_new_tokens: int = 40) -> Feedback:
    """Hard: ``make_criterion(tokenizer, prompt_length)`` returns a ``StoppingCriteria`` that ends a
    sequence as soon as its generated text contains a newline. Checked one prompt at a time, greedy."""
    from transformers import GenerationConfig, StoppingCriteriaList

    problems, lengths = [], []
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for prompt in NEWLINE_PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
        width = inputs["input_ids"].shape[1]
        output = model.generate(
            **inputs,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([make_criterion(tokenizer, width)]),
        )
        new = output[0, width:].tolist()
        text = tokenizer.decode(new, skip_special_tokens=True)
        lengths.append(len(new))
        if len(new) == max_new_tokens and "\n" in tokenizer.decode(new[:-1], skip_special_tokens=True):
            problems.append(
                f"For {prompt!r} generation ran all {max_new_tokens} tokens past a newline: "
                "return True for a row once its new text contains '\\n'."
            )
            break
        if "\n" in tokenizer.decode(new[:-1], skip_special_tokens=True):
            problems.append(f"For {prompt!r} generation went on after the first newline.")
            break
        if "\n" not in text and len(new) < max_new_tokens and tokenizer.eos_token_id not in new:
            problems.append(f"For {prompt!r} generation stopped before any newline ({text!r}).")
            break
    return verdict(
        problems, f"Stopped at the first newline: {lengths} new tokens instead of up to {max_new_tokens}."
    )

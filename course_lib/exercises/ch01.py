"""Checks for chapter 1 (models, tokenizers and pipelines)."""

from __future__ import annotations

import torch

from ..models import count_parameters
from . import Feedback, verdict

PROBE_TEXTS = ("The module defines", "def main(", "Return the")


def check_parameter_count(model: torch.nn.Module, answer: int) -> Feedback:
    """Easy: the number of distinct parameters (tied weights once) of ``model``."""
    expected = count_parameters(model)["total"]
    if answer == expected:
        return Feedback(True, f"{answer:,} parameters: right, tied weights counted once.")
    naive = sum(p.numel() for p in model.parameters())
    hint = (
        " Tied input/output embeddings are one tensor: `model.parameters()` already yields it "
        "once, but summing `state_dict()` counts it twice."
        if answer > expected
        else ""
    )
    return Feedback(
        False, f"{answer:,} is not the count; `model.parameters()` gives {naive:,} entries to sum.{hint}"
    )


@torch.no_grad()
def check_added_token(tokenizer, model, token: str, reference_logits: torch.Tensor | None = None) -> Feedback:
    """Medium: ``token`` added as one unsplittable token and the embeddings resized to match.

    With ``reference_logits`` (the logits for ``PROBE_TEXTS[0]`` before the change),
    also checks that resizing left the model's behaviour on old tokens unchanged.
    """
    problems = []
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        problems.append(
            f"{token!r} still encodes to {len(ids)} ids; add it with "
            "`tokenizer.add_tokens` or `add_special_tokens`."
        )
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        problems.append(
            f"the embedding matrix has {rows} rows but the tokenizer has {len(tokenizer)} "
            "tokens: call `model.resize_token_embeddings(len(tokenizer))`."
        )
    if reference_logits is not None and not problems:
        inputs = tokenizer(PROBE_TEXTS[0], return_tensors="pt").to(model.device)
        logits = model(**inputs).logits[..., : reference_logits.shape[-1]]
        if not torch.allclose(logits, reference_logits.to(logits.device), atol=1e-5):
            problems.append("logits for old tokens changed; resize should only append rows.")
    return verdict(
        problems,
        f"{token!r} is one token (id {ids[0] if ids else '?'}) and the model has {rows} embedding rows.",
    )


@torch.no_grad()
def next_token_rows(model, tokenizer, prompt: str, top_k: int = 5) -> list[dict]:
    """The reference answer of chapter 1's next-token pipeline (and of chapter 4's app): the
    ``top_k`` most likely next tokens after ``prompt``, as ``{"token", "token_id", "probability"}``
    rows, most likely first, probabilities rounded to 4 decimals."""
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    probs = torch.softmax(model(**inputs).logits[0, -1].float(), dim=-1)
    values, indices = probs.topk(top_k)
    return [
        {"token": tokenizer.decode([int(i)]), "token_id": int(i), "probability": round(float(v), 4)}
        for v, i in zip(values, indices)
    ]


def check_top_k_next_tokens(top_k_next_tokens, model, tokenizer, k: int = 5) -> Feedback:
    """Hard: ``top_k_next_tokens(model, tokenizer, prompt, k) -> [(token_id, probability), ...]``
    must agree with :func:`next_token_rows` (what the chapter's ``NextTokenPipeline`` returns)."""
    problems = []
    for prompt in PROBE_TEXTS:
        expected = [(r["token_id"], r["probability"]) for r in next_token_rows(model, tokenizer, prompt, k)]
        got = list(top_k_next_tokens(model, tokenizer, prompt, k))
        if [int(i) for i, _ in got] != [i for i, _ in expected]:
            problems.append(
                f"for {prompt!r} expected ids {[i for i, _ in expected]}, got "
                f"{[int(i) for i, _ in got]} (softmax over the last position's logits?)."
            )
        elif any(abs(float(p) - q) > 1e-3 for (_, p), (_, q) in zip(got, expected)):
            problems.append(f"for {prompt!r} the ids match but the probabilities differ.")
    return verdict(problems, f"matches the pipeline on {len(PROBE_TEXTS)} prompts.")

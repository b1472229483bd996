"""Perplexity on the corpus's held-out documents, for a model and its baselines."""
from __future__ import annotations

import torch

from . import assets
from .assets.pretrain import block_perplexity, pack_blocks, tokenize_split
from .custom_model import BigramConfig, BigramLM, fit_bigram

MAX_BIGRAM_VOCAB = 8192  # a V x V table: 8192^2 floats is already 268 MB


def corpus_ids(tokenizer, split: str) -> torch.Tensor:
    """One split of the course corpus as a 1-D tensor of token ids (documents ended by eos)."""
    return tokenize_split(tokenizer, assets.corpus(), split)


def perplexity_baselines(model, tokenizer, split: str = "validation", block_size: int = 128,
                         max_blocks: int | None = None, seed: int = 0) -> list[dict]:
    """Held-out perplexity of ``model`` against an untrained copy and a counted bigram model.

    Every row is measured on the same blocks. The bigram row is skipped (with a
    note) when the vocabulary is too large for a V x V table.
    """
    from transformers import AutoModelForCausalLM

    blocks = pack_blocks(corpus_ids(tokenizer, split), block_size)[:max_blocks]
    torch.manual_seed(seed)
    untrained = AutoModelForCausalLM.from_config(model.config)
    rows = [{"model": "untrained (random init)", "perplexity": block_perplexity(untrained, blocks)}]
    vocab = len(tokenizer)
    if vocab <= MAX_BIGRAM_VOCAB:
        bigram = fit_bigram(BigramLM(BigramConfig(vocab_size=vocab)), corpus_ids(tokenizer, "train"))
        rows.append({"model": "bigram counts (train split)", "perplexity": block_perplexity(bigram, blocks)})
    else:
        rows.append({"model": f"bigram counts: skipped, vocabulary {vocab} > {MAX_BIGRAM_VOCAB}",
                     "perplexity": float("nan")})
    rows.append({"model": "pretrained", "perplexity": block_perplexity(model, blocks)})
    for row in rows:
        row["perplexity"] = round(row["perplexity"], 2)
        row["tokens"] = blocks.numel()
    return rows


def normalize_answer(text: str) -> str:
    """Whitespace-collapsed, stripped text: the form exact match compares."""
    return " ".join(text.split())


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after :func:`normalize_answer`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if not references:
        raise ValueError("exact_match needs at least one reference.")
    hits = sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references))
    return hits / len(references)

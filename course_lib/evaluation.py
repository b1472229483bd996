"""The course's evaluators: held-out perplexity (one way, with named variants), exact match and
simple metrics of generated text. Every page that reports one of these numbers calls this module."""

from __future__ import annotations

import torch

from . import assets
from .assets.pretrain import pack_blocks, tokenize_split

MAX_BIGRAM_VOCAB = 8192  # a V x V table: 8192^2 floats is already 268 MB
HELD_OUT_BLOCK = 128  # the context the course LM was trained with


def corpus_ids(tokenizer, split: str) -> torch.Tensor:
    """One split of the course corpus as a 1-D tensor of token ids (documents ended by eos)."""
    return tokenize_split(tokenizer, assets.corpus(), split)


def held_out_perplexity(
    model,
    tokenizer,
    split: str = "validation",
    block_size: int = HELD_OUT_BLOCK,
    stride: int | None = None,
    max_blocks: int | None = None,
    batch_size: int = 32,
) -> dict:
    """THE course LM's held-out perplexity: the split read as one token stream (documents ended by
    eos), cut into ``block_size``-token blocks (the tail that fills no block is dropped), scored by
    :func:`perplexity_of_ids` with disjoint windows (``stride=None``): every token but each block's
    first. A smaller ``stride`` is the sliding-window variant over the same tokens (name it where
    you print it). Returns the dict of :func:`perplexity_of_ids`.
    """
    blocks = pack_blocks(corpus_ids(tokenizer, split), block_size)[:max_blocks]
    return perplexity_of_ids(
        model,
        [blocks.reshape(-1).tolist()],
        block_size,
        stride or block_size,
        batch_size,
        tokenizer.pad_token_id or 0,
    )


def bigram_log_probs(train_ids: torch.Tensor, vocab_size: int, smoothing: float = 0.1) -> torch.Tensor:
    """A ``(vocab_size, vocab_size)`` table: row ``a`` holds log p(next token | a), counted over the
    1-D token stream ``train_ids`` with ``smoothing`` added to every count (so nothing is impossible).
    The weights of chapter 1's bigram model, and the bigram baseline of :func:`perplexity_baselines`."""
    if train_ids.dim() != 1 or train_ids.numel() < 2:
        raise ValueError("bigram_log_probs needs a 1-D tensor of at least two token ids.")
    if int(train_ids.max()) >= vocab_size:
        raise ValueError(f"token id {int(train_ids.max())} is outside the vocabulary ({vocab_size}).")
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (zero counts give infinite loss), got {smoothing}.")
    counts = torch.zeros(vocab_size, vocab_size)
    counts.index_put_((train_ids[:-1], train_ids[1:]), torch.ones(train_ids.numel() - 1), accumulate=True)
    counts += smoothing
    return (counts / counts.sum(dim=1, keepdim=True)).log()


def perplexity_baselines(
    model,
    tokenizer,
    split: str = "validation",
    block_size: int = HELD_OUT_BLOCK,
    max_blocks: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Held-out perplexity (:func:`held_out_perplexity`) of ``model`` against an untrained copy and
    a counted bigram model (:func:`bigram_log_probs` of the train split).

    Every row is measured on the same tokens. The bigram row is skipped (with a
    note) when the vocabulary is too large for a V x V table.
    """
    from transformers import AutoModelForCausalLM

    def measured(candidate) -> float:
        return held_out_perplexity(candidate, tokenizer, split, block_size, max_blocks=max_blocks)[
            "perplexity"
        ]

    blocks = pack_blocks(corpus_ids(tokenizer, split), block_size)[:max_blocks]
    torch.manual_seed(seed)
    untrained = AutoModelForCausalLM.from_config(model.config)
    rows = [{"model": "untrained (random init)", "perplexity": measured(untrained)}]
    vocab = len(tokenizer)
    if vocab <= MAX_BIGRAM_VOCAB:  # the same tokens as held_out_perplexity: all but each block's first
        log_probs = bigram_log_probs(corpus_ids(tokenizer, "train"), vocab)
        nll = -log_probs[blocks[:, :-1], blocks[:, 1:]].mean()
        rows.append({"model": "bigram counts (train split)", "perplexity": float(nll.exp())})
    else:
        rows.append(
            {
                "model": f"bigram counts: skipped, vocabulary {vocab} > {MAX_BIGRAM_VOCAB}",
                "perplexity": float("nan"),
            }
        )
    rows.append({"model": "pretrained", "perplexity": measured(model)})
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


def unigram_perplexity(
    train_ids: torch.Tensor, blocks: torch.Tensor, vocab_size: int, smoothing: float = 1.0
) -> float:
    """Perplexity of a unigram model (token frequencies in ``train_ids``, plus ``smoothing`` per
    vocabulary entry) on exactly the tokens :func:`block_perplexity` scores: every token of every
    block except the first. The baseline a language model must beat by using context."""
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (unseen tokens would get probability 0), got {smoothing}.")
    if int(train_ids.max()) >= vocab_size or int(blocks.max()) >= vocab_size:
        raise ValueError(f"A token id is >= vocab_size={vocab_size}; pass len(tokenizer).")
    counts = torch.bincount(train_ids.reshape(-1), minlength=vocab_size).double() + smoothing
    log_probs = (counts / counts.sum()).log()
    return float(torch.exp(-log_probs[blocks[:, 1:].reshape(-1)].mean()))


# --- perplexity of arbitrary texts: token-weighted, with a sliding window ------------------------


def sliding_windows(length: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """How a sequence of ``length`` tokens is scored with windows of at most ``max_length`` tokens
    that start every ``stride`` tokens: ``(begin, end, first_scored)`` per window.

    Window ``ids[begin:end]`` scores the tokens ``first_scored .. end - 1``, each predicted from the
    tokens before it in the window; every token after the first is scored exactly once. With
    ``stride == max_length`` the windows are disjoint (a token at a window's start gets no context
    and is not scored); a smaller stride gives each scored token at least ``max_length - stride``
    tokens of context, at the cost of more forward passes.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (one token of context, one to predict), got {max_length}.")
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length={max_length}, got {stride}.")
    windows, scored_until = [], 1  # the first token of a sequence has no context: never scored
    for begin in range(0, max(length - 1, 1), stride):
        end = min(begin + max_length, length)
        first = max(scored_until, begin + 1)
        if first < end:
            windows.append((begin, end, first))
            scored_until = end
        if end == length:
            break
    return windows


@torch.no_grad()
def perplexity_of_ids(
    model,
    sequences: list[list[int]],
    max_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    pad_token_id: int = 0,
) -> dict:
    """Token-weighted perplexity of token sequences: exp(total negative log-likelihood / scored tokens).

    Long sequences are cut into :func:`sliding_windows`; context-only positions get label -100, the
    windows are batched with right padding (attention mask 0, label -100), and the loss is summed
    over exactly the scored tokens, so every token weighs the same whatever its text or batch.
    """
    import math

    from .prep import IGNORE_INDEX, pad_features

    stride = stride or max_length
    features = []
    for ids in sequences:
        ids = [int(t) for t in ids]
        for begin, end, first in sliding_windows(len(ids), max_length, stride):
            window = ids[begin:end]
            features.append(
                {"input_ids": window, "labels": [IGNORE_INDEX] * (first - begin) + window[first - begin :]}
            )
    if not features:
        raise ValueError("Nothing to score: every sequence has fewer than 2 tokens.")
    model.eval()
    total_nll, scored = 0.0, 0
    for start in range(0, len(features), batch_size):
        batch = {
            k: v.to(model.device)
            for k, v in pad_features(features[start : start + batch_size], pad_token_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]
        total_nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        ).item()
        scored += int((targets != IGNORE_INDEX).sum())
    return {
        "perplexity": math.exp(total_nll / scored),
        "scored tokens": scored,
        "windows": len(features),
        "tokens through the model": sum(len(f["input_ids"]) for f in features),
    }


def text_perplexity(
    model, tokenizer, texts: list[str], max_length: int = 128, stride: int | None = None, batch_size: int = 8
) -> dict:
    """:func:`perplexity_of_ids` for texts, tokenised without special tokens."""
    if isinstance(texts, str):
        raise ValueError("Pass a list of texts, not one string.")
    sequences = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked anyway
    return perplexity_of_ids(model, sequences, max_length, stride, batch_size, pad)


def mean_of_text_perplexities(
    model, tokenizer, texts: list[str], max_length: int = 128, stride: int | None = None
) -> float:
    """The mean of each text's own perplexity: a common mistake. Short texts weigh as much as long
    ones, and one badly predicted short text moves the mean a lot. Reported to compare against."""
    values = [text_perplexity(model, tokenizer, [text], max_length, stride)["perplexity"] for text in texts]
    return sum(values) / len(values)


# --- simple metrics of generated text -----------------------------------------------------------


def _ngrams(sequence, n: int) -> list[tuple]:
    return [tuple(sequence[i : i + n]) for i in range(len(sequence) - n + 1)]


def distinct_n(sequences: list, n: int) -> float:
    """Distinct-n (Li et al., 2016): unique n-grams / all n-grams, pooled over ``sequences`` (lists of
    tokens or words). 1.0 means no n-gram occurs twice; low values mean the outputs repeat themselves."""
    grams = [gram for sequence in sequences for gram in _ngrams(list(sequence), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(sequences: list, n: int = 3) -> float:
    """Share of n-grams that repeat an n-gram seen earlier in the same sequence (pooled): the loops a
    greedy decoder falls into. 0 when no sequence repeats an n-gram."""
    repeats = total = 0
    for sequence in sequences:
        seen: set[tuple] = set()
        for gram in _ngrams(list(sequence), n):
            repeats += gram in seen
            seen.add(gram)
            total += 1
    return repeats / total if total else 0.0


def generation_metrics(sequences: list) -> dict:
    """Distinct-1, distinct-2, repeated 3-grams (%) and mean length, for one set of generations."""
    if not sequences:
        raise ValueError("generation_metrics needs at least one generated sequence.")
    return {
        "distinct-1": round(distinct_n(sequences, 1), 3),
        "distinct-2": round(distinct_n(sequences, 2), 3),
        "repeated 3-grams %": round(100 * repetition_rate(sequences, 3), 1),
        "mean length": round(sum(len(s) for s in sequences) / len(sequences), 1),
    }

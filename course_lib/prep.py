"""Data preparation for language-model training, from raw documents to batches with the right labels.

* corpus hygiene: :func:`clean_text`, exact deduplication and a length filter
  (:func:`clean_corpus` reports the counts after each step); :func:`simulate_crawl`
  adds known noise to a clean corpus so the pipeline can be checked against it;
* chat data: :func:`sft_messages` turns an instruction row into system/user/assistant
  messages;
* tokenisation and packing into fixed blocks (:func:`tokenize_and_pack`) and what
  padding one document per row would cost instead (:func:`padding_cost`);
* labels: :func:`causal_lm_labels` (no shift: the model shifts), :func:`tokenize_chat`
  (assistant-only labels) and :func:`pad_features` (padding that carries no loss, for code
  without a tokenizer; chapter 6 pads with ``transformers.DataCollatorForSeq2Seq``).
"""

from __future__ import annotations

import hashlib
import random
import re
import unicodedata
from collections.abc import Iterable

import torch

from .profiles import CourseError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and every HF model) skips
SYSTEM_PROMPT = "You answer questions about the Python standard library."
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")  # marks assistant text in a chat template
# Short page furniture of the kind a web crawl is full of; all shorter than the default min_chars.
BOILERPLATE = (
    "Skip to main content",
    "Cookie settings",
    "Page 2 of 7",
    "Previous | Next | Index",
    "Log in to reply",
    "Share this page",
    "Loading...",
    "Copyright 2001-2024. All rights reserved.",
)


# --- corpus hygiene -------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Unicode NFC, no control characters, ``\\n`` line ends, no trailing spaces, at most one blank
    line in a row, no leading/trailing whitespace. Idempotent: ``clean_text(clean_text(t)) == clean_text(t)``."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = _TRAILING_SPACE.sub("\n", text)
    text = _BLANK_RUN.sub("\n\n", text)
    return text.strip()


def text_hash(text: str) -> str:
    """SHA-256 of a text: equal hashes mean exactly equal texts (the key of exact dedup)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def exact_dedup(rows: list[dict], text_column: str = "text") -> list[dict]:
    """Keep the first row of each group of rows with exactly the same text."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = text_hash(row[text_column])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept


def clean_corpus(
    rows: Iterable[dict], text_column: str = "text", min_chars: int = 100, max_chars: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Clean, drop empty rows, exact-dedup and length-filter documents.

    Dedup runs after cleaning, so copies that differ only in whitespace or control
    characters count as duplicates. Returns ``(kept rows, one count row per step)``.
    """
    if min_chars < 0 or (max_chars is not None and max_chars < min_chars):
        raise ValueError(
            f"Need 0 <= min_chars <= max_chars, got min_chars={min_chars}, max_chars={max_chars}."
        )
    rows = list(rows)
    if rows and text_column not in rows[0]:
        raise CourseError(
            f"No column {text_column!r}; the rows have {sorted(rows[0])}. "
            "Pass text_column= with the column that holds the text."
        )
    steps = [_count("raw", rows, text_column, len(rows))]
    cleaned = [row | {text_column: clean_text(row[text_column])} for row in rows]
    cleaned = [row for row in cleaned if row[text_column]]
    steps.append(_count("cleaned, empty dropped", cleaned, text_column, steps[-1]["documents"]))
    unique = exact_dedup(cleaned, text_column)
    steps.append(_count("exact duplicates removed", unique, text_column, steps[-1]["documents"]))
    upper = max_chars if max_chars is not None else float("inf")
    kept = [row for row in unique if min_chars <= len(row[text_column]) <= upper]
    label = f"length filter ({min_chars} <= chars" + (f" <= {max_chars})" if max_chars else ")")
    steps.append(_count(label, kept, text_column, steps[-1]["documents"]))
    return kept, steps


def _count(step: str, rows: list[dict], text_column: str, before: int) -> dict:
    return {
        "step": step,
        "documents": len(rows),
        "removed": before - len(rows),
        "characters": sum(len(row[text_column]) for row in rows),
    }


def simulate_crawl(
    rows: Iterable[dict],
    seed: int = 0,
    duplicate_fraction: float = 0.15,
    variant_fraction: float = 0.1,
    control_fraction: float = 0.05,
    empty_rows: int = 12,
    text_column: str = "text",
) -> tuple[list[dict], dict]:
    """A noisy copy of a clean corpus, with the noise counted, to test a cleaning pipeline on.

    Adds exact copies of some documents, copies that differ only in whitespace
    (CRLF line ends, trailing spaces, extra blank lines), control characters inside
    some documents, empty rows, and short boilerplate lines; then shuffles. Every
    added document is noise: cleaning the crawl should give back the cleaned corpus.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("simulate_crawl needs at least one row.")
    rng = random.Random(seed)
    out = [dict(row) for row in rows]
    for row in rng.sample(out, int(control_fraction * len(rows))):
        text = row[text_column]
        cut = rng.randrange(len(text) + 1)
        row[text_column] = text[:cut] + rng.choice(["\x00", "\x0c", "\x1b", "\x7f"]) + text[cut:]
    copies = [dict(row) for row in rng.sample(rows, int(duplicate_fraction * len(rows)))]
    variants = []
    for row in rng.sample(rows, int(variant_fraction * len(rows))):
        old, new = rng.choice([("\n", "\r\n"), ("\n", " \t\n"), ("\n\n", "\n\n\n\n")])
        text = row[text_column].replace(old, new)
        variants.append(row | {text_column: "  " + text + "\n"})
    template = {key: "" for key in rows[0]}
    empties = [template | {text_column: rng.choice(["", " ", "\n\n", "\t"])} for _ in range(empty_rows)]
    boilerplate = [template | {text_column: line} for line in BOILERPLATE]
    out += copies + variants + empties + boilerplate
    rng.shuffle(out)
    injected = {
        "exact copies": len(copies),
        "whitespace variants": len(variants),
        "control characters (in place)": int(control_fraction * len(rows)),
        "empty rows": len(empties),
        "boilerplate lines": len(boilerplate),
    }
    return out, injected


# --- chat data ------------------------------------------------------------------------------------


def sft_messages(row: dict, system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """An instruction row (``instruction``, optional ``input``, ``output``) as chat messages."""
    missing = {"instruction", "output"} - set(row)
    if missing:
        raise CourseError(f"An SFT row needs 'instruction' and 'output'; missing {sorted(missing)}.")
    user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]


# --- tokenise and pack ----------------------------------------------------------------------------


def group_texts(sequences: Iterable[list[int]], block_size: int) -> list[list[int]]:
    """Concatenate token sequences and cut them into full blocks of ``block_size`` (tail dropped)."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    stream = [token for sequence in sequences for token in sequence]
    usable = len(stream) // block_size * block_size
    return [stream[start : start + block_size] for start in range(0, usable, block_size)]


def tokenize_and_pack(dataset, tokenizer, block_size: int = 128, text_column: str = "text"):
    """A ``datasets.Dataset`` of ``input_ids`` blocks: every document is tokenised, ended with
    eos (so the model sees where one stops) and packed end to end, with no padding.

    Packing runs over the whole dataset in one batch, so only the last partial block is dropped.
    """
    if tokenizer.eos_token_id is None:
        raise CourseError("The tokenizer has no eos token to separate documents; set tokenizer.eos_token.")

    def pack(batch: dict) -> dict:
        # verbose=False: documents longer than the model's context are expected here, they get cut.
        encoded = tokenizer(batch[text_column], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": group_texts((ids + [tokenizer.eos_token_id] for ids in encoded), block_size)}

    return dataset.map(pack, batched=True, batch_size=None, remove_columns=dataset.column_names)


def padding_cost(lengths: list[int], block_size: int) -> list[dict]:
    """Packing against one document per row (truncated or padded to ``block_size``), given each
    document's token count (eos included): rows, padding share, tokens lost."""
    total = sum(lengths)
    one_per_row_padding = sum(block_size - min(n, block_size) for n in lengths)
    one_per_row_lost = sum(max(n - block_size, 0) for n in lengths)
    packed_rows = total // block_size
    return [
        {
            "layout": "one document per row",
            "rows": len(lengths),
            "padding %": round(100 * one_per_row_padding / (len(lengths) * block_size), 1),
            "tokens lost %": round(100 * one_per_row_lost / total, 1),
        },
        {
            "layout": "packed blocks",
            "rows": packed_rows,
            "padding %": 0.0,
            "tokens lost %": round(100 * (total - packed_rows * block_size) / total, 1),
        },
    ]


# --- labels ---------------------------------------------------------------------------------------


def causal_lm_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Labels for a causal LM: the input ids themselves, NOT shifted (the model shifts them
    internally), with :data:`IGNORE_INDEX` wherever ``attention_mask`` is 0 (padding)."""
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    return labels


def tokenize_chat(tokenizer, messages: list[dict], max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids, attention mask and assistant-only labels for one conversation.

    With a chat template that marks assistant turns (``{% generation %}``) the mask comes
    from ``apply_chat_template(..., return_assistant_tokens_mask=True)`` and covers every
    assistant turn. Templates without the markers fall back to "everything after the
    prompt", which needs the conversation to end with its only assistant turn.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise CourseError(
            "This tokenizer has no chat template (a base model such as SmolLM2-135M ships none). "
            "Give it one first: tokenizer.chat_template = <a Jinja template>, or "
            "trl.clone_chat_template(model, tokenizer, <an instruct model's repo>)."
        )
    if _GENERATION_TAG.search(template):
        encoded = tokenizer.apply_chat_template(
            messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    else:
        if [m["role"] for m in messages].count("assistant") != 1 or messages[-1]["role"] != "assistant":
            raise CourseError(
                "Without {% generation %} markers in the chat template, only a conversation "
                "ending with its single assistant turn can be masked."
            )
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        prompt = tokenizer.apply_chat_template(
            messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        mask = [0] * len(prompt) + [1] * (len(ids) - len(prompt))
    if not any(mask):
        raise CourseError(
            "No token of this conversation belongs to an assistant turn: nothing would "
            "carry loss. Does the conversation have an assistant message?"
        )
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(ids, mask)]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def loss_tokens_text(tokenizer, input_ids, labels) -> str:
    """Decode exactly the tokens whose label carries loss (special tokens kept): what training
    teaches the model to produce."""
    ids = [int(token) for token, label in zip(input_ids, labels) if int(label) != IGNORE_INDEX]
    return tokenizer.decode(ids, skip_special_tokens=False)


def pad_features(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``{"input_ids", "labels"}`` examples into a CPU batch: ``pad_token_id`` in
    ``input_ids``, 0 in ``attention_mask``, :data:`IGNORE_INDEX` in ``labels`` (no loss on padding).

    For code that has token ids but no tokenizer (the evaluators); with a tokenizer, use
    ``transformers.DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)`` (chapter 6).
    Examples without ``labels`` are labelled with their own ids. Move the batch to the model's device.
    """
    if not features:
        raise ValueError("Need at least one example to make a batch.")
    width = max(len(f["input_ids"]) for f in features)
    batch = {"input_ids": [], "attention_mask": [], "labels": []}
    for feature in features:
        ids = list(feature["input_ids"])
        labels = list(feature.get("labels", ids))
        gap = width - len(ids)
        batch["input_ids"].append(ids + [pad_token_id] * gap)
        batch["attention_mask"].append([1] * len(ids) + [0] * gap)
        batch["labels"].append(labels + [IGNORE_INDEX] * gap)
    return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


# --- reports for the chapter ----------------------------------------------------------------------


def label_alignment(tokenizer, input_ids: torch.Tensor, positions: int = 6) -> list[dict]:
    """For the first ``positions`` tokens of a 1-D sequence: the input token, the target the model
    trains it on with unshifted labels (the next token), and the one after a hand shift (two ahead)."""
    ids = [int(t) for t in input_ids]
    if len(ids) < positions + 2:
        raise ValueError(
            f"Need at least {positions + 2} tokens to show {positions} positions, got {len(ids)}."
        )
    token = tokenizer.convert_ids_to_tokens
    return [
        {
            "position": t,
            "input token": token(ids[t]),
            "target, labels = ids": token(ids[t + 1]),
            "target, hand-shifted": token(ids[t + 2]),
        }
        for t in range(positions)
    ]


def assistant_loss_report(tokenizer, rows: Iterable[dict], system: str | None = SYSTEM_PROMPT) -> dict:
    """Render SFT rows as chats with assistant-only labels and count what carries loss: the share
    of tokens, how many conversations' loss text starts with their answer, and what follows it."""
    tokens = with_loss = matched = 0
    endings: dict[str, int] = {}
    count = 0
    for row in rows:
        encoded = tokenize_chat(tokenizer, sft_messages(row, system))
        taught = loss_tokens_text(tokenizer, encoded["input_ids"], encoded["labels"])
        tokens += len(encoded["input_ids"])
        with_loss += sum(label != IGNORE_INDEX for label in encoded["labels"])
        if taught.startswith(row["output"]):
            matched += 1
            ending = taught[len(row["output"]) :]
            endings[ending] = endings.get(ending, 0) + 1
        count += 1
    return {
        "conversations": count,
        "tokens": tokens,
        "tokens with loss": with_loss,
        "loss share %": round(100 * with_loss / tokens, 1),
        "loss text starts with the answer": matched,
        "what follows the answer": ", ".join(f"{e!r} ({n})" for e, n in endings.items()),
    }


@torch.no_grad()
def token_weighted_loss(model, examples: list[dict]) -> float:
    """Mean loss over every token that carries loss, running each example alone (no padding):
    the reference a padded batch's loss must equal."""
    total, count = 0.0, 0
    for example in examples:
        ids = torch.tensor([example["input_ids"]], device=model.device)
        labels = torch.tensor([example.get("labels", example["input_ids"])], device=model.device)
        n_scored = int((labels[0, 1:] != IGNORE_INDEX).sum())
        if n_scored:
            total += model(input_ids=ids, labels=labels).loss.item() * n_scored
            count += n_scored
    if not count:
        raise ValueError("No example has a token that carries loss.")
    return total / count

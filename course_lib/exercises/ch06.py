"""Checks for chapter 6 (data preparation)."""

from __future__ import annotations

import torch

from .. import prep
from . import Feedback, verdict

DEDUP_PROBE = [
    "Return the length.",
    "Sort a list.",
    "Return the length.  \r\n",
    "Sort a list.\x00",
    "Open a file.",
    "",
    "Return the length.",
]
SFT_PROBES = [
    {
        "instruction": "Which standard-library module defines the function `dumps`?",
        "input": "",
        "output": "json",
    },
    {"instruction": "What are the parameters of `os.path.join`?", "input": "", "output": "(a, *p)"},
    {
        "instruction": "Describe `shutil.copy` in one sentence.",
        "input": "",
        "output": 'Copy data and mode bits ("cp src dst").',
    },
]


def check_dedup(dedup) -> Feedback:
    """Easy: ``dedup(texts) -> texts``: cleaned with ``clean_text``, empty ones dropped, exact
    duplicates removed, first occurrences kept in order."""
    expected = [t for t in dict.fromkeys(prep.clean_text(t) for t in DEDUP_PROBE) if t]
    got = list(dedup(list(DEDUP_PROBE)))
    if got == expected:
        return Feedback(True, f"{len(DEDUP_PROBE)} texts -> {len(got)} unique, in their first-seen order.")
    if sorted(got) == sorted(expected):
        return Feedback(False, "Right texts, wrong order: keep the first occurrence of each, in order.")
    if len(got) > len(expected):
        return Feedback(
            False,
            f"{len(got)} texts kept, {len(expected)} expected: clean each text with "
            "`clean_text` *before* comparing, so whitespace variants match, and drop empty ones.",
        )
    return Feedback(False, f"Expected {expected}, got {got}.")


def check_labels(make_labels) -> Feedback:
    """Medium: ``make_labels(input_ids, attention_mask) -> labels`` for a right-padded batch."""
    input_ids = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = make_labels(input_ids.clone(), attention_mask.clone())
    expected = prep.causal_lm_labels(input_ids, attention_mask)
    if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
        return Feedback(False, f"Return a tensor of shape {tuple(input_ids.shape)}.")
    if torch.equal(labels, expected):
        return Feedback(True, "Labels = inputs, unshifted, -100 on padding: the model shifts.")
    problems = []
    if torch.equal(labels[:, :-1][attention_mask[:, 1:] == 1], input_ids[:, 1:][attention_mask[:, 1:] == 1]):
        problems.append(
            "You shifted the labels by hand; the model shifts them again internally, so the "
            "model would learn to predict two tokens ahead. Use the input ids as they are."
        )
    if (labels[attention_mask == 0] != prep.IGNORE_INDEX).any():
        problems.append("Padding positions must hold -100 so they carry no loss.")
    return verdict(problems or [f"Expected {expected.tolist()}, got {labels.tolist()}."], "")


def check_assistant_labels(assistant_labels, tokenizer) -> Feedback:
    """Hard: ``assistant_labels(tokenizer, messages) -> (input_ids, labels)`` where only the
    assistant's answer and its end-of-turn token carry loss (a trailing newline may too)."""
    problems = []
    for row in SFT_PROBES:
        messages = prep.sft_messages(row)
        input_ids, labels = assistant_labels(tokenizer, messages)
        input_ids, labels = [int(t) for t in input_ids], [int(t) for t in labels]
        reference = list(
            tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        )
        if input_ids != reference:
            problems.append("input_ids must be the whole conversation through the chat template.")
            break
        taught = prep.loss_tokens_text(tokenizer, input_ids, labels)
        answer = row["output"] + "<|im_end|>"
        if taught not in (answer, answer + "\n"):
            problems.append(
                f"For {row['instruction'][:40]!r}... the tokens with loss decode to {taught!r}, "
                f"expected {answer!r}. Tokenise the prompt with add_generation_prompt=True: "
                "everything after it is the answer."
            )
            break
    return verdict(problems, f"On {len(SFT_PROBES)} conversations only the answer and <|im_end|> carry loss.")

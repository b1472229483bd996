"""Checks for chapter 2 (datasets)."""

from __future__ import annotations

import json
from collections.abc import Callable

from ..dataset_ops import format_alpaca, word_counts
from . import Feedback, verdict

# Rows with and without an input, and a few awkward characters, to compare formatters on.
ALPACA_PROBES = (
    {
        "instruction": "Describe `json.dumps` in one sentence.",
        "input": "",
        "output": "Serialize ``obj`` to a JSON formatted ``str``.",
    },
    {
        "instruction": "Which standard-library module defines this function?",
        "input": "`urlopen`",
        "output": "urllib.request",
    },
    {
        "instruction": "What are the parameters of `zip`?",
        "input": "  ",
        "output": "(*iterables, strict=False)",
    },
)


def _is_short(output: str, max_words: int) -> bool:
    return len(output.split()) <= max_words


def check_short_answer_split(splits, source, max_words: int = 5) -> Feedback:
    """Easy: ``source`` (the sft-data train split) filtered to rows whose ``output`` has at most
    ``max_words`` words, then split 90/10 into ``train``/``test`` with
    ``train_test_split(test_size=0.1, seed=0)``."""
    if not hasattr(splits, "keys") or set(splits.keys()) != {"train", "test"}:
        return Feedback(
            False, "expected the DatasetDict that `train_test_split` returns, with 'train' and 'test' splits."
        )
    problems = []
    expected = source.filter(lambda output: _is_short(output, max_words), input_columns="output")
    train, test = splits["train"], splits["test"]
    if len(train) + len(test) != len(expected):
        problems.append(
            f"train + test hold {len(train) + len(test)} rows; {len(expected)} rows have an "
            f"output of at most {max_words} words (split on whitespace: `len(output.split())`)."
        )
    elif not all(_is_short(o, max_words) for o in list(train["output"]) + list(test["output"])):
        problems.append(f"some rows have outputs longer than {max_words} words.")
    if abs(len(test) - round(0.1 * len(expected))) > 1:
        problems.append(
            f"the test split has {len(test)} rows; 10% would be about {round(0.1 * len(expected))}."
        )
    if not problems:
        reference = expected.train_test_split(test_size=0.1, seed=0)
        if list(reference["test"]["output"]) != list(test["output"]):
            problems.append(
                "right sizes, but not the rows `seed=0` picks: pass seed=0 to train_test_split "
                "(and filter before splitting)."
            )
    return verdict(
        problems,
        f"{len(train)} train and {len(test)} test rows with short answers, reproducible with seed=0.",
    )


def check_alpaca_formatter(formatter: Callable[[dict], str]) -> Feedback:
    """Medium: ``formatter(row) -> str`` must give the same prompt+response text as the course's
    Alpaca format, with and without an input (an input of only spaces counts as none)."""
    problems = []
    for row in ALPACA_PROBES:
        expected = format_alpaca(row)["text"]
        try:
            got = formatter(dict(row))
        except Exception as error:  # report any failure as feedback, not a traceback
            problems.append(f"raised {type(error).__name__}: {error} on {json.dumps(row)[:80]}.")
            continue
        if got != expected:
            for number, (line_got, line_expected) in enumerate(zip(got.split("\n"), expected.split("\n")), 1):
                if line_got != line_expected:
                    problems.append(
                        f"for {row['instruction'][:40]!r} line {number} is {line_got!r}, "
                        f"expected {line_expected!r}."
                    )
                    break
            else:
                problems.append(
                    f"for {row['instruction'][:40]!r} the text has {got.count(chr(10))} line "
                    f"breaks, expected {expected.count(chr(10))}."
                )
    return verdict(
        problems, f"identical to the Alpaca format on {len(ALPACA_PROBES)} rows, with and without input."
    )


def reference_top_words(k: int = 10) -> list[tuple[str, int]]:
    """The ``k`` most frequent words of the pretraining corpus's train split (non-streamed)."""
    from ..data import load_role_dataset

    corpus = load_role_dataset("pretraining-corpus", split="train")
    return word_counts(corpus["text"]).most_common(k)


def check_top_words(answer, k: int = 10) -> Feedback:
    """Hard: the ``k`` most frequent lower-cased words (``[a-z]+`` runs) of the streamed
    pretraining corpus (train split) as ``[(word, count), ...]``, most frequent first."""
    expected = reference_top_words(k)
    try:
        got = [(str(word), int(count)) for word, count in answer]
    except (TypeError, ValueError):
        return Feedback(False, "return a list of (word, count) pairs, e.g. `counter.most_common(k)`.")
    if len(got) != k:
        return Feedback(False, f"expected {k} pairs, got {len(got)}.")
    if got == expected:
        return Feedback(True, f"top {k}: " + ", ".join(f"{w} ({c:,})" for w, c in got[:5]) + ", ...")
    words_got, words_expected = [w for w, _ in got], [w for w, _ in expected]
    wrong = [(w, c) for w, c in got if dict(expected).get(w) not in (None, c)]
    if wrong:
        word, count = wrong[0]
        return Feedback(
            False,
            f"{word!r}: you counted {count:,}, the corpus has {dict(expected)[word]:,}. "
            "Lower-case the text and count runs of a-z (re.findall(r'[a-z]+', ...)) over "
            "every row of the train split.",
        )
    if set(words_got) == set(words_expected):
        return Feedback(False, "the right words, but not in order of frequency (most frequent first).")
    return Feedback(False, f"expected the words {words_expected}; got {words_got}.")

"""Hidden tests for chapter 2 (datasets). One point per test; each test is self-contained
(otter-grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_sizes(short_splits):
    """keeps exactly the rows with at most 5 words, from the whole train split"""
    from course_lib.data import load_role_dataset

    source = load_role_dataset("sft-data", split="train")
    expected = sum(1 for output in source["output"] if len(output.split()) <= 5)
    total = len(short_splits["train"]) + len(short_splits["test"])
    assert total == expected, f"train + test hold {total} rows; {expected} rows have at most 5 words"


def test_ex1_boundary(short_splits):
    """keeps the outputs of exactly 5 words (<=, not <) and only short ones"""
    outputs = list(short_splits["train"]["output"]) + list(short_splits["test"]["output"])
    assert all(len(output.split()) <= 5 for output in outputs), "an output longer than 5 words was kept"
    assert any(len(output.split()) == 5 for output in outputs), "outputs of exactly 5 words must be kept"


def test_ex1_seed(short_splits):
    """filters before splitting and splits with seed=0 (the same test rows as the reference)"""
    from course_lib.data import load_role_dataset

    source = load_role_dataset("sft-data", split="train")
    reference = source.filter(lambda output: len(output.split()) <= 5, input_columns="output")
    reference = reference.train_test_split(test_size=0.1, seed=0)
    assert list(short_splits["test"]["output"]) == list(reference["test"]["output"]), (
        "not the test rows that train_test_split(test_size=0.1, seed=0) picks after filtering"
    )


def test_ex2_missing_input(to_alpaca):
    """a row without an 'input' key gets the no-input template"""
    from course_lib.dataset_ops import format_alpaca

    row = {"instruction": "Name the module that defines `sqrt`.", "output": "math"}
    assert to_alpaca(dict(row)) == format_alpaca(row)["text"], "a row with no 'input' key must work"


def test_ex2_blank_inputs(to_alpaca):
    """tabs and newlines alone count as no input"""
    from course_lib.dataset_ops import format_alpaca

    for blank in ("\t", "\n", " \t\n "):
        row = {"instruction": "What does `len` return?", "input": blank, "output": "the number of items"}
        assert to_alpaca(dict(row)) == format_alpaca({**row, "input": ""})["text"], (
            f"input {blank!r} should be treated as empty"
        )


def test_ex2_text_kept_verbatim(to_alpaca):
    """multi-line, non-ASCII text is kept as it is, with the input section"""
    from course_lib.dataset_ops import format_alpaca

    row = {
        "instruction": "Translate the docstring.\nKeep it short.",
        "input": "Renvoie la clé « x ».",
        "output": "Returns the key\n'x'.",
    }
    got = to_alpaca(dict(row))
    assert isinstance(got, str), f"to_alpaca must return a str, not {type(got).__name__}"
    assert got == format_alpaca(row)["text"], "the text differs from the Alpaca format for a row with input"


def test_ex3_counts(top_words):
    """the 10 most frequent lower-cased words with their exact counts, most frequent first"""
    import re
    from collections import Counter

    from course_lib.data import load_role_dataset

    counts = Counter()
    for text in load_role_dataset("pretraining-corpus", split="train")["text"]:
        counts.update(re.findall(r"[a-z]+", text.lower()))
    expected = counts.most_common(10)
    got = [(str(word), int(count)) for word, count in top_words]
    assert got == expected, f"expected {expected[:3]}..., got {got[:3]}..."


def test_ex3_shape(top_words):
    """a list of 10 (word, count) pairs of str and int"""
    assert isinstance(top_words, list) and len(top_words) == 10, "return a list of 10 pairs"
    assert all(isinstance(w, str) and isinstance(c, int) for w, c in top_words), "pairs of (str, int)"


def test_ex3_lowercased(top_words):
    """words are lower-cased runs of a-z"""
    import re

    assert all(re.fullmatch(r"[a-z]+", str(word)) for word, _ in top_words), (
        "lower-case the text and keep runs of a-z only"
    )

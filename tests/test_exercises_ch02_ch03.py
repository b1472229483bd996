from collections import Counter

import pytest

from course_lib.data import load_role_dataset
from course_lib.exercises import ch02


@pytest.fixture(scope="module")
def sft_train():
    return load_role_dataset("sft-data", split="train")


def test_module_split_check(sft_train):
    module_rows = sft_train.filter(lambda task: task == "module", input_columns="task")
    assert ch02.check_module_split(module_rows.train_test_split(test_size=0.1, seed=0), sft_train).passed
    other_seed = ch02.check_module_split(module_rows.train_test_split(test_size=0.1, seed=1), sft_train)
    assert not other_seed.passed and "seed=0" in other_seed.message
    unfiltered = ch02.check_module_split(sft_train.train_test_split(test_size=0.1, seed=0), sft_train)
    assert not unfiltered.passed and "filter" in unfiltered.message
    assert not ch02.check_module_split(module_rows, sft_train).passed


def test_alpaca_formatter_check():
    def good(row):
        from course_lib.dataset_ops import format_alpaca

        return format_alpaca(row)["text"]

    def always_input(row):  # the usual slip: the Input section even when input is blank
        return (f"Below is an instruction that describes a task, paired with an input that provides further "
                f"context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                f"{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n{row['output']}")

    def broken(row):
        raise KeyError("input")

    assert ch02.check_alpaca_formatter(good).passed
    wrong = ch02.check_alpaca_formatter(always_input)
    assert not wrong.passed and "line 1" in wrong.message
    crashed = ch02.check_alpaca_formatter(broken)
    assert not crashed.passed and "KeyError" in crashed.message


def test_top_words_check():
    expected = ch02.reference_top_words(10)
    assert ch02.check_top_words(expected).passed
    assert "order" in ch02.check_top_words(list(reversed(expected))).message
    miscounted = [(w, c + 1) for w, c in expected]
    assert "you counted" in ch02.check_top_words(miscounted).message
    assert not ch02.check_top_words(expected[:5]).passed
    assert "pairs" in ch02.check_top_words(42).message
    counts = Counter({"zzz": 10**9})
    assert not ch02.check_top_words(counts.most_common(10) + expected[:9]).passed

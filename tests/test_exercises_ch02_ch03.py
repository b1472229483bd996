from collections import Counter

import pytest

from course_lib.data import load_role_dataset
from course_lib.exercises import ch02


@pytest.fixture(scope="module")
def sft_train():
    return load_role_dataset("sft-data", split="train")


def test_short_answer_split_check(sft_train):
    short = sft_train.filter(lambda output: len(output.split()) <= 5, input_columns="output")
    assert 0 < len(short) < len(sft_train)
    assert ch02.check_short_answer_split(short.train_test_split(test_size=0.1, seed=0), sft_train).passed
    other_seed = ch02.check_short_answer_split(short.train_test_split(test_size=0.1, seed=1), sft_train)
    assert not other_seed.passed and "seed=0" in other_seed.message
    unfiltered = ch02.check_short_answer_split(sft_train.train_test_split(test_size=0.1, seed=0), sft_train)
    assert not unfiltered.passed and "at most 5 words" in unfiltered.message
    assert not ch02.check_short_answer_split(short, sft_train).passed


def test_alpaca_formatter_check():
    def good(row):
        from course_lib.dataset_ops import format_alpaca

        return format_alpaca(row)["text"]

    def always_input(row):  # the usual slip: the Input section even when input is blank
        return (
            f"Below is an instruction that describes a task, paired with an input that provides further "
            f"context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
            f"{row['instruction']}\n\n### Input:\n{row['input']}\n\n### Response:\n{row['output']}"
        )

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


# --- chapter 3 -------------------------------------------------------------------------------------


def test_arguments_check(tmp_path):
    from transformers import TrainingArguments

    from course_lib import training
    from course_lib.exercises import ch03

    good = TrainingArguments(
        tmp_path,
        **training.preset_arguments(eval_steps=10, save_steps=10, report_to=["tensorboard"], seed=0),
        max_steps=40,
    )
    assert ch03.check_arguments(good).passed
    wrong = TrainingArguments(tmp_path, **training.preset_arguments(report_to="none", seed=1), max_steps=40)
    message = ch03.check_arguments(wrong).message
    assert "eval_steps is 10" not in message and "report_to" in message and "seed is 1" in message
    assert not ch03.check_arguments({"eval_steps": 10}).passed


def test_compute_metrics_check():
    import numpy as np
    from transformers import EvalPrediction

    from course_lib.exercises import ch03

    assert ch03.check_compute_metrics(ch03.reference_metrics).passed
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [2.0, 0, 0]])
    metrics = ch03.reference_metrics(EvalPrediction(predictions=(logits,), label_ids=np.array([0, 1, 2, 0])))
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)

    def accuracy_only(eval_pred):
        logits = (
            eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        )
        return {"accuracy": float(np.mean(np.argmax(logits, -1) == eval_pred.label_ids))}

    def no_tuple(eval_pred):
        predictions = np.argmax(eval_pred.predictions, -1)
        return {"accuracy": float(np.mean(predictions == eval_pred.label_ids)), "macro_f1": 0.0}

    assert "no 'macro_f1'" in ch03.check_compute_metrics(accuracy_only).message
    assert not ch03.check_compute_metrics(no_tuple).passed


def test_loss_threshold_callback_check():
    from transformers import TrainerCallback

    from course_lib.exercises import ch03

    class Good(TrainerCallback):
        def __init__(self, threshold):
            self.threshold = threshold

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("loss", float("inf")) < self.threshold:
                control.should_training_stop = True

    class StopsOnEvalLoss(Good):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if min(v for k, v in logs.items() if k.endswith("loss")) < self.threshold:
                control.should_training_stop = True

    class Never(Good):
        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    assert ch03.check_loss_threshold_callback(Good).passed
    assert "eval_loss" in ch03.check_loss_threshold_callback(StopsOnEvalLoss).message
    assert "still False" in ch03.check_loss_threshold_callback(Never).message
    assert "raised TypeError" in ch03.check_loss_threshold_callback(lambda: None).message

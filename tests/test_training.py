import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import Trainer, TrainingArguments

from course_lib import training
from course_lib.profiles import CourseError

# --- presets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["default", "lora"])
def test_presets_are_plain_dicts_for_real_training_arguments(tmp_path, preset):
    arguments = training.preset_arguments(preset)
    assert isinstance(arguments, dict) and "output_dir" not in arguments
    args = TrainingArguments(tmp_path, **arguments, max_steps=7)
    assert args.max_steps == 7 and args.seed == 0 and args.use_cpu is True and args.report_to == []
    assert args.learning_rate == training.PRESETS[preset].arguments["learning_rate"]
    assert set(training.PRESETS[preset].reasons) == set(training.PRESETS[preset].arguments)
    assert all(training.PRESETS[preset].reasons.values())
    # the reasons are table cells, shown as plain text: markdown backticks would show up raw
    assert not [why for why in training.PRESETS[preset].reasons.values() if "`" in why]
    assert training.preset_arguments(preset, learning_rate=1e-3)["learning_rate"] == 1e-3


def test_removed_and_misspelt_names_fail_with_the_fix():
    with pytest.raises(CourseError, match="'evaluation_strategy' was removed: use eval_strategy"):
        training.preset_arguments("default", evaluation_strategy="steps")
    with pytest.raises(CourseError, match="did you mean 'learning_rate'"):
        training.preset_arguments("default", learning_rat=1e-3)
    with pytest.raises(CourseError, match="Unknown preset"):
        training.preset_arguments("fast")


def test_deepspeed_preset_is_checked_but_needs_deepspeed(tmp_path):
    arguments = training.preset_arguments("deepspeed", deepspeed=str(tmp_path / "ds.json"))
    assert arguments["gradient_accumulation_steps"] == 4 and arguments["bf16"] is True


def test_preset_tables():
    rows = training.preset_table("default", max_steps=5)
    by_name = {r["argument"]: r for r in rows}
    assert by_name["max_steps"]["why"] == "override" and by_name["eval_strategy"]["value"] == "'steps'"
    differing = {r["argument"] for r in training.compare_presets()}
    assert {"learning_rate", "deepspeed", "gradient_accumulation_steps"} <= differing
    assert "seed" not in differing
    overrides = training.override_table("default", max_steps=5, learning_rate=1e-3)
    assert overrides == [
        {"argument": "max_steps", "preset": "(not set)", "this run": 5},
        {"argument": "learning_rate", "preset": 5e-5, "this run": 1e-3},
    ]


# DeepSpeed configs: tests/test_distributed.py


# --- classification helpers --------------------------------------------------------------------------


def test_label_names_from_the_course_asset_and_from_a_class_label():
    from datasets import ClassLabel, Features, Value

    from course_lib.data import load_role_dataset

    assert training.classification_label_names(load_role_dataset("classification-data")) == [
        "asyncio",
        "email",
        "unittest",
        "xml",
    ]
    hub_like = Dataset.from_dict(
        {"text": ["a"], "label": [1]},
        features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}),
    )
    assert training.classification_label_names(hub_like) == ["neg", "pos"]
    too_many = Dataset.from_dict({"text": ["a"], "label": [9]})
    with pytest.raises(CourseError, match="labels.json names 4"):
        training.classification_label_names(too_many)


def test_baselines_and_per_class_report():
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [2.0, 0, 0]])
    assert training.majority_baseline([1, 1, 0], [1, 0, 0, 0]) == {"majority_label": 1, "accuracy": 0.25}
    with pytest.raises(ValueError, match="non-empty"):
        training.majority_baseline([], [1])
    report = {r["class"]: r for r in training.per_class_report(logits, [0, 1, 2, 0], ["a", "b", "c"])}
    assert report["a"] == {"class": "a", "predicted share": 0.5, "precision": 1.0, "recall": 1.0}
    assert report["b"]["precision"] == 0.5 and report["c"]["recall"] == 0.0


# --- a tiny model to train with Trainer ------------------------------------------------------------


class TinyClassifier(torch.nn.Module):
    """Enough of a model for Trainer: takes ``x`` and optional ``labels``, returns loss and logits."""

    def __init__(self, features=4, classes=2):
        super().__init__()
        self.linear = torch.nn.Linear(features, classes)

    def forward(self, x, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.linear(x)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _toy_data(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    labels = (x[:, 0] > 0).long()
    return Dataset.from_dict({"x": x.tolist(), "labels": labels.tolist()}).with_format("torch")


def _toy_args(tmp_path, **overrides):
    settings = dict(
        eval_strategy="no",
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=0.1,
        eval_steps=4,
        logging_steps=2,
        save_steps=4,
        disable_tqdm=True,
        warmup_steps=0,
    )
    return TrainingArguments(tmp_path, **training.preset_arguments("default", **(settings | overrides)))


def _accuracy(eval_pred):
    return {"accuracy": float(np.mean(eval_pred.predictions.argmax(-1) == eval_pred.label_ids))}


def test_live_plot_tensorboard_and_log_history(tmp_path):
    plot = training.LiveLossPlotCallback(title="toy", save_path=tmp_path / "loss.png")
    trainer = Trainer(
        model=TinyClassifier(),
        args=_toy_args(tmp_path / "run", report_to="tensorboard", eval_strategy="steps"),
        train_dataset=_toy_data(),
        eval_dataset=_toy_data(32, seed=1),
        compute_metrics=_accuracy,
        callbacks=[plot],
    )
    trainer.train()

    assert [step for step, _ in plot.train_points] == [2, 4, 6, 8]
    assert [step for step, _ in plot.eval_points] == [4, 8]
    assert plot.figure is not None and (tmp_path / "loss.png").stat().st_size > 1000

    history = training.log_history_table(trainer.state.log_history)
    assert [row["step"] for row in history] == [2, 4, 6, 8] and "eval_accuracy" in history[1]


def test_classification_splits_adds_validation_and_caps_rows():
    big = DatasetDict(
        {
            "train": Dataset.from_dict(
                {"text": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)]}
            ),
            "test": Dataset.from_dict({"text": ["t"] * 30, "label": [0] * 30}),
        }
    )
    splits = training.classification_splits(big, max_rows=20)
    assert list(splits) == ["train", "validation", "test"]
    assert [len(splits[s]) for s in splits] == [20, 10, 20]
    assert not set(splits["train"]["text"]) & set(splits["validation"]["text"])
    again = training.classification_splits(big, max_rows=20)
    assert list(again["train"]["text"]) == list(splits["train"]["text"])  # seeded
    from course_lib.data import load_role_dataset

    course = load_role_dataset("classification-data")
    unchanged = training.classification_splits(course, max_rows=2000)
    assert {s: len(unchanged[s]) for s in unchanged} == {s: len(course[s]) for s in course}
    with pytest.raises(CourseError, match="No 'test' split"):
        training.classification_splits(DatasetDict({"train": big["train"]}))
    with pytest.raises(CourseError, match="DatasetDict"):
        training.classification_splits(big["train"])

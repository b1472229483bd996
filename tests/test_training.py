import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import EvalPrediction, Trainer, TrainingArguments

from course_lib import training
from course_lib.profiles import CourseError


# --- presets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", ["default", "lora"])
def test_presets_build_real_training_arguments(tmp_path, preset):
    args = training.training_arguments(tmp_path, preset, max_steps=7)
    assert isinstance(args, TrainingArguments)
    assert args.max_steps == 7 and args.seed == 0 and args.use_cpu is True and args.report_to == []
    assert args.learning_rate == training.PRESETS[preset].arguments["learning_rate"]
    assert set(training.PRESETS[preset].reasons) == set(training.PRESETS[preset].arguments)
    assert all(training.PRESETS[preset].reasons.values())


def test_removed_and_misspelt_names_fail_with_the_fix(tmp_path):
    with pytest.raises(CourseError, match="'evaluation_strategy' was removed: use eval_strategy"):
        training.training_arguments(tmp_path, evaluation_strategy="steps")
    with pytest.raises(CourseError, match="did you mean 'learning_rate'"):
        training.training_arguments(tmp_path, learning_rat=1e-3)
    with pytest.raises(CourseError, match="Unknown preset"):
        training.preset_arguments("fast")


def test_deepspeed_preset_is_checked_but_needs_deepspeed(tmp_path):
    arguments = training.preset_arguments("deepspeed", deepspeed=str(tmp_path / "ds.json"))
    assert arguments["gradient_accumulation_steps"] == 4 and arguments["bf16"] is True
    training.write_deepspeed_config(tmp_path / "ds.json", arguments=arguments)
    from transformers.integrations.deepspeed import is_deepspeed_available

    if not is_deepspeed_available():
        with pytest.raises(CourseError, match="needs the deepspeed package"):
            training.training_arguments(tmp_path, "deepspeed", deepspeed=str(tmp_path / "ds.json"))


def test_preset_tables():
    rows = training.preset_table("default", max_steps=5)
    by_name = {r["argument"]: r for r in rows}
    assert by_name["max_steps"]["why"] == "override" and by_name["eval_strategy"]["value"] == "'steps'"
    differing = {r["argument"] for r in training.compare_presets()}
    assert {"learning_rate", "deepspeed", "gradient_accumulation_steps"} <= differing
    assert "seed" not in differing
    overrides = training.override_table("default", max_steps=5, learning_rate=1e-3)
    assert overrides == [{"argument": "max_steps", "preset": "(not set)", "this run": 5},
                         {"argument": "learning_rate", "preset": 5e-5, "this run": 1e-3}]


# --- DeepSpeed config ------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_generated_deepspeed_configs_are_valid(stage):
    config = training.deepspeed_config(stage=stage, offload_optimizer=stage >= 1, offload_param=stage == 3)
    assert training.validate_deepspeed_config(config) == []
    assert config["zero_optimization"]["stage"] == stage


def test_deepspeed_validation_finds_each_problem(tmp_path):
    arguments = training.preset_arguments("deepspeed")
    config = training.deepspeed_config(stage=2)
    config.update({"train_micro_batch_size_per_gpu": 16, "fp16": {"enabled": True}, "bf16": {"enabled": True},
                   "gradient_acumulation_steps": 2})
    config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    problems = " | ".join(training.validate_deepspeed_config(config, arguments))
    assert "unknown top-level key 'gradient_acumulation_steps' (did you mean 'gradient_accumulation_steps'?)" in problems
    assert "offload_param needs stage >= 3" in problems
    assert "fp16 and bf16 are both enabled" in problems
    assert "train_micro_batch_size_per_gpu=16 but TrainingArguments has 8" in problems
    assert "fp16.enabled=True but TrainingArguments has False" in problems
    assert "stage must be 0, 1, 2 or 3" in " ".join(
        training.validate_deepspeed_config({"train_batch_size": 8, "zero_optimization": {"stage": 4}}))
    assert "positive integer" in " ".join(training.validate_deepspeed_config({"train_batch_size": 0}))
    assert "set train_micro_batch_size_per_gpu" in " ".join(training.validate_deepspeed_config({}))
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("{not json")
    assert "not valid JSON" in training.validate_deepspeed_config(bad_file)[0]
    assert "does not exist" in training.validate_deepspeed_config(tmp_path / "missing.json")[0]
    with pytest.raises(CourseError, match="Invalid DeepSpeed config"):
        training.write_deepspeed_config(tmp_path / "x.json", config, arguments)


def test_written_deepspeed_config_is_read_by_accelerate(tmp_path):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    path = training.write_deepspeed_config(tmp_path / "ds.json", training.deepspeed_config(stage=3, offload_param=True))
    parsed = HfDeepSpeedConfig(str(path))
    assert parsed.is_zero3() and parsed.is_offload()
    assert json.loads(path.read_text())["train_micro_batch_size_per_gpu"] == "auto"


# --- classification helpers --------------------------------------------------------------------------

def test_label_names_from_the_course_asset_and_from_a_class_label():
    from datasets import ClassLabel, Features, Value

    from course_lib.data import load_role_dataset

    assert training.classification_label_names(load_role_dataset("classification-data")) == \
        ["asyncio", "email", "unittest", "xml"]
    hub_like = Dataset.from_dict({"text": ["a"], "label": [1]},
                                 features=Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}))
    assert training.classification_label_names(hub_like) == ["neg", "pos"]
    too_many = Dataset.from_dict({"text": ["a"], "label": [9]})
    with pytest.raises(CourseError, match="labels.json names 4"):
        training.classification_label_names(too_many)


def test_tokenize_for_classification_truncates_and_keeps_labels():
    from course_lib.models import load_tokenizer

    tokenizer = load_tokenizer("encoder")
    data = DatasetDict({"train": Dataset.from_dict({"text": ["word " * 100, "short"], "label": [0, 1],
                                                    "source": ["a", "b"]})})
    encoded = training.tokenize_for_classification(data, tokenizer, max_length=16)
    assert set(encoded["train"].column_names) == {"label", "input_ids", "token_type_ids", "attention_mask"}
    assert [len(ids) for ids in encoded["train"]["input_ids"]] == [16, 3]
    with pytest.raises(CourseError, match="No column 'body'"):
        training.tokenize_for_classification(data, tokenizer, text_column="body")


def test_classification_metrics_and_baselines():
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [2.0, 0, 0]])
    metrics = training.classification_metrics(EvalPrediction(predictions=(logits,), label_ids=np.array([0, 1, 2, 0])))
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert training.majority_baseline([1, 1, 0], [1, 0, 0, 0]) == {"majority_label": 1, "accuracy": 0.25}
    with pytest.raises(ValueError, match="non-empty"):
        training.majority_baseline([], [1])
    report = {r["class"]: r for r in training.per_class_report(logits, [0, 1, 2, 0], ["a", "b", "c"])}
    assert report["a"] == {"class": "a", "predicted share": 0.5, "precision": 1.0, "recall": 1.0}
    assert report["b"]["precision"] == 0.5 and report["c"]["recall"] == 0.0


def test_confidence_summary():
    confident = training.confidence_summary(np.array([[10.0, 0], [10.0, 0]]), np.array([0, 1]))
    assert confident["accuracy"] == 0.5 and confident["mean_confidence"] > 0.99
    assert confident["ece"] == pytest.approx(0.5, abs=1e-3)


def test_inverse_frequency_weights():
    assert training.inverse_frequency_weights([0, 0, 1, 1], 2).tolist() == [1.0, 1.0]
    assert training.inverse_frequency_weights([0, 0, 0, 1], 2).tolist() == pytest.approx([2 / 3, 2.0])
    with pytest.raises(ValueError, match="never occur"):
        training.inverse_frequency_weights([0, 0], 2)


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
    settings = dict(eval_strategy="no", max_steps=8, per_device_train_batch_size=8, learning_rate=0.1, eval_steps=4,
                    logging_steps=2, save_steps=4, disable_tqdm=True, warmup_steps=0)
    return training.training_arguments(tmp_path, "default", **(settings | overrides))


def test_weighted_loss_trainer_matches_plain_cross_entropy_without_weights(tmp_path):
    model, batch = TinyClassifier(), _toy_data(8)[:8]
    plain = Trainer(model=model, args=_toy_args(tmp_path))
    custom = training.WeightedLossTrainer(model=model, args=_toy_args(tmp_path))
    inputs = {"x": batch["x"], "labels": batch["labels"]}
    assert torch.allclose(plain.compute_loss(model, dict(inputs)), custom.compute_loss(model, dict(inputs)))
    weighted = training.WeightedLossTrainer(model=model, args=_toy_args(tmp_path), class_weights=[1.0, 5.0],
                                            label_smoothing=0.1)
    expected = torch.nn.functional.cross_entropy(model(batch["x"]).logits, batch["labels"],
                                                 weight=torch.tensor([1.0, 5.0]), label_smoothing=0.1)
    loss, outputs = weighted.compute_loss(model, dict(inputs), return_outputs=True)
    assert torch.allclose(loss, expected) and outputs.logits.shape == (8, 2)
    with pytest.raises(ValueError, match="label_smoothing"):
        training.WeightedLossTrainer(model=model, args=_toy_args(tmp_path), label_smoothing=1.0)
    wrong = training.WeightedLossTrainer(model=model, args=_toy_args(tmp_path), class_weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="3 class weights for 2 classes"):
        wrong.compute_loss(model, dict(inputs))


def test_callbacks_write_metadata_plot_and_tensorboard(tmp_path):
    plot = training.LiveLossPlotCallback(title="toy", save_path=tmp_path / "loss.png")
    trainer = training.WeightedLossTrainer(
        model=TinyClassifier(), args=_toy_args(tmp_path / "run", report_to="tensorboard", eval_strategy="steps"),
        train_dataset=_toy_data(), eval_dataset=_toy_data(32, seed=1),
        compute_metrics=training.classification_metrics,
        callbacks=[training.CheckpointMetadataCallback(extra={"dataset": "toy"}), plot])
    trainer.train()

    metadata = training.read_checkpoint_metadata(tmp_path / "run")
    assert [m["checkpoint"] for m in metadata] == ["checkpoint-4", "checkpoint-8"]
    assert metadata[-1]["step"] == 8 and metadata[-1]["extra"] == {"dataset": "toy"}
    assert "eval_accuracy" in metadata[-1]["eval"] and metadata[-1]["train_loss"] is not None
    assert metadata[-1]["train_loss_step"] == 8

    assert [step for step, _ in plot.train_points] == [2, 4, 6, 8]
    assert [step for step, _ in plot.eval_points] == [4, 8]
    assert plot.figure is not None and (tmp_path / "loss.png").stat().st_size > 1000

    scalars = training.read_tensorboard_scalars(tmp_path / "run")
    tags = {row["tag"] for row in scalars}
    assert {"train/loss", "eval/loss", "eval/accuracy"} <= tags
    wide = training.scalars_wide(scalars, ["train/loss", "eval/accuracy"])
    assert [row["step"] for row in wide] == [2, 4, 6, 8] and "eval/accuracy" in wide[1]
    assert all(row["run"].startswith("runs") for row in scalars)

    history = training.log_history_table(trainer.state.log_history)
    assert [row["step"] for row in history] == [2, 4, 6, 8] and "eval_accuracy" in history[1]


def test_reading_tensorboard_without_events_fails_clearly(tmp_path):
    with pytest.raises(CourseError, match="No TensorBoard event files"):
        training.read_tensorboard_scalars(tmp_path)


def test_sequence_classifier_pretrained_and_random_share_the_architecture():
    names = ["a", "b", "c"]
    pretrained = training.sequence_classifier(names, load_report=False)
    random_init = training.sequence_classifier(names, pretrained=False)
    assert type(pretrained) is type(random_init) and pretrained.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert pretrained.num_parameters() == random_init.num_parameters()
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(pretrained.state_dict()[name], random_init.state_dict()[name])
    again = training.sequence_classifier(names, pretrained=False)
    assert torch.equal(random_init.state_dict()[name], again.state_dict()[name])  # seeded


def test_classification_splits_adds_validation_and_caps_rows():
    big = DatasetDict({"train": Dataset.from_dict({"text": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)]}),
                       "test": Dataset.from_dict({"text": ["t"] * 30, "label": [0] * 30})})
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


def test_random_init_classifier_on_the_hub_profile_reads_the_hub_config(monkeypatch):
    from transformers import AutoConfig, BertConfig

    seen = []
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    tiny = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)

    def fake_from_pretrained(source, **kwargs):
        seen.append(source)
        return BertConfig(**tiny, **kwargs)

    monkeypatch.setattr(AutoConfig, "from_pretrained", fake_from_pretrained)
    model = training.sequence_classifier(["neg", "pos"], pretrained=False)
    assert seen == ["sentence-transformers/all-MiniLM-L6-v2"]
    assert model.config.id2label == {0: "neg", 1: "pos"}

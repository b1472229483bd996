import copy
import json

import pytest
import yaml

from course_lib import train_config as tc
from course_lib.__main__ import main


@pytest.fixture
def example():
    return yaml.safe_load(tc.EXAMPLE_CONFIG)


def test_example_is_valid_and_defaults_are_filled(example):
    config = tc.parse_config(tc.EXAMPLE_CONFIG)
    assert config["method"]["name"] == "lora" and config["training"]["logging_steps"] == 10
    del example["data"]["style"], example["method"]["r"]
    filled = tc.parse_config(example)
    assert filled["data"]["style"] == "plain" and filled["method"]["r"] == 8
    assert {row["field"] for row in tc.config_table(filled)} >= {"model.role", "training.learning_rate", "output_dir"}


def _set(config, dotted, value):
    *sections, name = dotted.split(".")
    node = config
    for section in sections:
        node = node[section]
    if value is _DELETE:
        del node[name]
    else:
        node[name] = value


_DELETE = object()
BAD_FIELDS = [
    ("model.role", "gpt-5", "model.role: must be one of causal-lm, chat-model"),
    ("model.role", _DELETE, "model.role: required"),
    ("data.role", "preference-data", "data.role: must be one of sft-data"),
    ("data.task", "poetry", "data.task: must be one of module, signature, summary"),
    ("data.style", "markdown", "data.style: must be one of plain, chat"),
    ("data.train_rows", 0, "data.train_rows: must be >= 1"),
    ("data.train_rows", "many", "data.train_rows: must be a whole number"),
    ("data.eval_rows", 2.5, "data.eval_rows: must be a whole number"),
    ("method.name", "dora", "method.name: must be one of lora, qlora, full"),
    ("method.name", _DELETE, "method.name: required"),
    ("method.r", -1, "method.r: must be >= 1"),
    ("method.alpha", 0, "method.alpha: must be > 0"),
    ("method.dropout", 1.5, "method.dropout: must be < 1"),
    ("method.target_modules", 5, "method.target_modules: must be 'all-linear' or a non-empty list"),
    ("method.target_modules", [], "method.target_modules: must be 'all-linear' or a non-empty list"),
    ("method.lora_alpha", 16, "method.lora_alpha: unknown field; did you mean 'alpha'"),
    ("method.rank", 8, "method.rank: unknown field; did you mean 'r'"),
    ("training.max_steps", 0, "training.max_steps: must be >= 1"),
    ("training.max_steps", _DELETE, "training.max_steps: required"),
    ("training.learning_rate", "fast", "training.learning_rate: must be a number"),
    ("training.learning_rate", -1e-3, "training.learning_rate: must be > 0"),
    ("training.batch_size", True, "training.batch_size: must be a whole number"),
    ("training.gradient_accumulation_steps", 0, "training.gradient_accumulation_steps: must be >= 1"),
    ("training.seed", -3, "training.seed: must be >= 0"),
    ("training.logging_steps", 0, "training.logging_steps: must be >= 1"),
    ("training.max_length", 4, "training.max_length: must be >= 8"),
    ("training.lr", 1e-3, "training.lr: unknown field; did you mean 'learning_rate'"),
    ("output_dir", "", "output_dir: must be a non-empty string"),
    ("output_dir", _DELETE, "output_dir: required"),
    ("optimizer", "adamw", "optimizer: unknown field"),
]


@pytest.mark.parametrize("field, value, message", BAD_FIELDS, ids=[f"{f}={'deleted' if v is _DELETE else repr(v)}"[:40] for f, v, _ in BAD_FIELDS])
def test_each_bad_field_is_named(example, field, value, message):
    config = copy.deepcopy(example)
    _set(config, field, value)
    with pytest.raises(tc.ConfigError) as raised:
        tc.parse_config(config)
    assert message in str(raised.value)


def test_sections_must_be_mappings_and_every_problem_is_listed(example):
    example["training"] = ["max_steps", 40]
    example["method"]["r"] = 0
    with pytest.raises(tc.ConfigError) as raised:
        tc.parse_config(example)
    text = str(raised.value)
    assert "training: must be a mapping" in text and "method.r: must be >= 1" in text
    with pytest.raises(tc.ConfigError, match="missing section"):
        tc.parse_config({k: v for k, v in example.items() if k != "model"})
    with pytest.raises(tc.ConfigError, match="mapping"):
        tc.parse_config(["not", "a", "mapping"])


def test_lora_fields_are_rejected_for_full_fine_tuning(example):
    with pytest.raises(tc.ConfigError, match="method.r: only for lora and qlora"):
        tc.parse_config(example | {"method": {"name": "full", "r": 8}})
    assert tc.parse_config(example | {"method": {"name": "full"}})["method"] == {"name": "full"}


def test_yaml_numbers_written_without_a_dot_are_accepted():
    text = tc.EXAMPLE_CONFIG.replace("learning_rate: 3.0e-3", "learning_rate: 3e-3")
    assert yaml.safe_load(text)["training"]["learning_rate"] == "3e-3"  # YAML 1.1 reads it as text
    assert tc.parse_config(text)["training"]["learning_rate"] == 3e-3


def test_files_yaml_errors_and_missing_files(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  role: [causal-lm\n")
    with pytest.raises(tc.ConfigError, match="not valid YAML at line"):
        tc.load_config(broken)
    with pytest.raises(tc.ConfigError, match="--example"):
        tc.load_config(tmp_path / "missing.yaml")
    path = tc.write_example(tmp_path / "configs" / "example.yaml")
    assert tc.load_config(path)["output_dir"] == "runs/module-lora"


def test_command_line_check_example_and_errors(tmp_path, capsys):
    assert main(["train", "--example"]) == 0
    assert capsys.readouterr().out == tc.EXAMPLE_CONFIG
    good = tc.write_example(tmp_path / "good.yaml")
    assert main(["train", "--check", str(good)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(tc.EXAMPLE_CONFIG.replace("max_steps: 40", "max_steps: -1"))
    assert main(["train", str(bad)]) == 2
    assert "training.max_steps: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_a_short_run_trains_and_saves(tmp_path, example, method):
    example["method"]["name"] = method
    example["data"] |= {"train_rows": 32, "eval_rows": 8}
    example["training"] |= {"max_steps": 3, "batch_size": 8}
    example["output_dir"] = str(tmp_path / method)
    metrics = tc.run(example, progress=False)
    assert metrics["method"] == method and metrics["steps"] == 3
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]
    saved = {p.name for p in (tmp_path / method).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "train_config.yaml", "metrics.json"} <= saved
    assert json.loads((tmp_path / method / "metrics.json").read_text())["eval_loss_after"] == metrics["eval_loss_after"]
    assert tc.load_config(tmp_path / method / "train_config.yaml")["method"]["name"] == method

"""A YAML-driven fine-tuning command: ``python -m course_lib train CONFIG.yaml``.

In the spirit of LLaMA-Factory and axolotl: one file names the model (a role), the data (a role, a
task, a prompt style), the method (LoRA, QLoRA or full fine-tuning) with its settings, the training
hyper-parameters and the output folder; the command builds a TRL ``SFTTrainer`` from it (through
:mod:`course_lib.finetune`), measures the held-out loss before and after training, and saves the
adapter (or model), the resolved config and the metrics into the output folder.

Every field is checked before anything is loaded: :func:`parse_config` raises :class:`ConfigError`
listing each problem with the field's dotted name (``training.learning_rate: ...``), unknown
fields with the closest known name. :data:`EXAMPLE_CONFIG` is a complete, commented example
(``python -m course_lib train --example`` prints it).
"""
from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .profiles import CourseError

EXAMPLE_CONFIG = """\
# Fine-tune the course LM to answer "which module defines this function?" with LoRA.
# Run with:  python -m course_lib train this_file.yaml   (check only: add --check)
model:
  role: causal-lm            # a model role: causal-lm or chat-model
data:
  role: sft-data             # instruction/input/output rows
  task: module               # offline tasks: module, signature, summary (omit for all of them)
  style: plain               # prompt format: plain ("Question: ...\\nAnswer:") or chat (chat template)
  train_rows: 512            # the first N matching training rows
  eval_rows: 64              # held-out rows (validation split) for the loss before/after
method:
  name: lora                 # lora, qlora (4-bit NF4 base + LoRA) or full (every weight)
  r: 8                       # LoRA rank
  alpha: 16                  # LoRA scale is alpha / r
  dropout: 0.0
  target_modules: all-linear # or a list of module names, e.g. [q_proj, v_proj]
training:
  max_steps: 40
  learning_rate: 3.0e-3      # write floats with a dot: YAML reads 3e-3 as a string (accepted too)
  batch_size: 16             # per device
  gradient_accumulation_steps: 1
  seed: 0
output_dir: runs/module-lora
"""

MODEL_ROLES = ("causal-lm", "chat-model")
DATA_ROLES = ("sft-data",)
TASKS = ("module", "signature", "summary")
STYLES = ("plain", "chat")
METHODS = ("lora", "qlora", "full")
LORA_FIELDS = ("r", "alpha", "dropout", "target_modules")


class ConfigError(CourseError):
    """A training config that cannot run; the message lists every problem by field name."""


# ---------------------------------------------------------------------------------------------
# The schema: section -> field -> (required, default, check). A check returns a problem or None.
# ---------------------------------------------------------------------------------------------
def _one_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}; got {value!r}"
    return check


def _integer(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be a whole number >= {minimum}; got {value!r} ({type(value).__name__})"
        return None if value >= minimum else f"must be >= {minimum}; got {value}"
    return check


def _number(low: float, high: float | None = None, low_inclusive: bool = False) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number; got {value!r} ({type(value).__name__})"
        if value < low or (value == low and not low_inclusive):
            return f"must be {'>=' if low_inclusive else '>'} {low}; got {value}"
        if high is not None and value >= high:
            return f"must be < {high}; got {value}"
        return None
    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else f"must be a non-empty string; got {value!r}"


def _targets(value: Any) -> str | None:
    if value == "all-linear":
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return None
    return f"must be 'all-linear' or a non-empty list of module names; got {value!r}"


@dataclass(frozen=True)
class _Field:
    required: bool
    default: Any
    check: Callable[[Any], str | None]
    number: bool = False  # accept a numeric string ("3e-3": YAML 1.1 reads it as text)


SCHEMA: dict[str, dict[str, _Field]] = {
    "model": {"role": _Field(True, None, _one_of(MODEL_ROLES))},
    "data": {"role": _Field(False, "sft-data", _one_of(DATA_ROLES)),
             "task": _Field(False, None, _one_of(TASKS)),
             "style": _Field(False, "plain", _one_of(STYLES)),
             "train_rows": _Field(False, 512, _integer(1)),
             "eval_rows": _Field(False, 64, _integer(1))},
    "method": {"name": _Field(True, None, _one_of(METHODS)),
               "r": _Field(False, 8, _integer(1)),
               "alpha": _Field(False, 16, _number(0), number=True),
               "dropout": _Field(False, 0.0, _number(0, 1, low_inclusive=True), number=True),
               "target_modules": _Field(False, "all-linear", _targets)},
    "training": {"max_steps": _Field(True, None, _integer(1)),
                 "learning_rate": _Field(True, None, _number(0), number=True),
                 "batch_size": _Field(False, 16, _integer(1)),
                 "gradient_accumulation_steps": _Field(False, 1, _integer(1)),
                 "seed": _Field(False, 0, _integer(0)),
                 "logging_steps": _Field(False, 10, _integer(1)),
                 "max_length": _Field(False, 128, _integer(8))},
}
TOP_LEVEL = (*SCHEMA, "output_dir")


# Names other tools (TrainingArguments, LoraConfig, LLaMA-Factory, axolotl) use for our fields.
ALIASES = {"lr": "learning_rate", "steps": "max_steps", "per_device_train_batch_size": "batch_size",
           "micro_batch_size": "batch_size", "rank": "r", "lora_r": "r", "lora_rank": "r",
           "lora_alpha": "alpha", "lora_dropout": "dropout", "lora_target": "target_modules",
           "num_train_epochs": "max_steps", "gradient_accumulation": "gradient_accumulation_steps"}


def _unknown(name: str, known: tuple[str, ...] | list[str], where: str) -> str:
    if ALIASES.get(name) in known:
        return f"{where}{name}: unknown field; did you mean {ALIASES[name]!r}?"
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(known)}"
    return f"{where}{name}: unknown field{hint}"


def _as_number(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_config(raw: dict[str, Any] | str) -> dict[str, Any]:
    """Check a config (a dict, or YAML text) and return it complete: every default filled in.

    Raises :class:`ConfigError` naming every bad field at once.
    """
    if isinstance(raw, str):
        raw = _read_yaml(raw, "the config text")
    if not isinstance(raw, dict):
        raise ConfigError(f"A config is a mapping with {', '.join(TOP_LEVEL)}; got {type(raw).__name__}.")
    problems: list[str] = [_unknown(k, TOP_LEVEL, "") for k in raw if k not in TOP_LEVEL]
    resolved: dict[str, Any] = {}
    for section, fields in SCHEMA.items():
        given = raw.get(section)
        if given is None:
            given = {}
            if any(f.required for f in fields.values()):
                problems.append(f"{section}: missing section (needs {', '.join(k for k, f in fields.items() if f.required)})")
                continue
        if not isinstance(given, dict):
            problems.append(f"{section}: must be a mapping of fields; got {type(given).__name__}")
            continue
        problems += [_unknown(k, list(fields), f"{section}.") for k in given if k not in fields]
        resolved[section] = {}
        for name, field in fields.items():
            if name not in given or given[name] is None:
                if field.required:
                    problems.append(f"{section}.{name}: required")
                resolved[section][name] = copy.deepcopy(field.default)
                continue
            value = _as_number(given[name]) if field.number else given[name]
            problem = field.check(value)
            if problem:
                problems.append(f"{section}.{name}: {problem}")
            resolved[section][name] = value
    if "output_dir" not in raw:
        problems.append("output_dir: required (the folder for the adapter, metrics and config)")
    else:
        problem = _text(raw["output_dir"])
        if problem:
            problems.append(f"output_dir: {problem}")
        resolved["output_dir"] = raw["output_dir"]
    method = raw.get("method") if isinstance(raw.get("method"), dict) else {}
    if method.get("name") == "full":
        problems += [f"method.{name}: only for lora and qlora, not full fine-tuning"
                     for name in LORA_FIELDS if method.get(name) is not None]
        for name in LORA_FIELDS:
            resolved.get("method", {}).pop(name, None)
    if problems:
        raise ConfigError("Invalid training config:\n  - " + "\n  - ".join(problems))
    return resolved


def _read_yaml(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{at}: {getattr(error, 'problem', error)}") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """Read and check a YAML config file (see :func:`parse_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No config file at {path}. Start from the example: "
                          "python -m course_lib train --example > config.yaml")
    return parse_config(_read_yaml(path.read_text(), str(path)) or {})


def write_example(path: str | Path) -> Path:
    """Write :data:`EXAMPLE_CONFIG` to ``path`` (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(EXAMPLE_CONFIG)
    return path


def config_table(config: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per field of a resolved config (for display)."""
    rows = [{"field": f"{section}.{name}", "value": value}
            for section in SCHEMA for name, value in config[section].items()]
    return rows + [{"field": "output_dir", "value": config["output_dir"]}]


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------
def _model(config: dict[str, Any]):
    from .models import load_model

    role, method = config["model"]["role"], config["method"]["name"]
    if method != "qlora":
        return load_model(role)
    from .quantization import load_quantized, quant_methods

    return load_quantized(quant_methods()["bnb NF4 + double quant"], role=role)


def run(config: dict[str, Any] | str | Path, progress: bool = True) -> dict[str, Any]:
    """Train as ``config`` says (a resolved dict, YAML text or a file path); save into ``output_dir``
    the adapter (LoRA, QLoRA) or the model (full), ``train_config.yaml`` and ``metrics.json``.

    Returns the metrics: held-out loss before and after, training loss, steps, seconds, what was saved.
    """
    if isinstance(config, Path) or (isinstance(config, str) and "\n" not in config):
        config = load_config(config)
    else:
        config = parse_config(config)  # YAML text or a dict: checked like a file
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    bars_were_off = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        return _train(config, progress)
    finally:
        if not bars_were_off:
            enable_progress_bars()


def _train(config: dict[str, Any], progress: bool) -> dict[str, Any]:
    import yaml
    from trl import SFTTrainer

    from . import finetune
    from .models import count_parameters, load_tokenizer

    data, method, training = config["data"], config["method"], config["training"]
    output_dir = Path(config["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(config["model"]["role"])
    filters = {"task": data["task"]} if data["task"] else {}
    train_rows = finetune.task_rows(data["role"], ("train",), limit=data["train_rows"], **filters)
    eval_rows = finetune.task_rows(data["role"], ("validation",), limit=data["eval_rows"], **filters)
    args = finetune.sft_config(
        output_dir, max_steps=training["max_steps"], learning_rate=training["learning_rate"],
        per_device_train_batch_size=training["batch_size"],
        gradient_accumulation_steps=training["gradient_accumulation_steps"], seed=training["seed"],
        data_seed=training["seed"], logging_steps=training["logging_steps"],
        max_length=training["max_length"], disable_tqdm=not progress)
    peft_config = None
    if method["name"] in ("lora", "qlora"):
        peft_config = finetune.lora_config(r=method["r"], lora_alpha=method["alpha"],
                                           lora_dropout=method["dropout"], target_modules=method["target_modules"])
    with finetune.ignore_checkpointing_rename():
        trainer = SFTTrainer(model=_model(config), args=args, processing_class=tokenizer,
                             train_dataset=finetune.sft_dataset(train_rows, data["style"]),
                             eval_dataset=finetune.sft_dataset(eval_rows, data["style"]),
                             peft_config=peft_config)
    if not progress:  # no per-log dicts and dataset bars: the caller shows the returned metrics
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    before = finetune.evaluate(trainer)["eval_loss"]
    trained = finetune.run_training(trainer)
    after = finetune.evaluate(trainer)["eval_loss"]
    trainer.save_model(str(output_dir))
    if method["name"] == "full":
        tokenizer.save_pretrained(str(output_dir))  # a full model folder loads on its own
    (output_dir / "train_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = {"method": method["name"], "model_role": config["model"]["role"],
               "task": data["task"] or "all", "train_rows": len(train_rows), "eval_rows": len(eval_rows),
               "trainable_%": count_parameters(trainer.model)["trainable_%"],
               "eval_loss_before": before, "eval_loss_after": after, **trained,
               "saved_files": sorted(p.name for p in output_dir.iterdir() if p.is_file())}
    metrics["saved_files"].append("metrics.json")
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics

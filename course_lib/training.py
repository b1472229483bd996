"""Training with 🤗 ``Trainer``: argument presets, a DeepSpeed config check, classification helpers,
a custom loss, and callbacks. Written for any chapter that trains, not only chapter 3.

Presets
    :data:`PRESETS` names three recipes for ``TrainingArguments``: ``default`` (full fine-tuning),
    ``lora`` (adapters: higher learning rate, no weight decay; pair it with
    :func:`course_lib.finetune.lora_config`, which builds the adapters) and
    ``deepspeed`` (ZeRO data parallelism on GPUs; its JSON comes from :func:`deepspeed_config` and is
    checked by :func:`validate_deepspeed_config` without needing ``deepspeed`` installed).
    :func:`training_arguments` turns a preset plus overrides into a real ``TrainingArguments``, after
    checking every name (a removed name such as ``evaluation_strategy`` fails with its replacement).
    Every value has a reason: :func:`preset_table` shows them, :func:`override_table` what a run
    changes, :func:`compare_presets` where the presets differ. The presets evaluate on a step
    schedule, so pass ``eval_dataset`` to ``Trainer`` or override ``eval_strategy="no"``.

Classification
    :func:`classification_splits`, :func:`classification_label_names`,
    :func:`tokenize_for_classification`, :func:`sequence_classifier`
    (pretrained or the same architecture from random initialisation), :func:`classification_metrics`
    (a ``compute_metrics``), :func:`majority_baseline`, :func:`per_class_report`,
    :func:`confidence_summary`.

Custom loss
    :class:`WeightedLossTrainer` overrides ``compute_loss`` with a cross-entropy that takes class
    weights (:func:`inverse_frequency_weights`) and label smoothing.

Callbacks and logs
    :class:`CheckpointMetadataCallback` writes a JSON file into every checkpoint folder
    (:func:`read_checkpoint_metadata` reads them back); :class:`LiveLossPlotCallback` redraws a loss
    curve while training and leaves one static figure; :func:`read_tensorboard_scalars` reads the event
    files that ``report_to="tensorboard"`` writes (:func:`scalars_wide` pivots them);
    :func:`log_history_table` flattens ``state.log_history``. The callbacks only read ``state`` and
    ``logs``, so they work with any ``Trainer`` subclass (TRL's ``SFTTrainer``/``DPOTrainer`` too).

Typical use::

    args = training_arguments(folder, "default", max_steps=50, report_to="tensorboard")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer, compute_metrics=classification_metrics,
                      callbacks=[CheckpointMetadataCallback(extra={"data": "..."}), LiveLossPlotCallback()])
    trainer.train()
    table(read_checkpoint_metadata(folder)); table(scalars_wide(read_tensorboard_scalars(folder), tags))
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from .profiles import CourseError

# ---------------------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class Preset:
    """A named recipe for ``TrainingArguments``: values plus the reason for each one."""

    name: str
    summary: str
    arguments: dict[str, Any]
    reasons: dict[str, str] = field(default_factory=dict)


# Names older tutorials use, and what replaced them (each raises a TypeError in transformers 5).
RENAMED_ARGUMENTS = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "tokenizer": "processing_class (an argument of Trainer, not TrainingArguments)",
    "logging_dir": "the TENSORBOARD_LOGGING_DIR environment variable (default: <output_dir>/runs/...)",
    "overwrite_output_dir": "nothing: Trainer writes into output_dir; use a fresh folder per run",
    "warmup_ratio": "warmup_steps with a float below 1 (a fraction of the training steps)",
}

_COMMON = {
    "eval_strategy": ("steps", "evaluate every `eval_steps` optimizer steps (short runs have < 1 epoch)"),
    "eval_steps": (10, "often enough to see the curve, rarely enough to keep evaluation cheap"),
    "logging_strategy": ("steps", "log the training loss every `logging_steps`"),
    "logging_steps": (5, "a point on the loss curve every 5 steps"),
    "save_strategy": ("steps", "checkpoint on the evaluation schedule (needed by load_best_model_at_end)"),
    "save_steps": (10, "same as eval_steps, so every checkpoint has an evaluation"),
    "save_total_limit": (2, "keep the latest and the best checkpoint, delete the rest"),
    "save_only_model": (True, "weights only, no optimizer state: about 3x smaller, but not resumable"),
    "per_device_eval_batch_size": (32, "evaluation stores no activations for backward: larger batches fit"),
    "lr_scheduler_type": ("linear", "decay linearly to 0 at max_steps"),
    "max_grad_norm": (1.0, "clip the gradient norm: guards against one bad batch"),
    "seed": (0, "model init (new heads), shuffling and dropout: two runs give the same numbers"),
    "data_seed": (0, "the order of training examples, independent of the model seed"),
    "report_to": ("none", "no tracker unless asked for (e.g. 'tensorboard'); default in transformers 5"),
    "dataloader_num_workers": (0, "tokenised data is already in memory; worker processes only cost startup"),
}


def _device_defaults() -> dict[str, tuple[Any, str]]:
    from .models import pick_device

    on_cpu = pick_device() == "cpu"
    bf16 = bool(not on_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return {
        "use_cpu": (on_cpu, "True when no GPU is visible: train on the CPU"),
        "bf16": (bf16, "bfloat16 mixed precision on GPUs that support it; float32 on CPU"),
    }


def _preset(name: str, summary: str, specific: dict[str, tuple[Any, str]]) -> Preset:
    merged = {**_COMMON, **_device_defaults(), **specific}
    return Preset(name, summary, {k: v for k, (v, _) in merged.items()},
                  {k: why for k, (_, why) in merged.items()})


def _build_presets() -> dict[str, Preset]:
    return {
        "default": _preset("default", "full fine-tuning of every weight", {
            "learning_rate": (5e-5, "a standard rate for fine-tuning a pretrained transformer with AdamW"),
            "per_device_train_batch_size": (16, "fits a small model on CPU; raise it on a GPU"),
            "gradient_accumulation_steps": (1, "no accumulation: each step sees one batch"),
            "weight_decay": (0.01, "mild regularisation of all weights (AdamW decoupled decay)"),
            "warmup_steps": (0.1, "a float < 1 is a fraction: warm up over the first 10% of steps"),
        }),
        "lora": _preset("lora", "train low-rank adapters only; adapters from finetune.lora_config()", {
            "learning_rate": (2e-4, "adapters start at zero and are few: they need larger steps"),
            "per_device_train_batch_size": (16, "activations still flow through the whole model"),
            "gradient_accumulation_steps": (1, "no accumulation: each step sees one batch"),
            "weight_decay": (0.0, "decaying a small adapter towards zero undoes what it learned"),
            "warmup_steps": (0.03, "short warmup: adapters start as the identity, so early steps are safe"),
        }),
        "deepspeed": _preset("deepspeed", "ZeRO data parallelism on several GPUs (needs deepspeed)", {
            "learning_rate": (5e-5, "as the default preset: ZeRO changes memory use, not the optimisation"),
            "per_device_train_batch_size": (8, "per GPU; the global batch is this x GPUs x accumulation"),
            "gradient_accumulation_steps": (4, "reach a large global batch without more memory"),
            "weight_decay": (0.01, "mild regularisation of all weights (AdamW decoupled decay)"),
            "warmup_steps": (0.1, "a float < 1 is a fraction: warm up over the first 10% of steps"),
            "use_cpu": (False, "DeepSpeed runs on GPUs"),
            "bf16": (True, "must agree with the JSON's bf16.enabled (checked)"),
            "deepspeed": ("ds_zero2.json", "path of the config written by write_deepspeed_config()"),
        }),
    }


PRESETS: dict[str, Preset] = _build_presets()


def _argument_names() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainingArguments)}


def check_argument_names(arguments: dict[str, Any]) -> None:
    """Raise :class:`CourseError` for a name ``TrainingArguments`` does not take, saying what to use."""
    known = _argument_names()
    problems = []
    for name in arguments:
        if name in known:
            continue
        if name in RENAMED_ARGUMENTS:
            problems.append(f"{name!r} was removed: use {RENAMED_ARGUMENTS[name]}.")
        else:
            close = difflib.get_close_matches(name, known, n=1)
            problems.append(f"{name!r} is not a TrainingArguments field"
                            + (f"; did you mean {close[0]!r}?" if close else "."))
    if problems:
        raise CourseError(" ".join(problems))


def preset_arguments(preset: str = "default", **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of a preset with ``overrides`` applied, every name checked."""
    if preset not in PRESETS:
        raise CourseError(f"Unknown preset {preset!r}; use one of {sorted(PRESETS)}.")
    check_argument_names(overrides)
    arguments = {**PRESETS[preset].arguments, **overrides}
    check_argument_names(arguments)
    return arguments


def training_arguments(output_dir: str | Path, preset: str = "default", **overrides: Any
                       ) -> TrainingArguments:
    """A real ``TrainingArguments`` from a preset plus overrides (``max_steps=60``, ...).

    The ``deepspeed`` preset needs the ``deepspeed`` package and GPUs: without it this raises
    :class:`CourseError`; use :func:`preset_arguments` and :func:`validate_deepspeed_config` to
    prepare and check such a run on any machine.
    """
    arguments = preset_arguments(preset, **overrides)
    if arguments.get("deepspeed"):
        from transformers.integrations.deepspeed import is_deepspeed_available

        if not is_deepspeed_available():
            raise CourseError("TrainingArguments(deepspeed=...) needs the deepspeed package and GPUs. "
                              "Check the config with validate_deepspeed_config() here; on a GPU machine "
                              "`pip install deepspeed` and start with `deepspeed train.py` or "
                              "`accelerate launch`.")
    return TrainingArguments(output_dir=str(output_dir), **arguments)


def preset_table(preset: str = "default", **overrides: Any) -> list[dict[str, Any]]:
    """One row per argument of a preset: value and reason (overrides marked as such)."""
    arguments = preset_arguments(preset, **overrides)
    reasons = PRESETS[preset].reasons
    return [{"argument": name, "value": repr(value) if isinstance(value, str) else value,
             "why": "override" if name in overrides else reasons.get(name, "")}
            for name, value in arguments.items()]


def override_table(preset: str = "default", **overrides: Any) -> list[dict[str, Any]]:
    """What a run changes: one row per override with the preset's value and the run's value."""
    arguments = preset_arguments(preset, **overrides)
    defaults = PRESETS[preset].arguments
    return [{"argument": name, "preset": defaults.get(name, "(not set)"), "this run": arguments[name]}
            for name in overrides]


def compare_presets(names: Sequence[str] = tuple(PRESETS)) -> list[dict[str, Any]]:
    """Arguments whose values differ between presets, one row per argument."""
    chosen = [PRESETS[n] for n in names]
    keys = sorted({k for p in chosen for k in p.arguments})
    rows = []
    for key in keys:
        values = [p.arguments.get(key, "-") for p in chosen]
        if len({repr(v) for v in values}) > 1:
            rows.append({"argument": key, **{p.name: v for p, v in zip(chosen, values)}})
    return rows


# ---------------------------------------------------------------------------------------------------
# DeepSpeed config: written and checked here, executed only where deepspeed and GPUs exist

_DS_TOP_LEVEL = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping", "optimizer", "scheduler", "fp16", "bf16", "zero_optimization",
                 "steps_per_print", "wall_clock_breakdown", "activation_checkpointing", "checkpoint",
                 "communication_data_type", "zero_allow_untested_optimizer", "flops_profiler",
                 "tensorboard", "data_types", "amp", "prescale_gradients", "gradient_predivide_factor"}
_DS_ZERO_KEYS = {"stage", "offload_optimizer", "offload_param", "overlap_comm", "contiguous_gradients",
                 "reduce_scatter", "reduce_bucket_size", "allgather_partitions", "allgather_bucket_size",
                 "round_robin_gradients", "sub_group_size", "stage3_prefetch_bucket_size",
                 "stage3_param_persistence_threshold", "stage3_max_live_parameters",
                 "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save",
                 "load_from_fp32_weights", "elastic_checkpoint", "ignore_unused_parameters",
                 "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_gradients"}
# DeepSpeed key -> the TrainingArguments value it must equal unless it is "auto" (as Trainer checks).
_DS_MATCHES = {
    "train_micro_batch_size_per_gpu": lambda a: a.get("per_device_train_batch_size"),
    "gradient_accumulation_steps": lambda a: a.get("gradient_accumulation_steps"),
    "gradient_clipping": lambda a: a.get("max_grad_norm"),
    "optimizer.params.lr": lambda a: a.get("learning_rate"),
    "optimizer.params.weight_decay": lambda a: a.get("weight_decay"),
    "scheduler.params.warmup_max_lr": lambda a: a.get("learning_rate"),
    "bf16.enabled": lambda a: bool(a.get("bf16")),
    "fp16.enabled": lambda a: bool(a.get("fp16")),
}


def deepspeed_config(stage: int = 2, offload_optimizer: bool = False, offload_param: bool = False
                     ) -> dict[str, Any]:
    """A ZeRO config in the style of the transformers docs: ``"auto"`` wherever Trainer fills the
    value from ``TrainingArguments``, so the two can never disagree."""
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage in (1, 2):
        zero |= {"allgather_partitions": True, "allgather_bucket_size": 2e8,
                 "reduce_scatter": True, "reduce_bucket_size": "auto"}
    if stage == 3:
        zero |= {"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                 "stage3_gather_16bit_weights_on_model_save": True}
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                  "weight_decay": "auto"}},
        "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                          "warmup_num_steps": "auto",
                                                          "total_num_steps": "auto"}},
        "zero_optimization": zero,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 100,
        "wall_clock_breakdown": False,
    }


def _lookup(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _is_count(value: Any) -> bool:
    return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def validate_deepspeed_config(config: dict[str, Any] | str | Path,
                              arguments: dict[str, Any] | None = None) -> list[str]:
    """Problems with a DeepSpeed config (a dict, or a JSON file path); an empty list when valid.

    Checks the structure DeepSpeed expects (known top-level keys, ZeRO stage 0-3, offload only
    where the stage supports it, positive integer or ``"auto"`` batch sizes, not both fp16 and bf16)
    and, given the ``TrainingArguments`` keyword arguments, that every value which is not ``"auto"``
    equals the matching argument: Trainer refuses to start on a mismatch.
    """
    if not isinstance(config, dict):
        path = Path(config)
        if not path.is_file():
            return [f"{path} does not exist."]
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            return [f"{path.name} is not valid JSON: {error}."]
        if not isinstance(config, dict):
            return [f"{path.name} must hold a JSON object, not {type(config).__name__}."]
    problems = []
    for key in sorted(set(config) - _DS_TOP_LEVEL):
        close = difflib.get_close_matches(key, _DS_TOP_LEVEL, n=1)
        problems.append(f"unknown top-level key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        if key in config and not _is_count(config[key]):
            problems.append(f"{key} must be a positive integer or 'auto', not {config[key]!r}")
    if not any(k in config for k in ("train_batch_size", "train_micro_batch_size_per_gpu")):
        problems.append("set train_micro_batch_size_per_gpu or train_batch_size (or 'auto')")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        problems.append("zero_optimization must be an object")
        zero = {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage must be 0, 1, 2 or 3, not {stage!r}")
    for key in sorted(set(zero) - _DS_ZERO_KEYS):
        problems.append(f"unknown zero_optimization key {key!r}")
    for key, min_stage in (("offload_optimizer", 1), ("offload_param", 3)):
        if key in zero:
            device = zero[key].get("device") if isinstance(zero[key], dict) else None
            if device not in ("cpu", "nvme", "none"):
                problems.append(f"zero_optimization.{key}.device must be 'cpu', 'nvme' or 'none'")
            if isinstance(stage, int) and stage < min_stage and device not in (None, "none"):
                problems.append(f"zero_optimization.{key} needs stage >= {min_stage} (stage is {stage})")
    enabled = [p for p in ("fp16", "bf16") if _lookup(config, f"{p}.enabled") is True]
    if len(enabled) == 2:
        problems.append("fp16 and bf16 are both enabled; pick one")
    for section in ("optimizer", "scheduler"):
        if section in config and not isinstance(config[section], dict) or (
                section in config and "type" not in config[section]):
            problems.append(f"{section} needs a 'type' (e.g. AdamW / WarmupDecayLR)")
    if arguments is not None:
        for dotted, getter in _DS_MATCHES.items():
            value, wanted = _lookup(config, dotted), getter(arguments)
            if value is None or value == "auto" or wanted is None:
                continue
            if value != wanted:
                problems.append(f"{dotted}={value!r} but TrainingArguments has {wanted!r}; "
                                "use 'auto' to let Trainer fill it")
    return problems


def write_deepspeed_config(path: str | Path, config: dict[str, Any] | None = None,
                           arguments: dict[str, Any] | None = None) -> Path:
    """Validate ``config`` (default: :func:`deepspeed_config`), write it as JSON, and check the
    written file again; raise :class:`CourseError` listing the problems if any."""
    config = deepspeed_config() if config is None else config
    problems = validate_deepspeed_config(config, arguments)
    if problems:
        raise CourseError("Invalid DeepSpeed config: " + "; ".join(problems) + ".")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    problems = validate_deepspeed_config(path, arguments)
    if problems:  # pragma: no cover - json round trip of a valid dict
        raise CourseError("The written DeepSpeed config did not read back: " + "; ".join(problems))
    return path


# ---------------------------------------------------------------------------------------------------
# Classification


def classification_label_names(dataset) -> list[str]:
    """Label names of a classification dataset (``Dataset`` or ``DatasetDict``).

    A ``ClassLabel`` feature names them (Hub datasets such as IMDB); the course's JSONL files store
    integers, and their names are in the task asset's ``labels.json``.
    """
    split = next(iter(dataset.values())) if hasattr(dataset, "values") else dataset
    feature = split.features.get("label")
    if feature is not None and hasattr(feature, "names"):
        return list(feature.names)
    from . import assets

    names = json.loads((assets.tasks() / "classification" / "labels.json").read_text())
    top = max(split["label"]) if len(split) else -1
    if top >= len(names):
        raise CourseError(f"Labels go up to {top} but labels.json names {len(names)} classes; "
                          "rebuild the assets with `python -m course_lib assets build`.")
    return names


def classification_splits(dataset, max_rows: int | None = None, seed: int = 0):
    """A ``DatasetDict`` with ``train``, ``validation`` and ``test``, each at most ``max_rows`` rows.

    The course's data already has the three splits and a few hundred rows. Hub datasets may lack a
    validation split (IMDB: train/test) or be large: a missing validation split is carved out of
    train (10%), and ``max_rows`` keeps a seeded random sample so a short run stays short.
    """
    from datasets import DatasetDict

    if not hasattr(dataset, "keys") or "train" not in dataset:
        raise CourseError("classification_splits needs a DatasetDict with a 'train' split.")
    splits = {name: dataset[name] for name in ("train", "validation", "test") if name in dataset}
    if "validation" not in splits:
        held_out = splits["train"].train_test_split(test_size=0.1, seed=seed)
        splits["train"], splits["validation"] = held_out["train"], held_out["test"]
    if "test" not in splits:
        raise CourseError(f"No 'test' split (splits: {sorted(dataset.keys())}); hold one out first.")
    if max_rows is not None:
        splits = {name: rows.shuffle(seed=seed).select(range(max_rows)) if len(rows) > max_rows else rows
                  for name, rows in splits.items()}
    return DatasetDict({name: splits[name] for name in ("train", "validation", "test")})


def tokenize_for_classification(dataset, tokenizer, max_length: int = 64, text_column: str = "text"):
    """Batched tokenisation with truncation; keeps ``label``, drops the other columns.

    No padding here: ``Trainer`` pads each batch to its longest row (``DataCollatorWithPadding``),
    which is cheaper than padding everything to ``max_length``.
    """
    split = next(iter(dataset.values())) if hasattr(dataset, "values") else dataset
    if text_column not in split.column_names:
        raise CourseError(f"No column {text_column!r}; columns are {split.column_names}.")
    drop = [c for c in split.column_names if c != "label"]
    return dataset.map(lambda batch: tokenizer(batch[text_column], truncation=True, max_length=max_length),
                       batched=True, remove_columns=drop)


def sequence_classifier(label_names: Sequence[str], role: str = "encoder", pretrained: bool = True,
                        seed: int = 0, load_report: bool = True):
    """``AutoModelForSequenceClassification`` for ``role`` with a new head for ``label_names``.

    ``pretrained=False`` builds the same architecture from its config with random weights: the
    baseline that shows what pretraining contributes. ``seed`` fixes the new weights.
    ``load_report=False`` hides transformers' report that the head's weights are new (worth
    seeing once, noise after that).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .models import load_model, source_of
    from .profiles import resolve

    labels = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
              "label2id": {name: i for i, name in enumerate(label_names)}}
    torch.manual_seed(seed)
    if pretrained:
        verbosity = hf_logging.get_verbosity()
        if not load_report:
            hf_logging.set_verbosity_error()
        try:
            return load_model(role, auto_class=AutoModelForSequenceClassification, **labels).train()
        finally:
            hf_logging.set_verbosity(verbosity)
    config = AutoConfig.from_pretrained(source_of(resolve(role)), **labels)
    return AutoModelForSequenceClassification.from_config(config).train()


def _logits_and_labels(eval_pred) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    return np.asarray(logits), np.asarray(labels)


def classification_metrics(eval_pred) -> dict[str, float]:
    """A ``compute_metrics`` for ``Trainer``: accuracy and macro-F1 (the mean of per-class F1)."""
    logits, labels = _logits_and_labels(eval_pred)
    predictions = logits.argmax(-1)
    f1s = []
    for label in np.unique(np.concatenate([labels, predictions])):
        tp = np.sum((predictions == label) & (labels == label))
        precision = tp / max(np.sum(predictions == label), 1)
        recall = tp / max(np.sum(labels == label), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(predictions == labels)), "macro_f1": float(np.mean(f1s))}


def majority_baseline(train_labels: Iterable[int], eval_labels: Iterable[int]) -> dict[str, Any]:
    """Accuracy on ``eval_labels`` of always predicting the most frequent training label."""
    train_labels, eval_labels = list(train_labels), list(eval_labels)
    if not train_labels or not eval_labels:
        raise ValueError("majority_baseline needs non-empty train and eval labels.")
    majority = Counter(train_labels).most_common(1)[0][0]
    return {"majority_label": majority,
            "accuracy": sum(label == majority for label in eval_labels) / len(eval_labels)}


def per_class_report(logits, labels, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: how often it is predicted, its precision (predicted -> right) and recall
    (present -> found), from logits and true labels."""
    predictions = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    rows = []
    for index, name in enumerate(label_names):
        predicted, present = predictions == index, labels == index
        hits = int(np.sum(predicted & present))
        rows.append({"class": name, "predicted share": round(float(np.mean(predicted)), 3),
                     "precision": round(hits / max(int(predicted.sum()), 1), 3),
                     "recall": round(hits / max(int(present.sum()), 1), 3)})
    return rows


def confidence_summary(logits, labels) -> dict[str, float]:
    """Accuracy, mean top-class probability, and expected calibration error (10 bins) of logits.

    A well-calibrated model's confidence matches its accuracy (ECE near 0); cross-entropy training
    tends to push confidence above accuracy.
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels))
    probabilities = logits.softmax(-1)
    confidence, predicted = probabilities.max(-1)
    correct = (predicted == labels).float()
    ece = 0.0
    edges = torch.linspace(0, 1, 11)
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.float().mean().item() * abs(confidence[in_bin].mean() - correct[in_bin].mean()).item()
    return {"accuracy": correct.mean().item(), "mean_confidence": confidence.mean().item(), "ece": ece}


# ---------------------------------------------------------------------------------------------------
# A custom loss


def inverse_frequency_weights(labels: Iterable[int], num_labels: int) -> torch.Tensor:
    """Class weights ``n / (num_labels * count)``: 1.0 for every class of a balanced dataset."""
    counts = Counter(labels)
    missing = [c for c in range(num_labels) if counts[c] == 0]
    if missing:
        raise ValueError(f"classes {missing} never occur; inverse-frequency weights would be infinite.")
    total = sum(counts.values())
    return torch.tensor([total / (num_labels * counts[c]) for c in range(num_labels)], dtype=torch.float32)


class WeightedLossTrainer(Trainer):
    """A ``Trainer`` whose ``compute_loss`` is cross-entropy with class weights and label smoothing.

    ``class_weights`` (one float per class) make mistakes on rare classes cost more;
    ``label_smoothing`` (0 to 1) trains towards ``1 - eps`` on the right class and spreads ``eps``
    over all classes, which discourages over-confident predictions.
    """

    # Our loss is a per-batch mean: Trainer divides it by the gradient-accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, class_weights: Sequence[float] | torch.Tensor | None = None,
                 label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}.")
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights,
                                                                                dtype=torch.float32)
        self.label_smoothing = label_smoothing

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits
        weights = None if self.class_weights is None else self.class_weights.to(logits.device)
        if weights is not None and weights.numel() != logits.shape[-1]:
            raise ValueError(f"{weights.numel()} class weights for {logits.shape[-1]} classes.")
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                 weight=weights, label_smoothing=self.label_smoothing)
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------------
# Callbacks and reading logs back

METADATA_FILE = "course_metadata.json"


class CheckpointMetadataCallback(TrainerCallback):
    """Writes ``course_metadata.json`` into each checkpoint folder Trainer saves.

    The file records the step, epoch, wall time since training began, the latest training loss
    (and the step it was logged at), the latest evaluation metrics, and whatever ``extra`` holds (e.g. the dataset and preset names), so a
    checkpoint explains itself without the notebook that made it.
    """

    def __init__(self, extra: dict[str, Any] | None = None) -> None:
        self.extra = dict(extra or {})
        self._start = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():  # another save strategy (e.g. a custom name): nothing to annotate
            return
        last_train = next((h for h in reversed(state.log_history) if "loss" in h), {})
        last_eval = next((h for h in reversed(state.log_history) if any(k.startswith("eval_") for k in h)), {})
        record = {"step": state.global_step, "epoch": state.epoch,
                  "seconds_since_start": round(time.perf_counter() - self._start, 2),
                  "train_loss": last_train.get("loss"), "train_loss_step": last_train.get("step"),
                  "eval": {k: v for k, v in last_eval.items() if k.startswith("eval_")},
                  "best_metric": state.best_metric, "extra": self.extra}
        (folder / METADATA_FILE).write_text(json.dumps(record, indent=2, default=str))


def read_checkpoint_metadata(output_dir: str | Path) -> list[dict[str, Any]]:
    """The metadata of every checkpoint under ``output_dir`` that has one, sorted by step."""
    rows = []
    for path in Path(output_dir).glob(f"checkpoint-*/{METADATA_FILE}"):
        record = json.loads(path.read_text())
        rows.append({"checkpoint": path.parent.name, **record})
    return sorted(rows, key=lambda r: r["step"])


class LiveLossPlotCallback(TrainerCallback):
    """Draws training and evaluation loss while training runs, then leaves one static figure.

    In Jupyter the figure is shown once and updated in place at each log (a display handle), so a
    rendered page keeps exactly one PNG of the final curve. Outside Jupyter it only records; in both
    cases :attr:`figure` holds the final plot after training (``save_path`` also writes it as PNG).
    """

    def __init__(self, title: str = "Loss", save_path: str | Path | None = None,
                 redraw_every: int = 1) -> None:
        self.title, self.save_path, self.redraw_every = title, save_path, max(1, redraw_every)
        self.train_points: list[tuple[int, float]] = []
        self.eval_points: list[tuple[int, float]] = []
        self.figure = None
        self._handle = None
        self._logs_seen = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.train_points, self.eval_points, self._logs_seen = [], [], 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.train_points.append((state.global_step, float(logs["loss"])))
        if "eval_loss" in logs:
            self.eval_points.append((state.global_step, float(logs["eval_loss"])))
        self._logs_seen += 1
        if self._logs_seen % self.redraw_every == 0:
            self._draw()

    def on_train_end(self, args, state, control, **kwargs):
        self._draw()
        import matplotlib.pyplot as plt

        if self.save_path is not None and self.figure is not None:
            self.figure.savefig(self.save_path, dpi=100)
        if self.figure is not None:
            plt.close(self.figure)  # the display handle keeps the PNG; no second copy at cell end

    def _draw(self) -> None:
        import matplotlib.pyplot as plt

        if self.figure is None:
            self.figure, _ = plt.subplots(figsize=(5.5, 3.2))
        ax = self.figure.axes[0]
        ax.clear()
        for points, label, style in ((self.train_points, "train loss", "-o"),
                                     (self.eval_points, "eval loss", "-s")):
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=3)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss")
        ax.set_title(self.title)
        if self.train_points or self.eval_points:
            ax.legend()
        self.figure.tight_layout()
        self._show()

    def _show(self) -> None:
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with the book extras
            return
        if get_ipython() is None or "IPKernelApp" not in getattr(get_ipython(), "config", {}):
            return
        if self._handle is None:
            self._handle = display(self.figure, display_id=True)
        else:
            self._handle.update(self.figure)


def read_tensorboard_scalars(log_dir: str | Path) -> list[dict[str, Any]]:
    """Every scalar in the TensorBoard event files under ``log_dir``: rows of tag, step, value.

    ``report_to="tensorboard"`` writes them to ``<output_dir>/runs/<date>_<host>`` unless the
    ``TENSORBOARD_LOGGING_DIR`` environment variable says otherwise.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    folders = sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")})
    if not folders:
        raise CourseError(f"No TensorBoard event files under {log_dir}; train with "
                          "report_to='tensorboard' first.")
    rows = []
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            rows.extend({"run": str(folder.relative_to(log_dir)), "tag": tag, "step": event.step,
                         "value": event.value}
                        for event in accumulator.Scalars(tag))
    return sorted(rows, key=lambda r: (r["run"], r["tag"], r["step"]))


def scalars_wide(rows: list[dict[str, Any]], tags: Sequence[str]) -> list[dict[str, Any]]:
    """Pivot :func:`read_tensorboard_scalars` rows to one row per step with a column per tag
    (values to 4 significant digits)."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row["tag"] in tags:
            by_step.setdefault(row["step"], {"step": row["step"]})[row["tag"]] = float(f"{row['value']:.4g}")
    return [by_step[s] for s in sorted(by_step)]


def log_history_table(log_history: list[dict[str, Any]], keys: Sequence[str] = ("loss", "eval_loss",
                      "eval_accuracy")) -> list[dict[str, Any]]:
    """``trainer.state.log_history`` merged by step: one row per step with the chosen keys."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        if "step" not in entry:
            continue
        row = by_step.setdefault(entry["step"], {"step": entry["step"]})
        for key in keys:
            if key in entry and not (isinstance(entry[key], float) and math.isnan(entry[key])):
                row[key] = round(float(entry[key]), 4)
    return [by_step[s] for s in sorted(by_step) if len(by_step[s]) > 1]

"""Around 🤗 ``Trainer``: argument presets as plain dicts, classification data and baselines, and
reporting (a live loss plot, TensorBoard logs read back). The chapters
write ``TrainingArguments(...)``, ``Trainer(...)``, their models, metrics, losses and callbacks on
the page; this module holds what is not the lesson.

Presets
    :data:`PRESETS` names three recipes for ``TrainingArguments``: ``default`` (full fine-tuning),
    ``lora`` (adapters: higher learning rate, no weight decay) and ``deepspeed`` (ZeRO data
    parallelism on GPUs; :func:`course_lib.distributed.validate_deepspeed_config` checks its JSON
    without needing ``deepspeed`` installed).
    :func:`preset_arguments` returns a preset plus overrides as a plain dict, after checking every
    name (a removed name such as ``evaluation_strategy`` fails with its replacement); spread it into
    the real constructor. Every value has a reason: :func:`preset_table` shows them,
    :func:`override_table` what a run changes, :func:`compare_presets` where the presets differ.
    The presets evaluate on a step schedule, so pass ``eval_dataset`` to ``Trainer`` or override
    ``eval_strategy="no"``.

Classification
    :func:`classification_splits`, :func:`classification_label_names`, :func:`majority_baseline`,
    :func:`per_class_report`.

Reporting
    :class:`LiveLossPlotCallback` redraws a loss curve while training and leaves one static figure;
    :func:`log_history_table` flattens ``state.log_history``. (Chapter 3 reads logged metrics back
    through trackio's own API.)
    The callback only reads ``state`` and ``logs``, so it works with any ``Trainer`` subclass
    (TRL's ``SFTTrainer``/``DPOTrainer`` too).

Typical use::

    args = TrainingArguments(folder, **preset_arguments("default", max_steps=50))
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=validation,
                      processing_class=tokenizer, compute_metrics=compute_metrics,
                      callbacks=[LiveLossPlotCallback()])
    trainer.train()
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainingArguments

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
    "eval_strategy": ("steps", "evaluate every eval_steps optimizer steps (short runs have < 1 epoch)"),
    "eval_steps": (10, "often enough to see the curve, rarely enough to keep evaluation cheap"),
    "logging_strategy": ("steps", "log the training loss every logging_steps"),
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
    return Preset(
        name, summary, {k: v for k, (v, _) in merged.items()}, {k: why for k, (_, why) in merged.items()}
    )


def _build_presets() -> dict[str, Preset]:
    return {
        "default": _preset(
            "default",
            "full fine-tuning of every weight",
            {
                "learning_rate": (
                    5e-5,
                    "a standard rate for fine-tuning a pretrained transformer with AdamW",
                ),
                "per_device_train_batch_size": (16, "fits a small model on CPU; raise it on a GPU"),
                "gradient_accumulation_steps": (1, "no accumulation: each step sees one batch"),
                "weight_decay": (0.01, "mild regularisation of all weights (AdamW decoupled decay)"),
                "warmup_steps": (0.1, "a float < 1 is a fraction: warm up over the first 10% of steps"),
            },
        ),
        "lora": _preset(
            "lora",
            "train low-rank adapters only; the adapters come from a peft LoraConfig (chapter 5)",
            {
                "learning_rate": (2e-4, "adapters start at zero and are few: they need larger steps"),
                "per_device_train_batch_size": (16, "activations still flow through the whole model"),
                "gradient_accumulation_steps": (1, "no accumulation: each step sees one batch"),
                "weight_decay": (0.0, "decaying a small adapter towards zero undoes what it learned"),
                "warmup_steps": (
                    0.03,
                    "short warmup: adapters start as the identity, so early steps are safe",
                ),
            },
        ),
        "deepspeed": _preset(
            "deepspeed",
            "ZeRO data parallelism on several GPUs (needs deepspeed)",
            {
                "learning_rate": (
                    5e-5,
                    "as the default preset: ZeRO changes memory use, not the optimisation",
                ),
                "per_device_train_batch_size": (8, "per GPU; the global batch is this x GPUs x accumulation"),
                "gradient_accumulation_steps": (4, "reach a large global batch without more memory"),
                "weight_decay": (0.01, "mild regularisation of all weights (AdamW decoupled decay)"),
                "warmup_steps": (0.1, "a float < 1 is a fraction: warm up over the first 10% of steps"),
                "use_cpu": (False, "DeepSpeed runs on GPUs"),
                "bf16": (True, "must agree with the JSON's bf16.enabled (checked)"),
                "deepspeed": ("ds_zero2.json", "path of the DeepSpeed JSON config (chapter 3 writes one)"),
            },
        ),
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
            problems.append(
                f"{name!r} is not a TrainingArguments field"
                + (f"; did you mean {close[0]!r}?" if close else ".")
            )
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


def preset_table(preset: str = "default", **overrides: Any) -> list[dict[str, Any]]:
    """One row per argument of a preset: value and reason (overrides marked as such)."""
    arguments = preset_arguments(preset, **overrides)
    reasons = PRESETS[preset].reasons
    return [
        {
            "argument": name,
            "value": repr(value) if isinstance(value, str) else value,
            "why": "override" if name in overrides else reasons.get(name, ""),
        }
        for name, value in arguments.items()
    ]


def override_table(preset: str = "default", **overrides: Any) -> list[dict[str, Any]]:
    """What a run changes: one row per override with the preset's value and the run's value."""
    arguments = preset_arguments(preset, **overrides)
    defaults = PRESETS[preset].arguments
    return [
        {"argument": name, "preset": defaults.get(name, "(not set)"), "this run": arguments[name]}
        for name in overrides
    ]


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
        raise CourseError(
            f"Labels go up to {top} but labels.json names {len(names)} classes; "
            "rebuild the assets with `python -m course_lib assets build`."
        )
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
        splits = {
            name: rows.shuffle(seed=seed).select(range(max_rows)) if len(rows) > max_rows else rows
            for name, rows in splits.items()
        }
    return DatasetDict({name: splits[name] for name in ("train", "validation", "test")})


def majority_baseline(train_labels: Iterable[int], eval_labels: Iterable[int]) -> dict[str, Any]:
    """Accuracy on ``eval_labels`` of always predicting the most frequent training label."""
    train_labels, eval_labels = list(train_labels), list(eval_labels)
    if not train_labels or not eval_labels:
        raise ValueError("majority_baseline needs non-empty train and eval labels.")
    majority = Counter(train_labels).most_common(1)[0][0]
    return {
        "majority_label": majority,
        "accuracy": sum(label == majority for label in eval_labels) / len(eval_labels),
    }


def per_class_report(logits, labels, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per class: how often it is predicted, its precision (predicted -> right) and recall
    (present -> found), from logits and true labels."""
    predictions = np.asarray(logits).argmax(-1)
    labels = np.asarray(labels)
    rows = []
    for index, name in enumerate(label_names):
        predicted, present = predictions == index, labels == index
        hits = int(np.sum(predicted & present))
        rows.append(
            {
                "class": name,
                "predicted share": round(float(np.mean(predicted)), 3),
                "precision": round(hits / max(int(predicted.sum()), 1), 3),
                "recall": round(hits / max(int(present.sum()), 1), 3),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Callbacks and reading logs back


class LiveLossPlotCallback(TrainerCallback):
    """Draws training and evaluation loss while training runs, then leaves one static figure.

    In Jupyter the figure is shown once and updated in place at each log (a display handle), so a
    rendered page keeps exactly one PNG of the final curve. Outside Jupyter it only records; in both
    cases :attr:`figure` holds the final plot after training (``save_path`` also writes it as PNG).
    """

    def __init__(
        self, title: str = "Loss", save_path: str | Path | None = None, redraw_every: int = 1
    ) -> None:
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
        for points, label, style in (
            (self.train_points, "train loss", "-o"),
            (self.eval_points, "eval loss", "-s"),
        ):
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


def log_history_table(
    log_history: list[dict[str, Any]], keys: Sequence[str] = ("loss", "eval_loss", "eval_accuracy")
) -> list[dict[str, Any]]:
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

"""Pretrain a fresh model of the course LM's architecture with 🤗 ``Trainer``, and look inside the run.

The model, the packing and the perplexity come from :mod:`course_lib.assets.pretrain` (the code
that built the course's own checkpoint); this module adds what a chapter needs around ``Trainer``:

* :func:`train_course_tokenizer` and :func:`tokenizer_table` (vocabulary size against
  characters per token and embedding parameters);
* :func:`block_dataset`, :func:`pretraining_arguments` and :func:`pretrain` (a seeded, fixed-step run
  that saves weights-only checkpoints);
* :func:`loss_curve`, :func:`checkpoint_folders`, :func:`checkpoint_row` / :func:`evaluate_checkpoints`
  (held-out perplexity and a greedy sample per checkpoint) and :func:`loss_series` for a plot;
* :func:`course_checkpoint`: the course's longer-trained checkpoint, as the reference to compare with.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from transformers import TrainerCallback

from . import assets
from .assets.pretrain import MODEL_CONFIG, block_perplexity, new_model, pack_blocks, tokenize_split
from .generation import generate_text
from .prep import causal_lm_labels
from .profiles import CourseError

__all__ = ["MODEL_CONFIG", "SETTINGS", "block_dataset", "block_perplexity", "checkpoint_folders",
           "checkpoint_row", "course_checkpoint", "evaluate_checkpoints", "loss_curve", "new_model",
           "pack_blocks", "loss_series", "corpus_texts", "ProgressBarCallback", "pretrain", "pretraining_arguments", "tokenize_split",
           "tokenizer_table", "train_course_tokenizer"]

# What learns fastest per second on 2 CPU cores for this 1.4M-parameter model (see assets.pretrain):
# a high constant learning rate after a short warm-up; AdamW with beta2 0.95 (steadier on small batches).
SETTINGS = {"batch_size": 8, "block_size": 128, "learning_rate": 2e-3, "warmup_steps": 20,
            "lr_scheduler_type": "constant_with_warmup", "weight_decay": 0.01, "adam_beta2": 0.95,
            "max_grad_norm": 1.0}
HELD_OUT = "held-out loss at checkpoints"


def train_course_tokenizer(out_folder: Path, vocab_size: int = 4096):
    """Train the course's byte-level BPE on the corpus's train split into ``out_folder``; return it
    loaded with ``AutoTokenizer`` (same recipe as the ``tokenizer`` asset)."""
    from transformers import AutoTokenizer

    from .assets.tokenizer import train_tokenizer

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be at least 300 (256 bytes + special tokens), got {vocab_size}.")
    train_tokenizer(assets.corpus(), Path(out_folder), vocab_size=vocab_size)
    return AutoTokenizer.from_pretrained(out_folder)


def tokenizer_table(tokenizers: dict[str, object], texts: list[str],
                    hidden_size: int = MODEL_CONFIG["hidden_size"]) -> list[dict]:
    """One row per tokenizer: vocabulary, characters per token on ``texts``, and the parameters its
    embedding matrix costs at ``hidden_size`` (tied input/output embeddings: counted once)."""
    characters = sum(len(text) for text in texts)
    rows = []
    for name, tokenizer in tokenizers.items():
        n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"])
        rows.append({"tokenizer": name, "vocabulary": len(tokenizer), "tokens": n_tokens,
                     "characters per token": round(characters / n_tokens, 2),
                     "embedding parameters": len(tokenizer) * hidden_size})
    return rows


def block_dataset(blocks: torch.Tensor):
    """Packed blocks as a ``datasets.Dataset`` with ``input_ids`` and unshifted causal ``labels``
    (the model shifts them; chapter 6)."""
    from datasets import Dataset

    if blocks.ndim != 2:
        raise ValueError(f"Expected (n_blocks, block_size) blocks, got shape {tuple(blocks.shape)}.")
    return Dataset.from_dict({"input_ids": blocks.tolist(), "labels": causal_lm_labels(blocks).tolist()})


def pretraining_arguments(output_dir: str | Path, max_steps: int, save_steps: int | None = None,
                          logging_steps: int = 5, seed: int = 0, **overrides):
    """``TrainingArguments`` for a short pretraining run on CPU or GPU: :data:`SETTINGS`, a fixed
    number of steps, a log line every ``logging_steps``, weights-only checkpoints every ``save_steps``
    (none when ``None``). ``overrides`` replace any argument."""
    from transformers import TrainingArguments

    from .models import pick_device

    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    arguments = {
        "output_dir": str(output_dir), "max_steps": max_steps, "seed": seed, "data_seed": seed,
        "per_device_train_batch_size": SETTINGS["batch_size"],
        "learning_rate": SETTINGS["learning_rate"], "warmup_steps": SETTINGS["warmup_steps"],
        "lr_scheduler_type": SETTINGS["lr_scheduler_type"], "weight_decay": SETTINGS["weight_decay"],
        "adam_beta2": SETTINGS["adam_beta2"], "max_grad_norm": SETTINGS["max_grad_norm"],
        "optim": "adamw_torch", "logging_steps": logging_steps, "report_to": "none",
        "save_strategy": "steps" if save_steps else "no", "save_steps": save_steps or 500,
        "save_only_model": True,  # weights only: enough to sample from, 3x smaller than with optimizer state
        "use_cpu": pick_device() == "cpu", "dataloader_num_workers": 0,
    }
    arguments.update(overrides)
    return TrainingArguments(**arguments)


def pretrain(model, tokenizer, train_blocks: torch.Tensor, output_dir: str | Path, max_steps: int,
             save_steps: int | None = None, seed: int = 0, callbacks: list | None = None, **overrides):
    """Train ``model`` on packed blocks with ``Trainer`` for ``max_steps``; returns the trainer
    (``trainer.state.log_history`` has the losses, ``output_dir`` the checkpoints). ``callbacks`` are
    added to the trainer's; ``overrides`` go to :func:`pretraining_arguments`."""
    from transformers import Trainer, default_data_collator

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    overrides.setdefault("disable_tqdm", True)  # ProgressBarCallback draws the bar instead
    args = pretraining_arguments(output_dir, max_steps, save_steps, seed=seed, **overrides)
    trainer = Trainer(model=model, args=args, train_dataset=block_dataset(train_blocks),
                      data_collator=default_data_collator, processing_class=tokenizer,
                      callbacks=callbacks)
    for noisy in (PrinterCallback, ProgressCallback):  # a printed dict per log line floods a page
        trainer.remove_callback(noisy)
    trainer.add_callback(ProgressBarCallback())
    trainer.train()
    return trainer


def loss_curve(log_history: list[dict]) -> list[dict]:
    """The training-loss points of ``trainer.state.log_history`` as ``{"step", "loss", "learning_rate"}``."""
    return [{"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
            for entry in log_history if "loss" in entry and "step" in entry]


def checkpoint_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for each ``checkpoint-<step>`` folder Trainer wrote, in step order."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def checkpoint_row(model, step: int, tokenizer, validation_blocks: torch.Tensor, prompts: list[str],
                   max_new_tokens: int = 16) -> dict:
    """Held-out perplexity and one greedy continuation per prompt for one model (a checkpoint)."""
    row = {"step": step, "validation perplexity": round(block_perplexity(model, validation_blocks), 1)}
    for prompt in prompts:
        row[prompt] = generate_text(model, tokenizer, prompt, "greedy", max_new_tokens=max_new_tokens)
    return row


def evaluate_checkpoints(output_dir: str | Path, tokenizer, validation_blocks: torch.Tensor,
                         prompts: list[str], max_new_tokens: int = 16) -> list[dict]:
    """:func:`checkpoint_row` for every checkpoint under ``output_dir``, loaded from disk."""
    from transformers import AutoModelForCausalLM

    folders = checkpoint_folders(output_dir)
    if not folders:
        raise CourseError(f"No checkpoint-<step> folders in {output_dir}; pass save_steps= to pretrain().")
    return [checkpoint_row(AutoModelForCausalLM.from_pretrained(folder).eval(), step, tokenizer,
                           validation_blocks, prompts, max_new_tokens) for step, folder in folders]


def course_checkpoint():
    """The course's own pretrained LM (420 steps of batch 16 on the same corpus) and its tokenizer,
    loaded from the asset under any profile: perplexities compare only with the same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.lm()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(folder)


def loss_series(curve: list[dict], checkpoints: list[dict] | None = None) -> dict[str, tuple[list, list]]:
    """Lines for :func:`course_lib.display.line_chart`: the training loss per logged step and, as
    points, each checkpoint's held-out loss (the log of its perplexity, so both are nats per token)."""
    series = {"training loss (batch mean)": ([p["step"] for p in curve], [p["loss"] for p in curve])}
    if checkpoints:
        series[HELD_OUT] = ([c["step"] for c in checkpoints],
                            [round(math.log(c["validation perplexity"]), 3) for c in checkpoints])
    return series


def corpus_texts(split: str) -> list[str]:
    """The texts of one split of the course corpus (the data every pretraining run here uses)."""
    import json

    path = assets.corpus() / f"{split}.jsonl"
    if not path.exists():
        raise CourseError(f"No split {split!r} in the course corpus; use train, validation or test.")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle]


class ProgressBarCallback(TrainerCallback):
    """One tqdm bar for the run with the latest loss on it, instead of a printed dict per log."""

    def __init__(self, description: str = "pretraining"):
        self.description = description
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, desc=self.description, mininterval=5)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()

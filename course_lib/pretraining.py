"""What chapter 7 needs around its pretraining run, except the run itself.

The chapter writes the lesson on its page: ``LlamaConfig``, ``LlamaForCausalLM``,
``TrainingArguments``, ``DataCollatorForLanguageModeling``, ``Trainer`` and ``trainer.train()``.
Held-out perplexity comes from :mod:`course_lib.evaluation` (the one evaluator, the same
measurement as chapter 1). This module keeps the assets and the reporting:

* :func:`train_course_tokenizer` and :func:`tokenizer_table` (vocabulary size against
  characters per token and embedding parameters); :func:`corpus_texts`;
* :class:`ProgressBarCallback`: one progress bar with the latest loss, instead of a printed dict
  per log line;
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
from .assets.pretrain import MODEL_CONFIG
from .display import one_line
from .evaluation import held_out_perplexity
from .generation import generate_text
from .profiles import CourseError

__all__ = [
    "HELD_OUT",
    "ProgressBarCallback",
    "checkpoint_folders",
    "checkpoint_row",
    "corpus_texts",
    "course_checkpoint",
    "evaluate_checkpoints",
    "loss_curve",
    "loss_series",
    "tokenizer_table",
    "train_course_tokenizer",
]

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


def tokenizer_table(
    tokenizers: dict[str, object], texts: list[str], hidden_size: int = MODEL_CONFIG["hidden_size"]
) -> list[dict]:
    """One row per tokenizer: vocabulary, characters per token on ``texts``, and the parameters its
    embedding matrix costs at ``hidden_size`` (tied input/output embeddings: counted once)."""
    characters = sum(len(text) for text in texts)
    rows = []
    for name, tokenizer in tokenizers.items():
        n_tokens = sum(
            len(ids) for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        )
        rows.append(
            {
                "tokenizer": name,
                "vocabulary": len(tokenizer),
                "tokens": n_tokens,
                "characters per token": round(characters / n_tokens, 2),
                "embedding parameters": len(tokenizer) * hidden_size,
            }
        )
    return rows


def loss_curve(log_history: list[dict]) -> list[dict]:
    """The training-loss points of ``trainer.state.log_history`` as ``{"step", "loss", "learning_rate"}``."""
    return [
        {"step": entry["step"], "loss": entry["loss"], "learning_rate": entry.get("learning_rate")}
        for entry in log_history
        if "loss" in entry and "step" in entry
    ]


def checkpoint_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` for each ``checkpoint-<step>`` folder Trainer wrote, in step order."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match and folder.is_dir():
            found.append((int(match.group(1)), folder))
    return sorted(found)


def checkpoint_row(
    model, step: int, tokenizer, prompts: list[str], max_new_tokens: int = 16, max_blocks: int | None = None
) -> dict:
    """Held-out perplexity (:func:`course_lib.evaluation.held_out_perplexity`: validation split,
    128-token blocks) and one greedy continuation per prompt, for one model (a checkpoint). A row is
    a table row: a line break in a continuation is shown as ``↵`` (pandas would print it as a
    literal ``\\n``)."""
    perplexity = held_out_perplexity(model, tokenizer, max_blocks=max_blocks)["perplexity"]
    row = {"step": step, "validation perplexity": round(perplexity, 1)}
    for prompt in prompts:
        text = generate_text(model, tokenizer, prompt, "greedy", max_new_tokens=max_new_tokens)
        row[prompt] = one_line(text)
    return row


def evaluate_checkpoints(
    output_dir: str | Path,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 16,
    max_blocks: int | None = None,
) -> list[dict]:
    """:func:`checkpoint_row` for every checkpoint under ``output_dir``, loaded from disk."""
    from transformers import AutoModelForCausalLM

    folders = checkpoint_folders(output_dir)
    if not folders:
        raise CourseError(
            f"No checkpoint-<step> folders in {output_dir}; set save_steps= in TrainingArguments."
        )
    return [
        checkpoint_row(
            AutoModelForCausalLM.from_pretrained(folder).eval(),
            step,
            tokenizer,
            prompts,
            max_new_tokens,
            max_blocks,
        )
        for step, folder in folders
    ]


def course_checkpoint():
    """The course's own pretrained LM (420 steps of batch 16 on the same corpus) and its tokenizer,
    loaded from the asset under any profile: perplexities compare only with the same tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.lm()
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32
    ).eval(), AutoTokenizer.from_pretrained(folder)


def loss_series(curve: list[dict], checkpoints: list[dict] | None = None) -> dict[str, tuple[list, list]]:
    """Lines for :func:`course_lib.display.line_chart`: the training loss per logged step and, as
    points, each checkpoint's held-out loss (the log of its perplexity, so both are nats per token)."""
    series = {"training loss (batch mean)": ([p["step"] for p in curve], [p["loss"] for p in curve])}
    if checkpoints:
        series[HELD_OUT] = (
            [c["step"] for c in checkpoints],
            [round(math.log(c["validation perplexity"]), 3) for c in checkpoints],
        )
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
        # a text bar: the static book keeps its final line (a widget bar would render blank there)
        from tqdm import tqdm

        self.bar = tqdm(total=state.max_steps, desc=self.description, mininterval=5)

    def on_step_end(self, args, state, control, **kwargs):
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()

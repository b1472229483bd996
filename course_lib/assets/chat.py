"""The course's chat model: the course LM fine-tuned on the course's instruction data.

Chapter 8's recipe, run once and cached as the offline ``chat-model``: the ``module`` questions of
the sft data ("Which standard-library module defines the function `x`?") for the eight modules with
the most functions, written as a user message and an assistant message, rendered with the
tokenizer's ChatML template by TRL's ``SFTTrainer`` (loss on the assistant's answer only), full
fine-tuning of every weight. Chapter 8 measured full fine-tuning ahead of LoRA on this model in the
same steps, and so did the design of this asset: LoRA (rank 16, learning rate 3e-3, merged with
``merge_and_unload``) reached 0.47 held-out exact match where full fine-tuning reached 0.75 (one
measurement each, 100 steps; the base LM scores 0). The 100 steps take about 0.17 s each on one
CPU core, so the asset adds about 30 s to ``python -m course_lib assets build``.

This module sits in the assets layer, below ``course_lib.finetune``, so it writes its few lines of
data selection itself; ``tests/test_chat_asset.py`` checks that it agrees with
``finetune.frequent_answers`` and ``finetune.sft_dataset(style="chat")``. Its TRL settings spread the
course's one ``defaults.TRL_DEFAULTS``.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..defaults import TRL_DEFAULTS

TASK = "module"
MODULES_KEPT = 8
# What SFTConfig receives: chapter 8's full fine-tuning run (100 steps of 8 questions, learning rate
# 1e-3, sequences up to 128 tokens), on the CPU in fp32 whatever the machine has, seeded, constant
# learning rate, nothing saved but the final model (the course's TRL_DEFAULTS).
SFT_CONFIG: dict = {
    "max_steps": 100,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 8,
    "max_length": 128,
    "activation_checkpointing": False,
    "use_cpu": True,
    "bf16": False,
    "fp16": False,
    "dataloader_pin_memory": False,
    "disable_tqdm": True,
    **TRL_DEFAULTS,
}


def read_rows(tasks_folder: Path, splits: Iterable[str]) -> list[dict]:
    """The ``module``-task rows of the sft split files ``splits``, in file order."""
    rows = []
    for split in splits:
        with open(Path(tasks_folder) / "sft" / f"{split}.jsonl", encoding="utf-8") as handle:
            rows += [row for row in map(json.loads, handle) if row["task"] == TASK]
    return rows


def kept_modules(tasks_folder: Path) -> list[str]:
    """The :data:`MODULES_KEPT` most frequent answers of the training rows (ties: first seen)."""
    counts = Counter(row["output"] for row in read_rows(tasks_folder, ["train"]))
    return [module for module, _ in counts.most_common(MODULES_KEPT)]


def questions(tasks_folder: Path, splits: Iterable[str] = ("validation", "test")) -> list[dict]:
    """The rows of ``splits`` whose answer is a kept module: by default the held-out questions
    (no function in them appears in training)."""
    modules = set(kept_modules(tasks_folder))
    return [row for row in read_rows(tasks_folder, splits) if row["output"] in modules]


def conversation(row: dict) -> dict:
    """A prompt/completion row in TRL's conversational format (what ``SFTTrainer`` renders)."""
    return {
        "prompt": [{"role": "user", "content": row["instruction"]}],
        "completion": [{"role": "assistant", "content": row["output"]}],
    }


def build_chat_model(lm_folder: Path, tasks_folder: Path, out: Path) -> dict:
    """Fine-tune the LM in ``lm_folder`` on the training questions; save model and tokenizer
    (with its chat template) to ``out``. Returns manifest fields: rows, modules, losses."""
    import datasets
    import transformers

    bars = datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # a build inside a notebook leaves no progress-bar debris
    transformers.utils.logging.disable_progress_bar()
    try:
        return _build(lm_folder, tasks_folder, Path(out))
    finally:
        if bars[0]:
            datasets.enable_progress_bars()
        if bars[1]:
            transformers.utils.logging.enable_progress_bar()


def _build(lm_folder: Path, tasks_folder: Path, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(lm_folder)
    model = AutoModelForCausalLM.from_pretrained(lm_folder, dtype=torch.float32)
    rows = questions(tasks_folder, ["train"])
    train = Dataset.from_list([conversation(row) for row in rows])
    with tempfile.TemporaryDirectory(prefix="chat-sft-") as scratch:
        trainer = SFTTrainer(
            model=model,
            args=SFTConfig(output_dir=scratch, **SFT_CONFIG),
            train_dataset=train,
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)  # the losses go to the manifest instead
        result = trainer.train()
    model = trainer.model
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # generate() and pipeline() stop at the end of the assistant's turn by default
    model.generation_config.eos_token_id = [end_of_turn, tokenizer.eos_token_id]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    losses = [
        {"step": entry["step"], "loss": round(float(entry["loss"]), 4)}
        for entry in trainer.state.log_history
        if "loss" in entry
    ]
    (out / "train_losses.json").write_text(json.dumps(losses))
    return {
        "train_rows": len(rows),
        "modules": kept_modules(tasks_folder),
        "final_train_loss": losses[-1]["loss"] if losses else None,
        "mean_train_loss": round(result.training_loss, 4),
    }

"""Parameter-efficient fine-tuning methods, side by side on one task with one budget.

* the task: answer questions about the standard library (the ``sft-data`` role) in the
  tokenizer's chat format, loss on the assistant's tokens only (:func:`task_examples`);
* the methods: chapter 12 writes its ``peft`` configs (and BitFit and a bottleneck adapter)
  on the page and hands them to :func:`compare`, which trains a fresh copy of the model with
  each one and measures it; the benchmark's table of every ``peft`` method that fits a causal
  LM is :func:`sweep_methods` (with :func:`add_zero_biases` for bias-free architectures and
  :func:`add_bottleneck_adapters`, which ``peft`` does not have);
* one budget: the same number of optimizer steps, batch size and data for every method
  (:func:`train_steps`), then held-out answer loss and token accuracy (:func:`answer_metrics`)
  and the adapter's size on disk (:func:`adapter_bytes`); batches go to the model's device
  (:func:`model_batch`);
* LoRA in depth: :func:`lora_target_modules` finds the attention projections of any
  architecture, :func:`merge_equivalence` checks that merging changes nothing.

:func:`run_sweep` runs every method and writes a JSON file with the machine, library
versions and date (``python -m course_lib peft-sweep``); :func:`load_sweep` reads it back.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import results
from .models import count_parameters, device_of
from .prep import IGNORE_INDEX, pad_features, tokenize_chat
from .profiles import CourseError

SWEEP_FILE = results.FOLDER / "peft_sweep.json"
SWEEP_COMMAND = "python -m course_lib peft-sweep"  # with its defaults: what wrote SWEEP_FILE
SWEEP_ENV = "COURSE_PEFT_SWEEP"


# ---------------------------------------------------------------------------------------------
# The task: chat-formatted question -> answer, loss on the answer only
# ---------------------------------------------------------------------------------------------
def chat_example(tokenizer, question: str, answer: str, max_length: int = 96) -> dict[str, list[int]]:
    """One training example in the tokenizer's chat format: ``input_ids`` and ``labels``, where
    only the assistant's tokens are learned (``prep.tokenize_chat``: the ``{% generation %}`` part
    of the template, or everything after the prompt for a template without markers, e.g. SmolLM2's)."""
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    encoded = tokenize_chat(tokenizer, messages, max_length)
    if all(label == IGNORE_INDEX for label in encoded["labels"]):
        raise CourseError("max_length cut off the whole answer: raise max_length.")
    return {"input_ids": encoded["input_ids"], "labels": encoded["labels"]}


def task_examples(
    tokenizer,
    split: str,
    tasks: tuple[str, ...] | None = None,
    limit: int | None = None,
    seed: int = 0,
    max_length: int = 96,
    profile: str | None = "offline",
) -> list[dict[str, list[int]]]:
    """Examples from the ``sft-data`` role: ``instruction`` (+ ``input``) as the question,
    ``output`` as the answer. ``tasks`` keeps only rows of those tasks (offline data has a
    ``task`` column: module, signature, summary); ``limit`` takes a seeded random subset. The rows
    are the course's own under every profile (``profile="offline"``; the Hub's sft-data, Alpaca,
    has no ``task`` column and no validation split); ``profile=None`` follows the active one."""
    from .data import load_role_dataset

    rows = load_role_dataset("sft-data", split=split, profile=profile)
    if tasks is not None:
        if "task" not in rows.column_names:
            raise CourseError("This dataset has no 'task' column to filter on; call with tasks=None.")
        wanted = set(tasks)
        # select by index: no per-call progress bar on the page, unlike Dataset.filter
        rows = rows.select([i for i, task in enumerate(rows["task"]) if task in wanted])
        if len(rows) == 0:
            raise CourseError(
                f"No rows for tasks {sorted(wanted)}; offline tasks are module, signature, summary."
            )
    rows = rows.shuffle(seed=seed)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return [
        chat_example(
            tokenizer,
            (r["instruction"] + ("\n" + r["input"] if r.get("input") else "")),
            r["output"],
            max_length,
        )
        for r in rows
    ]


def _pad_id(model) -> int:
    config = getattr(model, "config", None)
    pad = getattr(config, "pad_token_id", None)
    return 0 if pad is None else int(pad)


def model_batch(model, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad ``examples`` with the model's pad id (:func:`course_lib.prep.pad_features`) and
    put the tensors on the model's device, ready for ``model(**batch)``."""
    device = device_of(model)
    return {key: value.to(device) for key, value in pad_features(examples, _pad_id(model)).items()}


# ---------------------------------------------------------------------------------------------
# Training for a fixed number of steps, and held-out metrics
# ---------------------------------------------------------------------------------------------
def train_steps(
    model,
    examples: list[dict],
    steps: int,
    lr: float,
    batch_size: int = 16,
    seed: int = 0,
    after_step: Callable[[int], None] | None = None,
    progress: bool = False,
    desc: str = "training",
) -> dict[str, Any]:
    """AdamW on the parameters that require grad, constant ``lr``, gradient clipping at 1.0.

    Batches are drawn from a seeded permutation of ``examples``, so every method sees the same
    data in the same order. ``after_step(step)`` runs after each optimizer step (AdaLoRA needs it
    to re-allocate its ranks). Returns the wall-clock seconds and the loss of every step.
    """
    from tqdm import tqdm  # text bars: they render in the static book too

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CourseError("No parameter requires grad: apply a PEFT method (or unfreeze something) first.")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses = []
    model.train()
    start = time.perf_counter()
    for step in tqdm(range(steps), desc=desc, disable=not progress, mininterval=5, leave=False):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=generator).tolist()
        chosen, order = order[:batch_size], order[batch_size:]
        batch = model_batch(model, [examples[i] for i in chosen])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if after_step is not None:
            after_step(step)
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    return {"seconds": seconds, "losses": losses}


@torch.no_grad()
def answer_metrics(model, examples: list[dict], batch_size: int = 64) -> dict[str, float]:
    """Mean cross-entropy and next-token accuracy on the answer tokens of ``examples``.

    Computed from the logits, so it works the same for methods that prepend virtual tokens
    (prompt tuning, P-tuning): only the last ``seq_len`` positions are scored.
    """
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = model_batch(model, examples[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, -batch["input_ids"].shape[1] :, :].float()
        predicted, target = logits[:, :-1], batch["labels"][:, 1:]
        scored = target != IGNORE_INDEX
        total_loss += torch.nn.functional.cross_entropy(
            predicted[scored], target[scored], reduction="sum"
        ).item()
        correct += (predicted[scored].argmax(-1) == target[scored]).sum().item()
        count += int(scored.sum())
    if count == 0:
        raise CourseError("No answer tokens to score: are the labels all -100?")
    return {"loss": total_loss / count, "token_accuracy": correct / count}


# ---------------------------------------------------------------------------------------------
# Methods written by hand: BitFit and a bottleneck adapter
# ---------------------------------------------------------------------------------------------
def add_zero_biases(model: nn.Module) -> int:
    """Give every bias-free ``nn.Linear`` a zero bias (the outputs do not change); returns how many.

    Llama-style models have no biases at all, so BitFit needs them added first. The output head
    is skipped: its bias would be a vocabulary-sized table, not a small per-layer shift.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    added = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is None and module is not head:
            module.bias = nn.Parameter(
                torch.zeros(module.out_features, dtype=module.weight.dtype, device=module.weight.device)
            )
            added += 1
    return added


class BottleneckAdapter(nn.Module):
    """A bottleneck adapter (Houlsby et al. 2019; Pfeiffer et al. 2020): ``h + up(act(down(h)))``.

    ``up`` starts at zero, so a freshly inserted adapter leaves the model's outputs unchanged.
    """

    def __init__(self, hidden_size: int, bottleneck: int = 16):
        super().__init__()
        if not 1 <= bottleneck:
            raise ValueError(f"bottleneck must be >= 1, got {bottleneck}.")
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.act(self.down(hidden)))


class AdaptedBlock(nn.Module):
    """A block followed by a :class:`BottleneckAdapter` on its output (first element if a tuple)."""

    def __init__(self, block: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.block, self.adapter = block, adapter

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.adapter(out[0]),) + out[1:]
        return self.adapter(out)


def add_bottleneck_adapters(model: nn.Module, bottleneck: int = 16, after: str = "mlp") -> list[str]:
    """Insert a bottleneck adapter after every submodule named ``after`` (the feed-forward block
    of each layer: ``mlp`` in Llama and GPT-2) and freeze everything else. Returns the wrapped names."""
    hidden = model.config.hidden_size
    targets = [name for name, _ in model.named_modules() if name.split(".")[-1] == after]
    if not targets:
        raise CourseError(
            f"No submodule named {after!r}; pick one of the block names in model.named_modules()."
        )
    for param in model.parameters():
        param.requires_grad = False
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        block = getattr(parent, child)
        weight = next(block.parameters())
        adapter = BottleneckAdapter(hidden, bottleneck).to(device=weight.device, dtype=weight.dtype)
        setattr(parent, child, AdaptedBlock(block, adapter))
    return targets


# ---------------------------------------------------------------------------------------------
# LoRA target modules, per architecture
# ---------------------------------------------------------------------------------------------
# Attention projections LoRA is usually applied to, by naming convention (first match wins):
# Llama/Mistral/Qwen separate q/k/v/o; GPT-2 fuses q, k, v into one Conv1D ``c_attn``; BERT keeps
# the LoRA paper's choice of ``query`` and ``value``.
ATTENTION_PROJECTIONS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("c_attn",),
    ("query", "value"),
    ("query_key_value",),
)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct leaf names of the linear layers (``nn.Linear`` and GPT-2's ``Conv1D``) that LoRA can
    wrap, without the output head."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return sorted(
        {
            name.split(".")[-1]
            for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, Conv1D)) and module is not head and name
        }
    )


def lora_target_modules(model: nn.Module, scope: str = "attention") -> list[str]:
    """The module names to give ``LoraConfig(target_modules=...)`` for this architecture.

    ``scope="attention"``: the attention projections (``q/k/v/o_proj`` for Llama, ``c_attn`` for
    GPT-2, ``query``/``value`` for BERT), falling back to peft's own table for the model type.
    ``scope="all-linear"``: every linear layer except the output head (QLoRA's choice).
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE

    names = set(linear_layer_names(model))
    if scope == "all-linear":
        if not names:
            raise CourseError("This model has no linear layers LoRA could wrap.")
        return sorted(names)
    if scope != "attention":
        raise ValueError(f"scope must be 'attention' or 'all-linear', got {scope!r}.")
    for group in ATTENTION_PROJECTIONS:
        if set(group) <= names:
            return list(group)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = PEFT_TABLE.get(model_type)
    if known and set(known) <= names:
        return list(known)
    raise CourseError(
        f"No known attention projections among the linear layers {sorted(names)} "
        f"(model_type {model_type!r}). Pass target_modules=[...] yourself, or use "
        "scope='all-linear'."
    )


# ---------------------------------------------------------------------------------------------
# The methods, one place
# ---------------------------------------------------------------------------------------------
def sweep_methods(model: nn.Module, steps: int) -> dict[str, Any]:
    """The benchmark's methods for ``model`` trained ``steps`` steps, by display name: a ``peft``
    config for every ``peft`` method that fits a causal LM, and a function ``model -> model`` for
    full fine-tuning, BitFit and the bottleneck adapter (chapter 12 writes those two on its page).
    Give it to :func:`compare`."""
    import peft

    causal, virtual = "CAUSAL_LM", 16
    linear = lora_target_modules(model, "all-linear")
    table: dict[str, Any] = {"full fine-tuning": _full, "BitFit": _bitfit, "bottleneck adapter": _bottleneck}
    table |= {
        "LoRA": peft.LoraConfig(task_type=causal, r=8, lora_alpha=16, target_modules=linear),
        "AdaLoRA": peft.AdaLoraConfig(
            task_type=causal,
            init_r=12,
            target_r=8,
            lora_alpha=16,
            target_modules=linear,
            total_step=steps,
            tinit=steps // 5,
            tfinal=steps // 5,
        ),
        "LoHa": peft.LoHaConfig(task_type=causal, r=8, alpha=16, target_modules=linear),
        "LoKr": peft.LoKrConfig(task_type=causal, r=8, alpha=16, target_modules=linear),
        "VeRA": peft.VeraConfig(task_type=causal, r=64, target_modules=linear),
        "IA3": peft.IA3Config(task_type=causal),
        "LN tuning": peft.LNTuningConfig(task_type=causal),
        "MiSS": peft.MissConfig(task_type=causal, r=16, target_modules=linear),
        "HRA": peft.HRAConfig(task_type=causal, r=8, target_modules=linear),
        "BOFT": peft.BOFTConfig(task_type=causal, boft_block_size=8, target_modules=linear),
        "OFT": peft.OFTConfig(task_type=causal, oft_block_size=16, target_modules=linear),
        "FourierFT": peft.FourierFTConfig(task_type=causal, n_frequency=256, target_modules=linear),
        "LLaMA-Adapter": peft.AdaptionPromptConfig(
            task_type=causal, adapter_len=virtual, adapter_layers=model.config.num_hidden_layers
        ),
        "prefix tuning": peft.PrefixTuningConfig(task_type=causal, num_virtual_tokens=virtual),
        "prompt tuning": peft.PromptTuningConfig(task_type=causal, num_virtual_tokens=virtual),
        "P-tuning": peft.PromptEncoderConfig(
            task_type=causal, num_virtual_tokens=virtual, encoder_hidden_size=model.config.hidden_size
        ),
    }
    # Newer methods, each with its defaults on every linear layer (block sizes made to divide 128).
    newer = {
        "BEFT": "BeftConfig",
        "C3A": "C3AConfig",
        "DeFT": "DeftConfig",
        "DeLoRA": "DeloraConfig",
        "FRoD": "FrodConfig",
        "GLoRA": "GloraConfig",
        "GraLoRA": "GraloraConfig",
        "HiRA": "HiraConfig",
        "Lily": "LilyConfig",
        "OSF": "OSFConfig",
        "PEANuT": "PeanutConfig",
        "PSOFT": "PsoftConfig",
        "PVeRA": "PveraConfig",
        "RandLoRA": "RandLoraConfig",
        "RoAd": "RoadConfig",
        "SHiRA": "ShiraConfig",
        "SuperTuning": "SupertuningConfig",
        "TinyLoRA": "TinyLoraConfig",
        "UniLoRA": "UniLoraConfig",
        "VB-LoRA": "VBLoRAConfig",
        "WaveFT": "WaveFTConfig",
        "AdaMSS": "AdamssConfig",
    }
    extra = {"C3A": {"block_size": 32}, "VB-LoRA": {"vector_length": 32}}
    for display, class_name in newer.items():
        if hasattr(peft, class_name):
            try:
                table[display] = getattr(peft, class_name)(
                    task_type=causal, target_modules=linear, **extra.get(display, {})
                )
            except Exception as error:  # noqa: BLE001 - e.g. a missing optional dependency
                table[display] = _raises(error)  # recorded as that method's error by the sweep
    return table


def _raises(error: Exception) -> Callable[[nn.Module], nn.Module]:
    def apply(model: nn.Module) -> nn.Module:
        raise error

    return apply


def _full(model: nn.Module) -> nn.Module:
    return model.requires_grad_(True)


def _bitfit(model: nn.Module) -> nn.Module:
    add_zero_biases(model)
    for name, param in model.named_parameters():
        param.requires_grad = name.endswith(".bias")
    return model


def _bottleneck(model: nn.Module) -> nn.Module:
    add_bottleneck_adapters(model, bottleneck=16)
    return model


# Family of each method, for the plots' colours.
FAMILIES = {
    "full fine-tuning": "all weights",
    "BitFit": "selective",
    "bottleneck adapter": "adapter",
    "LoRA": "low-rank update",
    "AdaLoRA": "low-rank update",
    "LoHa": "low-rank update",
    "LoKr": "low-rank update",
    "VeRA": "low-rank update",
    "MiSS": "low-rank update",
    "IA3": "rescaling",
    "LN tuning": "selective",
    "HRA": "orthogonal",
    "BOFT": "orthogonal",
    "OFT": "orthogonal",
    "FourierFT": "spectral",
    "LLaMA-Adapter": "soft prompt",
    "prefix tuning": "soft prompt",
    "prompt tuning": "soft prompt",
    "P-tuning": "soft prompt",
}
# One learning rate per method, from a short probe on the course LM (25 steps, two candidates
# each): soft prompts and IA3 need much larger steps than LoRA. Newer peft methods get DEFAULT_LR.
LEARNING_RATES = {
    "full fine-tuning": 1e-3,
    "BitFit": 3e-2,
    "bottleneck adapter": 1e-2,
    "LoRA": 3e-3,
    "AdaLoRA": 3e-3,
    "LoHa": 3e-3,
    "LoKr": 3e-3,
    "VeRA": 1e-2,
    "MiSS": 3e-3,
    "IA3": 5e-2,
    "LN tuning": 1e-2,
    "HRA": 3e-3,
    "BOFT": 3e-3,
    "OFT": 3e-3,
    "FourierFT": 1e-1,
    "LLaMA-Adapter": 1e-2,
    "prefix tuning": 5e-2,
    "prompt tuning": 1e-1,
    "P-tuning": 5e-2,
}
DEFAULT_LR = 3e-3
# Methods that need a set-up this task does not have: listed in the sweep with the reason.
NOT_APPLICABLE = {
    "X-LoRA": "mixes several already-trained LoRA adapters with a learned gate",
    "Poly": "multi-task routing: every example needs a task id",
    "multitask prompt tuning": "multi-task: every example needs a task id",
    "CPT": "context-aware prompt tuning needs its own few-shot data format (token type masks)",
    "trainable tokens": "trains the embeddings of chosen token ids (new tokens), not a task adapter",
    "Cartridge": "trains a KV-cache prefix distilled from a long document",
}


def _apply(model: nn.Module, method) -> nn.Module:
    """A peft config through ``peft.get_peft_model`` (on a copy of the config, so one config
    serves many models), or a function ``model -> model`` that makes a model trainable."""
    if callable(method):
        return method(model)
    from peft import PeftConfig, get_peft_model

    from .env import ignore_checkpointing_rename

    if not isinstance(method, PeftConfig):
        raise CourseError(
            f"A method is a peft config or a function model -> model, got {type(method).__name__}."
        )
    with ignore_checkpointing_rename():
        return get_peft_model(model, copy.deepcopy(method))


def _adalora_hook(model) -> Callable[[int], None] | None:
    config = getattr(model, "peft_config", {}).get("default")
    if config is not None and type(config).__name__ == "AdaLoraConfig":
        return lambda step: model.base_model.update_and_allocate(step)
    return None


def adapter_bytes(model: nn.Module) -> int:
    """Bytes on disk of what a method trains: a peft model's ``save_pretrained`` folder (weights +
    config), else the trainable tensors saved with safetensors."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)
        else:
            trainable = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
            save_file(trainable, str(Path(tmp) / "adapter.safetensors"))
        return sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())


def compare(
    base_model: nn.Module,
    methods: dict[str, Any],
    train: list[dict],
    held_out: list[dict],
    steps: int,
    batch_size: int = 16,
    seed: int = 0,
    learning_rates: dict[str, float] | None = None,
    progress: bool = False,
) -> list[dict]:
    """Train a fresh copy of ``base_model`` with each method for ``steps`` steps and measure it.

    ``methods`` maps a display name to a ``peft`` config (applied with ``get_peft_model``) or to a
    function ``model -> model`` that makes the parameters it trains require grad. Each trains at
    ``learning_rates[name]`` (default: :data:`LEARNING_RATES`). The first row is the untouched
    base model (the baseline every method should beat). Rows: method, family, trainable %,
    train seconds, held-out loss and token accuracy, adapter KB.
    """
    rates = LEARNING_RATES if learning_rates is None else learning_rates
    missing = [name for name in methods if name not in rates]
    if missing:
        raise CourseError(f"No learning rate for {missing}: pass learning_rates={{name: lr}}.")
    base = answer_metrics(base_model, held_out)
    rows = [
        {
            "method": "base model (no training)",
            "family": "-",
            "trainable_%": 0.0,
            "train_s": 0.0,
            "held_out_loss": round(base["loss"], 3),
            "token_accuracy": round(base["token_accuracy"], 3),
            "adapter_KB": 0.0,
        }
    ]
    for name, method in methods.items():
        torch.manual_seed(seed)
        model = _apply(copy.deepcopy(base_model), method)
        counted = count_parameters(model)
        trained = train_steps(
            model,
            train,
            steps,
            rates[name],
            batch_size,
            seed,
            _adalora_hook(model),
            progress=progress,
            desc=name,
        )
        measured = answer_metrics(model, held_out)
        rows.append(
            {
                "method": name,
                "family": FAMILIES.get(name, "other (newer peft)"),
                "trainable_%": counted["trainable_%"],
                "train_s": round(trained["seconds"], 1),
                "held_out_loss": round(measured["loss"], 3),
                "token_accuracy": round(measured["token_accuracy"], 3),
                "adapter_KB": round(adapter_bytes(model) / 1e3, 1),
            }
        )
        del model
    return rows


# ---------------------------------------------------------------------------------------------
# LoRA in depth
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def merge_equivalence(peft_model, input_ids: torch.Tensor, repeats: int = 5) -> dict[str, float]:
    """Merge a copy of a LoRA model (``merge_and_unload``) and compare: the largest logit
    difference, and the forward time of each (the merged model has no extra matmuls)."""
    peft_model.eval()
    merged = copy.deepcopy(peft_model).merge_and_unload().eval()
    input_ids = input_ids.to(device_of(peft_model))

    def timed(model) -> tuple[torch.Tensor, float]:
        logits = model(input_ids=input_ids).logits
        start = time.perf_counter()
        for _ in range(repeats):
            model(input_ids=input_ids)
        return logits, (time.perf_counter() - start) / repeats * 1e3

    adapter_logits, adapter_ms = timed(peft_model)
    merged_logits, merged_ms = timed(merged)
    return {
        "max_abs_logit_difference": float((adapter_logits - merged_logits).abs().max()),
        "forward_ms_with_adapter": round(adapter_ms, 2),
        "forward_ms_merged": round(merged_ms, 2),
        "merged_type": type(merged).__name__,
    }


def tiny_model(model_type: str, seed: int = 0) -> nn.Module:
    """A small randomly initialised model of a famous architecture, built from its config (no
    download): ``gpt2``, ``llama`` or ``bert``. For looking at module names, not for training."""
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, GPT2Config, LlamaConfig

    configs = {
        "gpt2": (
            GPT2Config(
                vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
            ),
            AutoModelForCausalLM,
        ),
        "llama": (
            LlamaConfig(
                vocab_size=256,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                max_position_embeddings=64,
            ),
            AutoModelForCausalLM,
        ),
        "bert": (
            BertConfig(
                vocab_size=256,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=64,
            ),
            AutoModel,
        ),
    }
    if model_type not in configs:
        raise CourseError(f"Unknown model_type {model_type!r}; choose from {sorted(configs)}.")
    config, auto_class = configs[model_type]
    torch.manual_seed(seed)
    return auto_class.from_config(config).eval()


def adapter_parameter_counts(peft_model) -> dict[str, int]:
    """Parameters per adapter of a ``PeftModel``, and ``"base"``: the shared weights, stored once."""
    counts = {name: 0 for name in peft_model.peft_config}
    counts["base"] = 0
    for param_name, param in peft_model.named_parameters():
        owner = next((name for name in peft_model.peft_config if f".{name}." in f"{param_name}."), "base")
        counts[owner] += param.numel()
    return counts


def adapter_task_matrix(peft_model, eval_sets: dict[str, list[dict]]) -> list[dict]:
    """Held-out answer loss of every adapter (and of the base, adapters disabled) on every task:
    one row per adapter, one column per task."""
    rows = []
    with peft_model.disable_adapter():
        rows.append(
            {
                "adapter": "none (base model)",
                **{task: round(answer_metrics(peft_model, ex)["loss"], 3) for task, ex in eval_sets.items()},
            }
        )
    for name in peft_model.peft_config:
        peft_model.set_adapter(name, inference_mode=True)
        rows.append(
            {
                "adapter": name,
                **{task: round(answer_metrics(peft_model, ex)["loss"], 3) for task, ex in eval_sets.items()},
            }
        )
    return rows


def lora_grid(
    base_model: nn.Module,
    train: list[dict],
    held_out: list[dict],
    steps: int,
    ranks=(1, 4, 16, 64),
    alphas=(4, 16, 64),
    lr: float = 3e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """LoRA (all linear layers) for every rank x alpha, same data, steps and learning rate.

    The update is scaled by ``alpha / r``: at a fixed alpha, a larger rank takes smaller steps per
    direction; at a fixed rank, a larger alpha acts like a larger learning rate.
    """
    from peft import LoraConfig

    targets = lora_target_modules(base_model, "all-linear")
    rows = []
    for r in ranks:
        for alpha in alphas:
            torch.manual_seed(seed)
            config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules=targets)
            model = _apply(copy.deepcopy(base_model), config)
            trained = train_steps(
                model, train, steps, lr, batch_size, seed, progress=progress, desc=f"LoRA r={r} alpha={alpha}"
            )
            rows.append(
                {
                    "r": r,
                    "alpha": alpha,
                    "scale": alpha / r,
                    "trainable_%": count_parameters(model)["trainable_%"],
                    "train_s": round(trained["seconds"], 1),
                    "held_out_loss": round(answer_metrics(model, held_out)["loss"], 3),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------
# The full sweep: a benchmark command whose JSON the book renders
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, threads, OS, Python and library versions, date (UTC)."""
    from .env import cpu_name, load_average, versions

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": load_average(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def run_sweep(
    steps: int = 60,
    batch_size: int = 16,
    train_limit: int = 2000,
    held_out_limit: int = 256,
    names: list[str] | None = None,
    ranks=(2, 8, 32),
    alphas=(4, 16, 64),
    seed: int = 0,
    progress: bool = True,
    command: str = SWEEP_COMMAND,
) -> dict[str, Any]:
    """Every method of :func:`sweep_methods`, then the LoRA rank x alpha grid (:func:`lora_grid`), on
    the chapter's task with one budget (``steps``); returns a JSON-ready dict whose ``command`` is
    the command line that regenerates it.

    ``machine`` is recorded when the run starts; ``load_average_1min_at_end`` and ``wall_minutes``
    say how busy the machine was (train times are wall-clock, so they depend on it).
    """
    from .models import load_model, load_tokenizer

    started, start = machine_info(), time.perf_counter()
    tokenizer = load_tokenizer("causal-lm")
    train = task_examples(tokenizer, "train", limit=train_limit, seed=seed)
    held_out = task_examples(tokenizer, "validation", limit=held_out_limit, seed=seed)
    base = load_model("causal-lm")
    table = sweep_methods(base, steps)
    chosen = names or list(table)
    unknown = [name for name in chosen if name not in table]
    if unknown:
        raise CourseError(f"Unknown method(s) {unknown}; choose from {sorted(table)}.")
    rates = {name: LEARNING_RATES.get(name, DEFAULT_LR) for name in chosen}
    rows = []
    for name in chosen:  # one at a time, so one failing method is recorded rather than fatal
        try:
            rows += compare(
                base, {name: table[name]}, train, held_out, steps, batch_size, seed, rates, progress
            )[1:]
        except Exception as error:  # noqa: BLE001 - recorded in the results, shown in the book
            rows.append(
                {
                    "method": name,
                    "family": FAMILIES.get(name, "other (newer peft)"),
                    "error": f"{type(error).__name__}: {str(error)[:200]}",
                }
            )
    baseline = answer_metrics(base, held_out)
    grid = (
        lora_grid(
            base, train, held_out, steps, ranks, alphas, LEARNING_RATES["LoRA"], batch_size, seed, progress
        )
        if ranks and alphas
        else []
    )
    return {
        "command": command,
        "task": "sft-data, chat format, loss on answer tokens",
        "model_role": "causal-lm",
        "steps": steps,
        "batch_size": batch_size,
        "train_examples": len(train),
        "held_out_examples": len(held_out),
        "seed": seed,
        "machine": started,
        "load_average_1min_at_end": machine_info()["load_average_1min"],
        "wall_minutes": round((time.perf_counter() - start) / 60, 1),
        "baseline": {
            "held_out_loss": round(baseline["loss"], 3),
            "token_accuracy": round(baseline["token_accuracy"], 3),
        },
        "learning_rates": rates,
        "rows": rows,
        "not_applicable": NOT_APPLICABLE,
        "lora_grid": grid,
    }


def write_sweep(results: dict[str, Any], path: str | Path = SWEEP_FILE) -> Path:
    """Write sweep results as indented JSON (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def find_sweep_file(path: str | Path | None = None) -> Path:
    """The sweep's JSON: ``path``, else ``$COURSE_PEFT_SWEEP``, else the results shipped in the package
    (``course_lib/results/peft_sweep.json``, there in a checkout and in a ``pip install`` alike)."""
    candidates = [Path(path)] if path else []
    if os.environ.get(SWEEP_ENV):
        candidates.append(Path(os.environ[SWEEP_ENV]))
    candidates.append(SWEEP_FILE)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise CourseError(
        f"No PEFT sweep results found (looked in {[str(c) for c in candidates]}). Run `python -m "
        "course_lib peft-sweep` from the repository root (tens of minutes on 2 CPU cores), or point "
        "$COURSE_PEFT_SWEEP at a results file."
    )


def load_sweep(path: str | Path | None = None) -> dict[str, Any]:
    """Read sweep results written by :func:`write_sweep` and check they have what the book shows."""
    found = find_sweep_file(path)
    results = json.loads(found.read_text())
    missing = [key for key in ("machine", "rows", "steps", "baseline") if key not in results]
    if missing:
        raise CourseError(f"{found} is missing {missing}: rerun `python -m course_lib peft-sweep`.")
    results["path"] = str(found)
    return results


def why_not_run(error: str) -> str:
    """A failed sweep row's ``error`` as a sentence for the page: a missing optional package is
    named as such ("it needs scikit-learn, which the course does not install"); any other error
    is returned as recorded."""
    import re

    missing = re.match(r"(?:ImportError|ModuleNotFoundError): (\S+) is required", error)
    if missing:
        return f"it needs {missing.group(1)}, which the course does not install"
    return error


def sweep_rows(results: dict[str, Any]) -> list[dict]:
    """The sweep's rows sorted by held-out loss (best first), failed methods last."""
    done = sorted((r for r in results["rows"] if "error" not in r), key=lambda r: r["held_out_loss"])
    return done + [r for r in results["rows"] if "error" in r]


# ---------------------------------------------------------------------------------------------
# Looking at what a method trains, and plots
# ---------------------------------------------------------------------------------------------
def trainable_tensors(model: nn.Module) -> list[dict]:
    """What a method trains, grouped: parameter names with layer numbers replaced by ``*``,
    how many tensors match each pattern and how many parameters they hold."""
    import re

    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        pattern = re.sub(r"\.\d+\.", ".*.", name.replace("base_model.model.", ""))
        group = groups.setdefault(
            pattern, {"trainable tensors": pattern, "count": 0, "parameters": 0, "shape": tuple(param.shape)}
        )
        group["count"] += 1
        group["parameters"] += param.numel()
    return list(groups.values())


def plot_tradeoff(
    rows: list[dict],
    title: str,
    baseline: float | None = None,
    max_labels: int = 12,
    label: list[str] | set[str] | None = None,
):
    """Held-out loss against trainable % (log scale), one point per method, coloured by family.

    ``label`` names the methods to write next to their points; by default the best ``max_labels``
    (the table has all of them).
    """
    import matplotlib.pyplot as plt

    done = sorted(
        (r for r in rows if "error" not in r and r.get("trainable_%", 0) > 0),
        key=lambda r: r["held_out_loss"],
    )
    if not done:
        raise CourseError("No method with results to plot (every row failed or trains nothing).")
    families = list(dict.fromkeys(r["family"] for r in done))
    colours = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for index, family in enumerate(families):
        members = [r for r in done if r["family"] == family]
        ax.scatter(
            [r["trainable_%"] for r in members],
            [r["held_out_loss"] for r in members],
            color=colours(index % 10),
            label=family,
            s=28,
        )
    named = [r for r in done if r["method"] in set(label)] if label is not None else done[:max_labels]
    for r in named:
        ax.annotate(
            r["method"],
            (r["trainable_%"], r["held_out_loss"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle="--", label="base model (no training)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    low, high = min(r["trainable_%"] for r in done) / 1.5, max(r["trainable_%"] for r in done) * 1.5
    ticks = [t for t in (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("trainable parameters, % of the model (log scale)")
    ax.set_ylabel("held-out answer loss (lower is better)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_lora_grid(rows: list[dict], title: str = "LoRA: held-out loss by rank and alpha"):
    """A rank x alpha grid of held-out loss (rows of :func:`lora_grid`), values written in the cells."""
    import matplotlib.pyplot as plt

    ranks = sorted({r["r"] for r in rows})
    alphas = sorted({r["alpha"] for r in rows})
    loss = {(r["r"], r["alpha"]): r["held_out_loss"] for r in rows}
    values = [[loss.get((rank, alpha), float("nan")) for alpha in alphas] for rank in ranks]
    fig, ax = plt.subplots(figsize=(1.3 * len(alphas) + 2.5, 0.9 * len(ranks) + 1.5))
    image = ax.imshow(values, cmap="viridis_r")
    ax.set_xticks(range(len(alphas)), [str(a) for a in alphas])
    ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
    ax.set_xlabel("lora_alpha")
    ax.set_ylabel("rank r")
    low, high = min(min(v) for v in values), max(max(v) for v in values)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(
                j,
                i,
                f"{value:.3f}\n(x{alphas[j] / ranks[i]:g})",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > (low + high) / 2 else "black",
            )
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="held-out loss")
    fig.tight_layout()
    return fig

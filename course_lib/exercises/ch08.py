"""Checks for chapter 8 (supervised fine-tuning with LoRA)."""
from __future__ import annotations

from typing import Callable

import torch

from ..finetune import sft_dataset, task_rows
from . import Feedback, verdict


def check_seen_share(answer: float, task: str = "signature") -> Feedback:
    """Easy: the share of held-out (validation + test) rows of ``task`` whose document the pretraining
    corpus's train split contains (``corpus_split == "train"``)."""
    rows = task_rows("sft-data", ("validation", "test"), task=task)
    seen = sum(split == "train" for split in rows["corpus_split"])
    expected = seen / len(rows)
    if abs(float(answer) - expected) < 5e-3:
        return Feedback(True, f"{seen} of {len(rows)} held-out {task!r} rows ({expected:.1%}) describe functions "
                              "whose documentation pretraining read; the rest are a small control group.")
    return Feedback(False, f"{answer} is not the share; filter task == {task!r} in the validation and test "
                           "splits, then count corpus_split == 'train'.")


def check_chat_dataset(dataset, rows, tokenizer) -> Feedback:
    """Medium: ``dataset`` turns sft-data ``rows`` into TRL's conversational prompt/completion format
    (a user message and an assistant message), rendering through the chat template."""
    problems = []
    if sorted(dataset.column_names) != ["completion", "prompt"]:
        return Feedback(False, f"columns are {dataset.column_names}; keep exactly 'prompt' and 'completion' "
                               "(remove_columns=rows.column_names).")
    reference = sft_dataset(rows, style="chat")
    if len(dataset) != len(reference):
        problems.append(f"{len(dataset)} rows for {len(reference)} inputs.")
    else:
        for got, expected in zip(dataset, reference):
            if got != expected:
                problems.append(f"row {got!r} should be {expected!r}: the prompt is a list with one "
                                "{'role': 'user', 'content': instruction}, the completion one assistant message.")
                break
    if not problems:
        first = dataset[0]
        text = tokenizer.apply_chat_template(first["prompt"] + first["completion"], tokenize=False)
        if not text.rstrip().endswith(first["completion"][0]["content"] + "<|im_end|>"):
            problems.append(f"the chat template renders {text!r}; the answer should close the assistant turn.")
    return verdict(problems, "conversational prompt/completion rows: TRL applies the chat template and still "
                             "trains on the assistant answer only.")


def check_merged_weight(merged_weight: Callable, peft_model, layer: str = "model.layers.0.self_attn.q_proj"
                        ) -> Feedback:
    """Hard: ``merged_weight(peft_model, layer)`` returns the weight that ``merge_and_unload`` would put in
    ``layer``: ``W + (lora_alpha / r) * B @ A`` for the active adapter."""
    module = peft_model.get_submodule(f"base_model.model.{layer}")
    if not hasattr(module, "lora_A"):
        return Feedback(False, f"{layer} has no LoRA adapter; wrap the model with LoRA on all linear layers first.")
    adapter = peft_model.active_adapter
    expected = module.get_delta_weight(adapter) + module.base_layer.weight
    got = torch.as_tensor(merged_weight(peft_model, layer)).detach()
    if got.shape != expected.shape:
        return Feedback(False, f"shape {tuple(got.shape)} should be {tuple(expected.shape)} (out_features x "
                               "in_features): B @ A, not A @ B.")
    delta = (expected - module.base_layer.weight).abs().max().item()
    if delta == 0:
        return Feedback(False, "the adapter's B matrix is still zero, so any answer equals W: train the adapter "
                               "(or fill B) before checking.")
    problems = [] if torch.allclose(got, expected, atol=1e-6) else [
        f"max difference {(got - expected).abs().max().item():.2e} from the merged weight; scale B @ A by "
        f"lora_alpha / r = {module.scaling[adapter]}."]
    return verdict(problems, f"W + {module.scaling[adapter]} * B @ A: the largest change to W is {delta:.4f}.")

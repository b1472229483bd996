"""Checks for chapter 12 (PEFT methods compared)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import Feedback, verdict


def lora_parameter_count(model: nn.Module, r: int, target_modules: list[str]) -> int:
    """What LoRA of rank ``r`` adds: ``r * (in + out)`` per targeted linear layer (A is r x in, B out x r)."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and name.split(".")[-1] in target_modules:
            total += r * (module.in_features + module.out_features)
    return total


def check_lora_parameter_count(model: nn.Module, answer: int, r: int, target_modules: list[str]) -> Feedback:
    """Easy: the number of parameters a rank-``r`` LoRA on ``target_modules`` adds to ``model``."""
    expected = lora_parameter_count(model, r, target_modules)
    if expected == 0:
        return Feedback(False, f"No nn.Linear in the model is named one of {target_modules}.")
    if answer == expected:
        return Feedback(True, f"{answer:,} parameters: r x (d_in + d_out) summed over every targeted layer.")
    layers = sum(
        1 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.split(".")[-1] in target_modules
    )
    hint = (
        " That is one layer's worth: every layer of every block gets its own A and B."
        if answer * layers == expected
        else " Each adapted layer has A (r x d_in) and B (d_out x r); count both."
    )
    return Feedback(False, f"{answer:,} is not it ({layers} layers are targeted).{hint}")


def check_bitfit(model: nn.Module) -> Feedback:
    """Medium: exactly the bias parameters are trainable (and there are some)."""
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    problems = []
    if not biases:
        problems.append(
            "the model has no biases: give its linear layers zero biases first "
            "(peft_methods.add_zero_biases)."
        )
    extra = [n for n in trainable if not n.endswith(".bias")]
    frozen = [n for n in biases if n not in trainable]
    if extra:
        problems.append(
            f"{len(extra)} non-bias parameters still train (e.g. {extra[0]}): set "
            "requires_grad=False on them."
        )
    if frozen:
        problems.append(f"{len(frozen)} biases are frozen (e.g. {frozen[0]}).")
    return verdict(problems, f"BitFit: {len(trainable)} bias tensors train, everything else is frozen.")


@torch.no_grad()
def check_manual_merge(merge: Callable[..., torch.Tensor], peft_model, adapter: str = "default") -> Feedback:
    """Hard: ``merge(weight, lora_A, lora_B, scaling) -> merged weight`` must equal what peft
    merges, for every LoRA layer of ``peft_model`` (give the B matrices non-zero values first)."""
    layers = [m for m in peft_model.modules() if hasattr(m, "lora_A") and adapter in m.lora_A]
    if not layers:
        return Feedback(False, f"No LoRA layers with adapter {adapter!r}; wrap the model with LoRA first.")
    if all(float(m.lora_B[adapter].weight.abs().max()) == 0 for m in layers):
        return Feedback(
            False,
            "Every lora_B is still zero, so any merge looks right: train a few steps "
            "or fill lora_B with random values first.",
        )
    for layer in layers:
        expected = layer.base_layer.weight + layer.get_delta_weight(adapter)
        got = merge(
            layer.base_layer.weight.clone(),
            layer.lora_A[adapter].weight,
            layer.lora_B[adapter].weight,
            layer.scaling[adapter],
        )
        if got.shape != expected.shape:
            return Feedback(
                False,
                f"Shape {tuple(got.shape)} but the weight is {tuple(expected.shape)}: "
                "B (out x r) @ A (r x in) has the weight's shape.",
            )
        if not torch.allclose(got, expected, atol=1e-5):
            return Feedback(
                False,
                "Values differ from peft's merge: W + scaling * (B @ A), with scaling = lora_alpha / r.",
            )
    return Feedback(True, f"W + (alpha / r) B A matches peft on all {len(layers)} LoRA layers.")

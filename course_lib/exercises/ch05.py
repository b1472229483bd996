"""Checks for chapter 5 (PEFT and TRL in one sitting)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..finetune import completion_logprob
from ..models import count_parameters
from . import Feedback, verdict


def check_lora_targets(peft_model, r: int = 4, targets: tuple[str, ...] = ("q_proj", "v_proj")) -> Feedback:
    """Easy: a LoRA adapter of rank ``r`` on the ``targets`` projections only, with the base frozen."""
    config = getattr(peft_model, "peft_config", {}).get("default")
    if config is None:
        return Feedback(
            False,
            "this is not a PeftModel with a 'default' adapter: wrap the model with "
            "`peft.get_peft_model(model, LoraConfig(...))`.",
        )
    problems = []
    if config.r != r:
        problems.append(f"the rank is {config.r}, not {r}: set `r={r}`.")
    adapted = {
        name.split(".")[-1] for name, module in peft_model.named_modules() if hasattr(module, "lora_A")
    }
    if adapted != set(targets):
        problems.append(
            f"adapters sit on {sorted(adapted)}; put them on {sorted(targets)} only "
            f"(`target_modules={list(targets)}`)."
        )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
    if trainable:
        problems.append(
            f"{len(trainable)} non-LoRA tensors are trainable (e.g. {trainable[0]}); the base "
            "model must stay frozen."
        )
    share = count_parameters(peft_model)["trainable_%"]
    return verdict(
        problems,
        f"rank {r} on {', '.join(targets)}: {share}% of the parameters train.",
    )


def reference_dpo_loss(
    policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float
) -> torch.Tensor:
    """The sigmoid DPO loss per pair: ``-log sigmoid(beta * (policy margin - reference margin))``."""
    logits = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -torch.nn.functional.logsigmoid(beta * logits)


def check_dpo_loss(dpo_loss: Callable) -> Feedback:
    """Medium: ``dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta)``
    takes summed log-probabilities (1-D tensors, one entry per pair) and returns the mean DPO loss."""
    generator = torch.Generator().manual_seed(0)
    logps = [-20 * torch.rand(16, generator=generator) for _ in range(4)]
    problems = []
    for beta in (0.1, 0.5):
        expected = reference_dpo_loss(*logps, beta).mean()
        got = torch.as_tensor(dpo_loss(*logps, beta), dtype=torch.float32)
        if got.numel() != 1:
            problems.append(f"returned {got.numel()} values; average over the pairs.")
            break
        if not torch.allclose(got, expected, atol=1e-5):
            problems.append(
                f"with beta={beta} expected {expected.item():.5f}, got {got.item():.5f} "
                "(rewards are beta * (policy - reference) log-probs; loss = -logsigmoid(chosen - rejected))."
            )
    same = torch.full((4,), -3.0)
    if not problems:
        start = float(torch.as_tensor(dpo_loss(same, same - 1, same, same - 1, 0.1)))
        if abs(start - 0.693147) > 1e-4:
            problems.append(f"when policy equals reference the loss must be log 2 = 0.6931, got {start:.4f}.")
    return verdict(problems, "matches TRL's sigmoid loss; a policy equal to its reference starts at log 2.")


def check_reward_margin(
    reward_margin: Callable, policy, reference, tokenizer, pairs: list[dict], beta: float = 0.1
) -> Feedback:
    """Hard: ``reward_margin(policy, reference, tokenizer, prompt, chosen, rejected, beta)`` returns DPO's
    implicit reward of ``chosen`` minus that of ``rejected`` (plain prompt style, eos after the answer)."""
    problems = []

    def reward(prompt: str, answer: str) -> float:
        return beta * (
            completion_logprob(policy, tokenizer, prompt, answer)
            - completion_logprob(reference, tokenizer, prompt, answer)
        )

    for pair in pairs:
        expected = reward(pair["prompt"], pair["chosen"]) - reward(pair["prompt"], pair["rejected"])
        got = float(
            reward_margin(
                policy, reference, tokenizer, pair["prompt"], pair["chosen"], pair["rejected"], beta
            )
        )
        if abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            problems.append(
                f"for {pair['prompt'][:50]!r} expected {expected:.4f}, got {got:.4f}: sum the "
                "log-probs of the answer tokens (and eos) only, given 'Question: ...\\nAnswer:'."
            )
            break
    return verdict(
        problems, f"matches on {len(pairs)} pairs: the margin DPOTrainer reports as rewards/margins."
    )

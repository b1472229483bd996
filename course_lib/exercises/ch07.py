"""Checks for chapter 7 (pretraining from scratch)."""

from __future__ import annotations

import math

import torch

from ..evaluation import unigram_perplexity
from . import Feedback

# Made-up histories the check also tries: evaluations and the final summary after the last loss
HISTORIES = [
    [{"loss": 6.0, "step": 5}, {"loss": 4.5, "step": 10}, {"eval_loss": 4.0, "step": 10}],
    [{"loss": 3.25, "step": 1}, {"train_runtime": 2.0, "train_loss": 3.5, "step": 1}],
]


def check_perplexity_from_loss(function, log_history: list[dict]) -> Feedback:
    """Easy: ``function(log_history)`` is the perplexity of the last logged training loss, on
    ``log_history`` (the page's run) and on :data:`HISTORIES`."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if not losses:
        return Feedback(False, "This log history has no training loss; pass trainer.state.log_history.")
    for history in [log_history, *HISTORIES]:
        last = [entry["loss"] for entry in history if "loss" in entry][-1]
        answer = float(function([dict(entry) for entry in history]))
        if math.isclose(answer, 2**last, rel_tol=1e-3):
            return Feedback(False, "The loss is in nats (natural log): use math.exp, not 2 **.")
        if not math.isclose(answer, math.exp(last), rel_tol=1e-3):
            earlier = [entry.get(key) for entry in history for key in entry if key.endswith("loss")]
            if any(math.isclose(answer, math.exp(loss), rel_tol=1e-3) for loss in earlier):
                return Feedback(
                    False,
                    "That is another loss: take the last entry that has a 'loss' key "
                    "(not eval_loss nor train_loss).",
                )
            return Feedback(False, f"{answer:.4g} is not exp(last loss) for {history}.")
    return Feedback(
        True,
        f"exp({losses[-1]:.4f}) = {math.exp(losses[-1]):.1f}: as unsure as a uniform choice of "
        f"{math.exp(losses[-1]):.0f} tokens.",
    )


def check_unigram_perplexity(
    answer: float, train_ids: torch.Tensor, blocks: torch.Tensor, vocab_size: int
) -> Feedback:
    """Medium: add-one-smoothed unigram perplexity of ``blocks`` (first token of each block not scored)."""
    expected = unigram_perplexity(train_ids, blocks, vocab_size, smoothing=1.0)
    if math.isclose(answer, expected, rel_tol=1e-4):
        return Feedback(
            True,
            f"{expected:.1f}: ignores context; a model that beats it uses what came before.",
        )
    all_tokens = unigram_perplexity(train_ids, torch.nn.functional.pad(blocks, (1, 0)), vocab_size)
    hint = (
        " Score the same tokens as the model: every token of a block except the first."
        if math.isclose(answer, all_tokens, rel_tol=1e-3)
        else " Count with torch.bincount(train_ids, minlength=vocab_size), add 1 to every count, "
        "normalise, and take exp of the mean negative log-probability."
    )
    return Feedback(False, f"{answer:.4g} differs from {expected:.4g}.{hint}")


def _probe_configs() -> list[tuple[str, dict]]:
    """Llama configs that each test one part of the count (a description and the config's fields)."""
    from ..assets.pretrain import MODEL_CONFIG

    course = {"vocab_size": 4096, **MODEL_CONFIG}
    return [
        ("the course model (tied embeddings)", course),
        ("untied embeddings (lm_head has its own matrix)", {**course, "tie_word_embeddings": False}),
        (
            "grouped-query attention (2 key/value heads of 8 query heads)",
            {
                **course,
                "hidden_size": 256,
                "num_attention_heads": 8,
                "num_key_value_heads": 2,
                "intermediate_size": 640,
                "num_hidden_layers": 3,
                "vocab_size": 1000,
            },
        ),
        ("head_dim set apart from hidden_size / heads", {**course, "head_dim": 48, "num_hidden_layers": 2}),
    ]


_HINTS = (
    "Per layer: q and o are hidden x (heads x head_dim), k and v hidden x (kv_heads x head_dim); the MLP "
    "has three matrices (gate, up: hidden x intermediate; down: intermediate x hidden); two RMSNorm "
    "weight vectors. Add the embedding, one final norm, and lm_head only when it is not tied. Llama's "
    "linear layers have no bias."
)


def check_parameter_formula(count_parameters) -> Feedback:
    """Hard: ``count_parameters(config)`` returns the number of parameters of
    ``LlamaForCausalLM(config)`` from the config alone (no model built). Compared with the real count on
    a few configs (built on the meta device: no memory, no time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    problems = []
    for description, fields in _probe_configs():
        config = LlamaConfig(**fields)
        with torch.device("meta"):
            expected = LlamaForCausalLM(config).num_parameters()
        try:
            got = count_parameters(config)
        except Exception as error:  # report any failure as feedback, not a traceback
            problems.append(f"{description}: raised {type(error).__name__}: {error}.")
            continue
        if got != expected:
            delta = expected - int(got)
            problems.append(f"{description}: {int(got):,} instead of {expected:,} ({delta:+,}).")
    if problems:
        return Feedback(False, " ".join(problems[:2]) + " " + _HINTS)
    return Feedback(
        True,
        f"exact on {len(_probe_configs())} configs: embeddings dominate a small model, MLPs a large one.",
    )

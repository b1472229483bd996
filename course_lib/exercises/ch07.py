"""Checks for chapter 7 (pretraining from scratch)."""
from __future__ import annotations

import math
import tempfile

import torch

from ..evaluation import unigram_perplexity
from . import Feedback, verdict


def check_perplexity_from_loss(log_history: list[dict], answer: float) -> Feedback:
    """Easy: the perplexity that the last logged training loss of ``log_history`` corresponds to."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    if not losses:
        return Feedback(False, "This log history has no training loss; pass trainer.state.log_history.")
    expected = math.exp(losses[-1])
    if math.isclose(answer, expected, rel_tol=1e-3):
        return Feedback(True, f"exp({losses[-1]:.4f}) = {expected:.1f}: the model is as unsure as a uniform "
                              f"choice among about {expected:.0f} tokens.")
    if math.isclose(answer, 2 ** losses[-1], rel_tol=1e-3):
        return Feedback(False, "The loss is in nats (natural log): use math.exp, not 2 **.")
    if any(math.isclose(answer, math.exp(loss), rel_tol=1e-3) for loss in losses[:-1]):
        return Feedback(False, "That is an earlier loss: take the last entry that has a 'loss' key.")
    return Feedback(False, f"{answer:.4g} is not exp(last loss); the last loss is {losses[-1]:.4f}.")


def check_unigram_perplexity(answer: float, train_ids: torch.Tensor, blocks: torch.Tensor,
                             vocab_size: int) -> Feedback:
    """Medium: add-one-smoothed unigram perplexity of ``blocks`` (first token of each block not scored)."""
    expected = unigram_perplexity(train_ids, blocks, vocab_size, smoothing=1.0)
    if math.isclose(answer, expected, rel_tol=1e-4):
        return Feedback(True, f"{expected:.1f}: a model that ignores context entirely. Beating it is the "
                              "first sign a language model uses what came before.")
    all_tokens = unigram_perplexity(train_ids, torch.nn.functional.pad(blocks, (1, 0)), vocab_size)
    hint = (" Score the same tokens as the model: every token of a block except the first."
            if math.isclose(answer, all_tokens, rel_tol=1e-3) else
            " Count with torch.bincount(train_ids, minlength=vocab_size), add 1 to every count, "
            "normalise, and take exp of the mean negative log-probability.")
    return Feedback(False, f"{answer:.4g} differs from {expected:.4g}.{hint}")


def check_stop_callback(make_callback, tokenizer, threshold: float = 7.5, max_steps: int = 30) -> Feedback:
    """Hard: ``make_callback(threshold)`` returns a ``TrainerCallback`` that stops training at the first
    logged training loss below ``threshold``. Runs a tiny pretraining (a few seconds) to check."""
    from ..pretraining import new_model, pack_blocks, pretrain, tokenize_split
    from .. import assets

    ids = tokenize_split(tokenizer, assets.corpus(), "validation")
    blocks = pack_blocks(ids, 32)[:256]
    model = new_model(tokenizer, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        trainer = pretrain(model, tokenizer, blocks, folder, max_steps=max_steps, logging_steps=1,
                           per_device_train_batch_size=4, callbacks=[make_callback(threshold)])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    problems = []
    if trainer.state.global_step >= max_steps and losses and min(losses) < threshold:
        problems.append("Training ran all its steps although the loss fell below the threshold: in on_log, "
                        "set control.should_training_stop = True when logs['loss'] < threshold.")
    elif losses and losses[-1] >= threshold:
        problems.append(f"Training stopped at a loss of {losses[-1]:.3f}, not below {threshold}.")
    elif any(loss < threshold for loss in losses[:-1]):
        problems.append("Training went on after the first loss below the threshold.")
    return verdict(problems, f"Stopped at step {trainer.state.global_step} of {max_steps}, at the first "
                             f"logged loss below {threshold} ({losses[-1]:.3f}).")

"""A custom ``PretrainedConfig``/``PreTrainedModel`` pair: a bigram language model.

Small enough to read in one screen, yet a real baseline: its "training" is
counting which token follows which (:func:`fit_bigram`), and its perplexity is
what a transformer must beat. Registering it with the Auto classes lets
``AutoModelForCausalLM.from_pretrained(folder)`` rebuild it from disk.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

MODEL_TYPE = "course-bigram"


class BigramConfig(PretrainedConfig):
    """Configuration of :class:`BigramLM`: the vocabulary size and add-k smoothing."""

    model_type = MODEL_TYPE

    def __init__(self, vocab_size: int = 4096, smoothing: float = 0.1, **kwargs):
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}.")
        if smoothing <= 0:
            raise ValueError(f"smoothing must be > 0 (zero counts give infinite loss), got {smoothing}.")
        self.vocab_size = vocab_size
        self.smoothing = smoothing
        super().__init__(**kwargs)


class BigramLM(PreTrainedModel):
    """Next-token logits depend on the current token only: one row of a table per token."""

    config_class = BigramConfig
    base_model_prefix = "bigram"

    def __init__(self, config: BigramConfig):
        super().__init__(config)
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Embedding):
            nn.init.zeros_(module.weight)  # a uniform distribution before fitting

    def forward(self, input_ids: torch.LongTensor, labels: torch.LongTensor | None = None,
                **kwargs) -> CausalLMOutput:
        logits = self.logits_table(input_ids)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                ignore_index=-100)
        return CausalLMOutput(loss=loss, logits=logits)


@torch.no_grad()
def fit_bigram(model: BigramLM, ids: torch.Tensor) -> BigramLM:
    """Set the table to smoothed log-probabilities counted from a 1-D token stream."""
    vocab = model.config.vocab_size
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("fit_bigram needs a 1-D tensor of at least two token ids.")
    if int(ids.max()) >= vocab:
        raise ValueError(f"token id {int(ids.max())} is outside the vocabulary ({vocab}).")
    counts = torch.zeros(vocab, vocab)
    counts.index_put_((ids[:-1], ids[1:]), torch.ones(ids.numel() - 1), accumulate=True)
    counts += model.config.smoothing
    model.logits_table.weight.copy_((counts / counts.sum(dim=1, keepdim=True)).log())
    return model


def register() -> None:
    """Teach ``AutoConfig``/``AutoModelForCausalLM`` the ``course-bigram`` model type (idempotent)."""
    try:
        AutoConfig.register(MODEL_TYPE, BigramConfig)
    except ValueError:
        pass  # already registered in this process
    try:
        AutoModelForCausalLM.register(BigramConfig, BigramLM)
    except ValueError:
        pass

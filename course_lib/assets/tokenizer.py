"""Train the course's byte-level BPE tokenizer on the corpus's train split."""

from __future__ import annotations

import json
from pathlib import Path

VOCAB_SIZE = 4096
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# ChatML-style; {% generation %} marks the assistant tokens so that
# `return_assistant_tokens_mask=True` (and TRL's assistant_only_loss) can find them.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def iter_train_texts(corpus_folder: Path):
    """Yield the text of each train-split document."""
    with open(corpus_folder / "train.jsonl", encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)["text"]


def train_byte_level_bpe(texts, special_tokens: list[str], vocab_size: int):
    """A byte-level BPE (``tokenizers.Tokenizer``) trained on ``texts``: every string is encodable
    (no unknown token), the special tokens take the first ids. The course tokenizer and the
    synthetic Hub's tokenizers are trained this way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def train_tokenizer(corpus_folder: Path, out_folder: Path, vocab_size: int = VOCAB_SIZE) -> dict:
    """Train a byte-level BPE on the corpus and save it as a transformers fast tokenizer.

    Byte-level means every string is encodable (no unknown token); the special
    tokens are bos/eos/pad plus the two chat-turn markers.
    """
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_level_bpe(iter_train_texts(corpus_folder), SPECIAL_TOKENS, vocab_size)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=512
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_folder)
    return {"vocab_size": len(fast)}

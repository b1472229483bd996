"""Pretrain the course's small Llama-style language model on the corpus.

Size and schedule follow what was measured to learn fastest on 2 CPU cores:
4 layers, width 128, tied embeddings (~1.3M parameters), batch 16 x 128 tokens,
constant learning rate 2e-3 after a short warm-up. The run is a fixed number of
steps with a fixed seed, so the same machine always builds the same weights.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

MODEL_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}
TRAIN_CONFIG = {
    "steps": 420,
    "batch_size": 16,
    "block_size": 128,
    "lr": 2e-3,
    "warmup_steps": 30,
    "weight_decay": 0.01,
    "seed": 0,
}


def tokenize_split(tokenizer, corpus_folder: Path, split: str) -> torch.Tensor:
    """All documents of one split as one 1-D tensor of ids, each document ended by eos."""
    ids: list[int] = []
    with open(corpus_folder / f"{split}.jsonl", encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    for encoded in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        ids.extend(encoded)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def pack_blocks(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cut a token stream into non-overlapping ``(n_blocks, block_size)`` rows, dropping the tail."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}.")
    n_blocks = ids.numel() // block_size
    return ids[: n_blocks * block_size].view(n_blocks, block_size)


@torch.no_grad()
def block_perplexity(model, blocks: torch.Tensor, batch_size: int = 32) -> float:
    """Perplexity over packed blocks: exp of the mean next-token loss (every block is full)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        n_predicted = batch.numel() - batch.shape[0]
        total += loss.item() * n_predicted
        count += n_predicted
    return math.exp(total / count)


def new_model(tokenizer, seed: int = 0):
    """A randomly initialised course LM (same architecture as the pretrained asset)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def pretrain(
    tokenizer_folder: Path, corpus_folder: Path, out_folder: Path, train_config: dict = TRAIN_CONFIG
) -> dict:
    """Pretrain from scratch, save model + tokenizer to ``out_folder``, return metrics."""
    from tqdm import tqdm  # text bars: they render in the static book too
    from transformers import AutoTokenizer

    cfg = train_config
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    train_ids = tokenize_split(tokenizer, corpus_folder, "train")
    val_blocks = pack_blocks(tokenize_split(tokenizer, corpus_folder, "validation"), cfg["block_size"])
    model = new_model(tokenizer, cfg["seed"])
    untrained_ppl = block_perplexity(model, val_blocks)

    generator = torch.Generator().manual_seed(cfg["seed"])
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=cfg["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / cfg["warmup_steps"])
    )
    max_start = train_ids.numel() - cfg["block_size"]
    start_time = time.perf_counter()
    model.train()
    losses = []
    for _ in tqdm(range(cfg["steps"]), desc="pretraining course LM", mininterval=10):
        starts = torch.randint(0, max_start, (cfg["batch_size"],), generator=generator)
        batch = torch.stack([train_ids[s : s + cfg["block_size"]] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 4))
    train_seconds = time.perf_counter() - start_time

    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_folder)
    for item in Path(tokenizer_folder).iterdir():
        if item.is_file() and item.name != "manifest.json":
            shutil.copy(item, out_folder / item.name)
    (out_folder / "train_losses.json").write_text(json.dumps(losses))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens_seen": cfg["steps"] * cfg["batch_size"] * cfg["block_size"],
        "train_corpus_tokens": int(train_ids.numel()),
        "train_seconds": round(train_seconds, 1),
        "validation_perplexity": round(block_perplexity(model, val_blocks), 2),
        "untrained_validation_perplexity": round(untrained_ppl, 1),
        "final_train_loss": losses[-1],
    }

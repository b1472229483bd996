import math

import torch

from course_lib.assets.pretrain import block_perplexity, pack_blocks
from course_lib.custom_model import BigramConfig, BigramLM
from course_lib.evaluation import perplexity_baselines


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    model = BigramLM(BigramConfig(vocab_size=37))  # zero logits: uniform
    blocks = pack_blocks(torch.randint(0, 37, (100,)), 10)
    assert blocks.shape == (10, 10)
    assert math.isclose(block_perplexity(model, blocks), 37, rel_tol=1e-5)


def test_pretrained_beats_both_baselines(course_lm):
    model, tokenizer = course_lm
    rows = {r["model"].split()[0]: r["perplexity"] for r in perplexity_baselines(model, tokenizer, max_blocks=40)}
    assert rows["pretrained"] < rows["bigram"] < rows["untrained"]
    assert rows["untrained"] > 0.5 * len(tokenizer)


def test_exact_match():
    from course_lib.evaluation import exact_match

    assert exact_match(["json ", "os"], ["json", "sys"]) == 0.5
    import pytest

    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])

import math

import pytest
import torch

from course_lib.evaluation import bigram_log_probs, exact_match, perplexity_baselines


def test_bigram_log_probs_match_hand_counts():
    log_probs = bigram_log_probs(torch.tensor([0, 1, 0, 1, 0, 2]), vocab_size=3, smoothing=1.0)
    # after token 0: counts 1->2, 2->1, plus 1 smoothing each: (1, 3, 2) / 6
    assert torch.allclose(log_probs[0].exp(), torch.tensor([1 / 6, 3 / 6, 2 / 6]))
    assert torch.allclose(log_probs.exp().sum(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="smoothing"):
        bigram_log_probs(torch.tensor([0, 1]), 3, smoothing=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        bigram_log_probs(torch.tensor([0, 9]), 4)


def test_pretrained_beats_both_baselines(course_lm):
    model, tokenizer = course_lm
    rows = {
        r["model"].split()[0]: r["perplexity"] for r in perplexity_baselines(model, tokenizer, max_blocks=40)
    }
    assert rows["pretrained"] < rows["bigram"] < rows["untrained"]
    assert rows["untrained"] > 0.5 * len(tokenizer)
    assert math.isfinite(rows["bigram"])


def test_exact_match():
    assert exact_match(["json ", "os"], ["json", "sys"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions for 1"):
        exact_match(["a", "b"], ["a"])

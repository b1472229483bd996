import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from course_lib import custom_model
from course_lib.custom_model import BigramConfig, BigramLM, fit_bigram


def test_fit_bigram_matches_hand_counts():
    model = fit_bigram(BigramLM(BigramConfig(vocab_size=3, smoothing=1.0)), torch.tensor([0, 1, 0, 1, 0, 2]))
    # after token 0: counts 1->2, 2->1, plus 1 smoothing each: (1, 3, 2) / 6
    probs = model.logits_table.weight[0].exp()
    assert torch.allclose(probs, torch.tensor([1 / 6, 3 / 6, 2 / 6]))


def test_round_trip_through_auto_classes(tmp_path):
    custom_model.register()
    custom_model.register()
    model = fit_bigram(BigramLM(BigramConfig(vocab_size=50)), torch.randint(0, 50, (500,)))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert type(AutoConfig.from_pretrained(tmp_path)).__name__ == "BigramConfig"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 7))
    assert isinstance(reloaded, BigramLM)
    assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert reloaded(ids, labels=ids).loss.item() > 0


def test_bad_config_and_input_fail_clearly():
    with pytest.raises(ValueError, match="smoothing"):
        BigramConfig(smoothing=0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        fit_bigram(BigramLM(BigramConfig(vocab_size=4)), torch.tensor([0, 9]))

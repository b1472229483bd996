import pytest
import torch

from course_lib.models import (
    as_dtype,
    count_parameters,
    load_model,
    memory_by_dtype,
    pick_dtype,
    source_of,
    tensor_bytes,
)
from course_lib.profiles import CourseError, resolve


def test_offline_causal_lm_loads_through_auto_classes(course_lm):
    model, tokenizer = course_lm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32 and not model.training


def test_tied_weights_counted_once(course_lm):
    model, _ = course_lm
    counts = count_parameters(model)
    naive = sum(t.numel() for t in model.state_dict().values())
    assert counts["total"] == 1_377_408  # golden: 4 layers, d=128, vocab 4096, tied
    assert naive - counts["total"] == 4096 * 128  # the tied embedding appears twice in state_dict


def test_memory_halves_in_bf16(course_lm):
    model, _ = course_lm
    fp32, bf16 = memory_by_dtype(model, ("float32", "bfloat16"))
    assert fp32["bytes_per_parameter"] == 4.0 and bf16["bytes_per_parameter"] == 2.0
    assert bf16["MB_on_disk"] < 0.55 * fp32["MB_on_disk"]
    assert tensor_bytes(model) >= 4 * count_parameters(model)["total"]


def test_dtype_choice_and_names():
    assert pick_dtype("cpu") == torch.float32
    assert as_dtype("bf16") == torch.bfloat16
    with pytest.raises(CourseError, match="Unknown dtype"):
        as_dtype("int3")


def test_dataset_role_is_not_a_model():
    with pytest.raises(CourseError, match="not a model"):
        load_model("sft-data")


def test_hub_profile_uses_the_same_loading_code(monkeypatch):
    """Up to the network boundary: the hub profile hands the repo id to from_pretrained,
    with safe defaults, and nothing is downloaded here."""
    import transformers

    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(source=source, **kwargs)
        raise OSError("network boundary")

    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(OSError, match="network boundary"):
        load_model("instruct-lm")
    assert seen["source"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert seen["trust_remote_code"] is False and seen["use_safetensors"] is True
    assert seen["dtype"] == torch.float32  # CPU here; bf16/fp16 on a GPU


def test_hub_profile_while_offline_fails_clearly(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    with pytest.raises(CourseError, match="HF_HUB_OFFLINE"):
        load_model("causal-lm")


def test_encoder_is_the_packaged_minilm():
    folder = source_of(resolve("encoder"))
    assert folder.endswith("model")
    encoder = load_model("encoder")
    assert type(encoder).__name__ == "BertModel"
    assert 22_000_000 < count_parameters(encoder)["total"] < 23_500_000

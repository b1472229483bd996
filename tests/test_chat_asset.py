"""The chat asset: chapter 8's SFT recipe run once on the course LM, served as the chat-model role."""

import importlib
import json

import pytest

from course_lib import assets
from course_lib import finetune as ft
from course_lib.assets.cache import file_sha256, read_manifest
from course_lib.profiles import resolve

# the module, not the assets.chat() function that shadows it on the package
chat_asset = importlib.import_module("course_lib.assets.chat")

# Held-out exact match the chat model must beat the base LM by (0.75 against 0.0 when measured).
MARGIN = 0.3


def test_registry_maps_chat_model_to_the_chat_asset_offline_and_an_instruct_model_on_the_hub(
    monkeypatch,
):
    assert resolve("chat-model", "offline").source == "chat"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert resolve("chat-model", "hub").source == "Qwen/Qwen2.5-0.5B-Instruct"
    assert "chat" in assets.BUILDERS
    assert "chat" in {row["asset"] for row in assets.asset_status()}


def test_settings_agree_with_the_course_trl_defaults():
    for key, value in ft.TRL_DEFAULTS.items():
        assert chat_asset.SFT_CONFIG[key] == value, key
    assert chat_asset.SFT_CONFIG["bf16"] is False and chat_asset.SFT_CONFIG["use_cpu"] is True


def test_data_selection_is_chapter_8s():
    tasks_folder = assets.tasks()
    train = ft.task_rows("sft-data", "train", task="module")
    modules = ft.frequent_answers(train, k=chat_asset.MODULES_KEPT)
    assert chat_asset.kept_modules(tasks_folder) == modules
    held_out = ft.task_rows("sft-data", ("validation", "test"), task="module", answers=modules)
    assert [row["source"] for row in assets.chat_questions()] == held_out["source"]
    rows = chat_asset.questions(tasks_folder, ["train"])
    taught = ft.sft_dataset(ft.task_rows("sft-data", "train", task="module", answers=modules), "chat")
    assert [chat_asset.conversation(row) for row in rows[:5]] == list(taught.select(range(5)))


def test_a_short_build_is_deterministic_and_loadable(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setitem(chat_asset.SFT_CONFIG, "max_steps", 2)
    monkeypatch.setitem(chat_asset.SFT_CONFIG, "logging_steps", 1)
    hashes = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        extra = chat_asset.build_chat_model(assets.lm(), assets.tasks(), out)
        hashes.append(file_sha256(out / "model.safetensors"))
    assert hashes[0] == hashes[1]
    assert extra["train_rows"] > 100 and len(extra["modules"]) == chat_asset.MODULES_KEPT
    losses = json.loads((out / "train_losses.json").read_text())
    assert [entry["step"] for entry in losses] == [1, 2]
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and "<|im_end|>" in tokenizer.get_vocab()
    model = AutoModelForCausalLM.from_pretrained(out)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in model.generation_config.eos_token_id


@pytest.fixture(scope="module")
def chat_folder():
    return assets.chat()


def test_the_cached_asset_records_what_it_was_built_from(chat_folder):
    manifest = read_manifest(chat_folder)
    assert manifest["recipe"]["lm"] == read_manifest(assets.lm())["content_hash"]
    assert manifest["recipe"]["tasks"] == read_manifest(assets.tasks())["content_hash"]
    assert manifest["recipe"]["sft"] == chat_asset.SFT_CONFIG
    assert "model.safetensors" in manifest["files"] and "chat_template.jinja" in manifest["files"]
    assert manifest["final_train_loss"] < 0.5


def test_the_chat_model_beats_the_base_lm_on_held_out_questions(chat_folder, course_lm):
    from datasets import Dataset

    from course_lib.models import load_model, load_tokenizer

    base, base_tokenizer = course_lm
    chat, tokenizer = load_model("chat-model"), load_tokenizer("chat-model")
    assert tokenizer.chat_template
    held_out = Dataset.from_list(assets.chat_questions())
    chat_score = ft.exact_match_score(chat, tokenizer, held_out, style="chat", max_new_tokens=8)
    base_score = ft.exact_match_score(base, base_tokenizer, held_out, style="chat", max_new_tokens=8)
    assert chat_score["exact_match"] > base_score["exact_match"] + MARGIN, (chat_score, base_score)

import math

import pytest
import torch
from conftest import tiny_llama_config
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    LlamaForCausalLM,
    Trainer,
    TrainingArguments,
)

from course_lib import assets, pretraining
from course_lib.assets.cache import read_manifest
from course_lib.assets.pretrain import pack_blocks
from course_lib.evaluation import HELD_OUT_BLOCK, corpus_ids, held_out_perplexity, unigram_perplexity
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(assets.tokenizer())


@pytest.fixture(scope="module")
def small_blocks(tokenizer):
    return pack_blocks(corpus_ids(tokenizer, "validation"), 32)[:64]


def test_training_the_tokenizer_reproduces_the_course_tokenizer(tmp_path, tokenizer):
    trained = pretraining.train_course_tokenizer(tmp_path / "tok", vocab_size=4096)
    assert trained.get_vocab() == tokenizer.get_vocab()
    assert trained.chat_template == tokenizer.chat_template
    with pytest.raises(ValueError, match="vocab_size"):
        pretraining.train_course_tokenizer(tmp_path / "tiny", vocab_size=100)


def test_tokenizer_table_by_hand(tokenizer):
    texts = ["Return the number of items.", "Sort a list in place."]
    (row,) = pretraining.tokenizer_table({"course": tokenizer}, texts, hidden_size=10)
    n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert row["tokens"] == n_tokens
    assert row["characters per token"] == round(sum(map(len, texts)) / n_tokens, 2)
    assert row["embedding parameters"] == len(tokenizer) * 10


def test_corpus_texts():
    texts = pretraining.corpus_texts("validation")
    assert texts and all(isinstance(t, str) and t for t in texts)
    with pytest.raises(CourseError, match="split"):
        pretraining.corpus_texts("dev")


def _tiny_run(tokenizer, blocks, folder, steps=6, save_steps=3):
    """Chapter 7's recipe, shrunk: the page writes the same calls, on a smaller model."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        tiny_llama_config(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            max_position_embeddings=HELD_OUT_BLOCK,  # evaluate_checkpoints scores blocks this long
        )
    )
    args = TrainingArguments(
        folder,
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=2e-3,
        logging_steps=1,
        save_steps=save_steps,
        save_only_model=True,
        seed=0,
        data_seed=0,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": blocks.tolist()}),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[pretraining.ProgressBarCallback()],
    )
    trainer.train()
    return model, trainer


def test_pretrain_saves_checkpoints_and_is_repeatable(tmp_path, tokenizer, small_blocks):
    model, trainer = _tiny_run(tokenizer, small_blocks, tmp_path / "a")
    curve = pretraining.loss_curve(trainer.state.log_history)
    assert [p["step"] for p in curve] == list(range(1, 7))
    assert curve[-1]["loss"] < curve[0]["loss"]
    folders = pretraining.checkpoint_folders(tmp_path / "a")
    assert [step for step, _ in folders] == [3, 6]
    assert (folders[0][1] / "model.safetensors").exists()
    assert not (folders[0][1] / "optimizer.pt").exists()  # weights only
    _, again = _tiny_run(tokenizer, small_blocks, tmp_path / "b")
    assert [p["loss"] for p in pretraining.loss_curve(again.state.log_history)] == [p["loss"] for p in curve]

    rows = pretraining.evaluate_checkpoints(
        tmp_path / "a", tokenizer, ["Return the"], max_new_tokens=4, max_blocks=4
    )
    assert [r["step"] for r in rows] == [3, 6]
    final = held_out_perplexity(model, tokenizer, max_blocks=4)["perplexity"]
    assert math.isclose(rows[-1]["validation perplexity"], round(final, 1), rel_tol=1e-4)
    assert isinstance(rows[0]["Return the"], str) and "\n" not in rows[0]["Return the"]
    series = pretraining.loss_series(curve, rows)
    assert series[pretraining.HELD_OUT][1] == [round(math.log(r["validation perplexity"]), 3) for r in rows]


def test_checkpoint_folders_and_errors(tmp_path, tokenizer):
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "runs").mkdir()
    assert [s for s, _ in pretraining.checkpoint_folders(tmp_path)] == [3, 20]
    with pytest.raises(CourseError, match="save_steps"):
        pretraining.evaluate_checkpoints(tmp_path / "empty", tokenizer, ["x"])


def test_unigram_perplexity_by_hand():
    train = torch.tensor([0, 0, 1, 2])  # counts 2, 1, 1, 0 -> add one: 3, 2, 2, 1 of 8
    blocks = torch.tensor([[3, 0, 1], [1, 2, 2]])  # scored: 0, 1, 2, 2
    probabilities = torch.tensor([3 / 8, 2 / 8, 2 / 8, 2 / 8])
    expected = math.exp(-probabilities.log().mean().item())
    assert math.isclose(unigram_perplexity(train, blocks, vocab_size=4), expected, rel_tol=1e-9)
    uniform = unigram_perplexity(torch.arange(5), torch.tensor([[0, 1, 2, 3, 4]]), vocab_size=5)
    assert math.isclose(uniform, 5.0, rel_tol=1e-9)
    with pytest.raises(ValueError, match="smoothing"):
        unigram_perplexity(train, blocks, 4, smoothing=0)
    with pytest.raises(ValueError, match="vocab_size"):
        unigram_perplexity(train, blocks, 3)


def test_course_checkpoint_matches_its_manifest(tokenizer):
    model, course_tokenizer = pretraining.course_checkpoint()
    assert course_tokenizer.get_vocab() == tokenizer.get_vocab()
    blocks = pack_blocks(corpus_ids(tokenizer, "validation"), 128)
    recorded = read_manifest(assets.lm())["validation_perplexity"]
    assert math.isclose(held_out_perplexity(model, tokenizer)["perplexity"], recorded, rel_tol=1e-3)
    train = corpus_ids(tokenizer, "train")
    assert recorded < unigram_perplexity(train, blocks, len(tokenizer)) / 3


def test_ch07_checks(small_blocks):
    from course_lib.exercises import ch07

    history = [{"loss": 6.0, "step": 5}, {"loss": 5.0, "step": 10}, {"train_runtime": 3.0}]

    def losses(log):
        return [entry["loss"] for entry in log if "loss" in entry]

    check = ch07.check_perplexity_from_loss
    assert check(lambda log: math.exp(losses(log)[-1]), history).passed
    assert "math.exp" in check(lambda log: 2 ** losses(log)[-1], history).message
    assert "another loss" in check(lambda log: math.exp(losses(log)[0]), history).message
    fitted = check(lambda log: math.exp(5.0), history)  # right for the page's run only
    assert not fitted.passed and "is not exp(last loss)" in fitted.message

    train = small_blocks.reshape(-1)
    right = unigram_perplexity(train, small_blocks, 4096)
    assert ch07.check_unigram_perplexity(right, train, small_blocks, 4096).passed
    assert not ch07.check_unigram_perplexity(right * 1.1, train, small_blocks, 4096).passed

    def by_formula(config):
        d, head_dim = config.hidden_size, config.head_dim
        attention = 2 * d * head_dim * (config.num_attention_heads + config.num_key_value_heads)
        layer = attention + 3 * d * config.intermediate_size + 2 * d
        embedding = config.vocab_size * d
        return embedding * (1 if config.tie_word_embeddings else 2) + config.num_hidden_layers * layer + d

    assert ch07.check_parameter_formula(by_formula).passed
    always_tied = ch07.check_parameter_formula(
        lambda c: by_formula(c) - (0 if c.tie_word_embeddings else c.vocab_size * c.hidden_size)
    )
    assert not always_tied.passed and "untied" in always_tied.message and "lm_head" in always_tied.message
    no_gqa = ch07.check_parameter_formula(
        lambda c: by_formula(c) if c.num_key_value_heads == c.num_attention_heads else by_formula(c) + 1
    )
    assert not no_gqa.passed and "grouped-query" in no_gqa.message
    assert "raised ZeroDivisionError" in ch07.check_parameter_formula(lambda c: 1 // 0).message

import math

import pytest
import torch
from transformers import AutoTokenizer, TrainerCallback

from course_lib import assets, pretraining
from course_lib.assets.cache import read_manifest
from course_lib.evaluation import unigram_perplexity
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(assets.tokenizer())


@pytest.fixture(scope="module")
def small_blocks(tokenizer):
    ids = pretraining.tokenize_split(tokenizer, assets.corpus(), "validation")
    return pretraining.pack_blocks(ids, 32)[:64]


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


def test_block_dataset_has_unshifted_labels(small_blocks):
    dataset = pretraining.block_dataset(small_blocks[:3])
    assert dataset["input_ids"][:] == dataset["labels"][:] == small_blocks[:3].tolist()
    with pytest.raises(ValueError, match="n_blocks"):
        pretraining.block_dataset(small_blocks[0])


def test_pretraining_arguments(tmp_path):
    args = pretraining.pretraining_arguments(tmp_path, max_steps=10, save_steps=5)
    assert args.max_steps == 10 and args.save_steps == 5 and args.save_only_model
    assert args.learning_rate == pretraining.SETTINGS["learning_rate"]
    assert args.lr_scheduler_type.value == "constant_with_warmup" and args.seed == 0
    assert pretraining.pretraining_arguments(tmp_path, max_steps=3).save_strategy.value == "no"
    assert pretraining.pretraining_arguments(tmp_path, 3, learning_rate=1e-4).learning_rate == 1e-4
    with pytest.raises(ValueError, match="max_steps"):
        pretraining.pretraining_arguments(tmp_path, max_steps=0)


def _tiny_run(tokenizer, blocks, folder, steps=6, save_steps=3):
    model = pretraining.new_model(tokenizer, seed=0)
    trainer = pretraining.pretrain(model, tokenizer, blocks, folder, max_steps=steps, save_steps=save_steps,
                                   logging_steps=1, per_device_train_batch_size=4)
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

    rows = pretraining.evaluate_checkpoints(tmp_path / "a", tokenizer, small_blocks[:8], ["Return the"],
                                            max_new_tokens=4)
    assert [r["step"] for r in rows] == [3, 6]
    final = pretraining.block_perplexity(model, small_blocks[:8])
    assert math.isclose(rows[-1]["validation perplexity"], round(final, 1), rel_tol=1e-4)
    assert isinstance(rows[0]["Return the"], str)
    series = pretraining.loss_series(curve, rows)
    assert series[pretraining.HELD_OUT][1] == [round(math.log(r["validation perplexity"]), 3) for r in rows]


def test_checkpoint_folders_and_errors(tmp_path, tokenizer, small_blocks):
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "runs").mkdir()
    assert [s for s, _ in pretraining.checkpoint_folders(tmp_path)] == [3, 20]
    with pytest.raises(CourseError, match="save_steps"):
        pretraining.evaluate_checkpoints(tmp_path / "empty", tokenizer, small_blocks, ["x"])


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
    blocks = pretraining.pack_blocks(pretraining.tokenize_split(tokenizer, assets.corpus(), "validation"), 128)
    recorded = read_manifest(assets.lm())["validation_perplexity"]
    assert math.isclose(pretraining.block_perplexity(model, blocks), recorded, rel_tol=1e-3)
    train = pretraining.tokenize_split(tokenizer, assets.corpus(), "train")
    assert recorded < unigram_perplexity(train, blocks, len(tokenizer)) / 3


def test_ch07_checks(tokenizer, small_blocks):
    from course_lib.exercises import ch07

    history = [{"loss": 6.0, "step": 5}, {"loss": 5.0, "step": 10}, {"train_runtime": 3.0}]
    assert ch07.check_perplexity_from_loss(history, math.exp(5.0)).passed
    assert "math.exp" in ch07.check_perplexity_from_loss(history, 2 ** 5.0).message
    assert "earlier" in ch07.check_perplexity_from_loss(history, math.exp(6.0)).message

    train = small_blocks.reshape(-1)
    right = unigram_perplexity(train, small_blocks, 4096)
    assert ch07.check_unigram_perplexity(right, train, small_blocks, 4096).passed
    assert not ch07.check_unigram_perplexity(right * 1.1, train, small_blocks, 4096).passed

    class StopBelow(TrainerCallback):
        def __init__(self, threshold):
            self.threshold = threshold

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and logs.get("loss", float("inf")) < self.threshold:
                control.should_training_stop = True

    class NeverStops(TrainerCallback):
        def __init__(self, threshold):
            pass

    assert ch07.check_stop_callback(StopBelow, tokenizer).passed
    never = ch07.check_stop_callback(NeverStops, tokenizer)
    assert not never.passed and "should_training_stop" in never.message

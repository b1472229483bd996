import json

import pytest
import torch

from course_lib import loop
from course_lib.assets.pretrain import new_model
from course_lib.models import load_tokenizer
from course_lib.profiles import CourseError

BLOCK = 16


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("causal-lm")


@pytest.fixture(scope="module")
def blocks():
    generator = torch.Generator().manual_seed(0)
    return (torch.randint(5, 4096, (64, BLOCK), generator=generator),
            torch.randint(5, 4096, (16, BLOCK), generator=generator))


def small_config(**overrides) -> loop.LoopConfig:
    settings = {"max_steps": 8, "batch_size": 4, "lr": 2e-3, "warmup_steps": 3, "eval_every": 4,
                "eval_batches": 2}
    return loop.LoopConfig(**(settings | overrides))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size"):
        loop.LoopConfig(batch_size=0)
    with pytest.raises(ValueError, match="lr"):
        loop.LoopConfig(lr=0)
    with pytest.raises(ValueError, match="eval_every"):
        loop.LoopConfig(eval_every=None, patience=2)
    assert loop.LoopConfig(batch_size=4, grad_accum_steps=3).blocks_per_step == 12


def test_warmup_then_constant():
    assert [loop.warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert loop.warmup_factor(0, 0) == 1.0


def test_loader_needs_packed_blocks():
    with pytest.raises(ValueError, match="pack_blocks"):
        loop.make_loader(torch.arange(10), batch_size=2)
    with pytest.raises(ValueError, match="cannot fill"):
        loop.make_loader(torch.zeros(3, 4, dtype=torch.long), batch_size=4)


def test_accumulated_gradient_equals_big_batch_gradient(tokenizer, blocks):
    train_blocks, _ = blocks
    batch = train_blocks[:8]
    model = new_model(tokenizer)
    loop.accumulate_gradients(model, [batch])
    big = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    loop.accumulate_gradients(model, list(batch.split(2)))  # 4 micro-batches of 2
    for reference, accumulated in zip(big, (p.grad for p in model.parameters())):
        torch.testing.assert_close(accumulated, reference, rtol=1e-4, atol=1e-7)
    gap = loop.accumulation_gap(model, batch, 4)
    assert gap["max |difference|"] < 1e-6 < gap["largest |gradient|"]
    with pytest.raises(ValueError, match="equal micro-batches"):
        loop.accumulation_gap(model, batch, 3)


def test_resumed_run_ends_with_the_same_loss(tokenizer, blocks, tmp_path):
    train_blocks, val_blocks = blocks
    config = small_config(grad_accum_steps=2, save_every=2, keep_checkpoints=2)
    full = loop.train(new_model(tokenizer), train_blocks, val_blocks, config, output_dir=tmp_path / "full",
                      progress=False)
    assert [c.name for c in loop.list_checkpoints(tmp_path / "full")] == ["checkpoint-6", "checkpoint-8"]

    run = tmp_path / "run"
    first = loop.train(new_model(tokenizer), train_blocks, val_blocks, config, output_dir=run,
                       stop_after=5, progress=False)
    assert first.stop_reason == "interrupted after step 5" and first.steps_done == 5
    assert [c.name for c in loop.list_checkpoints(run)] == ["checkpoint-4", "checkpoint-5"]
    checkpoint = first.last_checkpoint
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "training_state.pt"}
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)
    assert set(state) == {"optimizer", "scheduler", "rng", "loop"}
    assert set(state["rng"]) == {"python", "torch", "numpy"}

    # a different initialisation proves the weights come from the checkpoint
    resumed = loop.train(new_model(tokenizer, seed=123), train_blocks, val_blocks, config,
                         output_dir=run, resume_from=checkpoint, progress=False)
    assert resumed.steps_done == config.max_steps
    assert resumed.history[0]["step"] == 6
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-6)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history[5:]],
                                                                 abs=1e-6)
    assert resumed.evaluations[-1]["val_loss"] == pytest.approx(full.evaluations[-1]["val_loss"], abs=1e-6)


def test_resume_from_an_incomplete_folder_fails_clearly(tokenizer, blocks, tmp_path):
    train_blocks, _ = blocks
    with pytest.raises(CourseError, match="not a complete checkpoint"):
        loop.train(new_model(tokenizer), train_blocks, None, small_config(eval_every=None),
                   resume_from=tmp_path, progress=False)


def test_early_stopping_keeps_the_best_weights(tokenizer, blocks, tmp_path):
    train_blocks, val_blocks = blocks
    # 4 random blocks memorised at a high learning rate: the validation loss soon rises
    config = small_config(max_steps=40, lr=1e-2, warmup_steps=0, eval_every=2, patience=2)
    model = new_model(tokenizer)
    result = loop.train(model, train_blocks[:4], val_blocks, config, output_dir=tmp_path, progress=False)
    assert result.stop_reason.startswith("early stopping at step")
    assert result.steps_done < config.max_steps
    assert result.steps_done == result.best_step + 2 * config.eval_every
    best = loop.load_best_weights(model, tmp_path)
    assert best["step"] == result.best_step
    assert loop.evaluate(model, val_blocks, 4, 2) == pytest.approx(result.best_val_loss, abs=1e-5)


def test_non_finite_loss_names_the_step(tokenizer, blocks):
    train_blocks, _ = blocks
    model = new_model(tokenizer)
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("inf"))
    with pytest.raises(loop.NonFiniteError, match=r"the loss is nan at step 1 \(micro-batch 1 of 1\)"):
        loop.train(model, train_blocks, None, small_config(eval_every=None), progress=False)


def test_trackers_write_what_they_get(tokenizer, blocks, tmp_path):
    train_blocks, val_blocks = blocks
    json_tracker = loop.JsonlTracker(tmp_path / "log.jsonl")
    board = loop.TensorBoardTracker(tmp_path / "tb")
    for tracker in (json_tracker, board):
        loop.train(new_model(tokenizer), train_blocks, val_blocks, small_config(max_steps=4),
                   tracker=tracker, progress=False)
        tracker.close()
    rows = json_tracker.read()
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval/loss" in r] == [4]
    scalars = loop.read_tensorboard_scalars(tmp_path / "tb")
    assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "eval/loss"}
    assert [step for step, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    assert scalars["train/loss"][0][1] == pytest.approx(rows[0]["train/loss"], rel=1e-6)


def test_memory_estimate_matches_measurement(tokenizer):
    model = new_model(tokenizer)
    batch = torch.randint(5, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    estimate = loop.estimate_training_memory(model, 4, 32)
    measured = loop.measure_training_memory(model, batch)
    for part in ("parameters", "gradients", "optimizer states"):
        assert measured[part] == estimate[part], part
    assert 0.8 < measured["activations"] / estimate["activations"] < 1.25
    rows = loop.memory_table(estimate, measured)
    assert [r["part"] for r in rows][-1] == "total"
    json.dumps(rows)


def test_profiler_summary(tokenizer, blocks):
    train_blocks, _ = blocks
    summary = loop.profile_steps(new_model(tokenizer), train_blocks, small_config(), steps=2, top=5)
    assert len(summary["ops"]) == 5 and summary["peak_MB"] > 0
    assert any(row["operator"] in ("aten::mm", "aten::addmm", "aten::bmm") for row in summary["ops"])


def test_trainer_comparison_runs_the_same_steps(tokenizer, blocks):
    train_blocks, _ = blocks
    rows = loop.compare_with_trainer(lambda: new_model(tokenizer), train_blocks,
                                     small_config(max_steps=3, warmup_steps=1))
    assert [r["steps"] for r in rows] == [3, 3]
    assert all(r["tokens/CPU-s"] > 0 and r["final loss"] > 0 for r in rows)


def test_exercise_checks(tokenizer, blocks):
    from course_lib.exercises import ch11

    config = loop.LoopConfig(batch_size=4, grad_accum_steps=2)
    assert ch11.check_tokens_per_step(config, 64, 512).passed
    assert "grad_accum_steps" in ch11.check_tokens_per_step(config, 64, 256).message

    assert ch11.check_warmup(lambda step: min(1.0, (step + 1) / 5), 5).passed
    assert "first optimizer step" in ch11.check_warmup(lambda step: min(1.0, step / 5), 5).message

    def good(model, batch, n):
        for part in batch.chunk(n):
            (model(input_ids=part, labels=part).loss / n).backward()

    def undivided(model, batch, n):
        for part in batch.chunk(n):
            model(input_ids=part, labels=part).loss.backward()

    model, batch = new_model(tokenizer), blocks[0][:8]
    assert ch11.check_accumulation(good, model, batch, 4).passed
    feedback = ch11.check_accumulation(undivided, model, batch, 4)
    assert not feedback.passed and "divide" in feedback.message

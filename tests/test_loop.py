import json

import pytest
import torch

from course_lib import loop
from course_lib.assets.pretrain import new_model
from course_lib.models import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("causal-lm")


@pytest.fixture(scope="module")
def blocks():
    return torch.randint(5, 4096, (16, 16), generator=torch.Generator().manual_seed(0))


def test_memory_estimate_matches_measurement(tokenizer):
    model = new_model(tokenizer)
    batch = torch.randint(5, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    estimate = loop.estimate_step_memory(model, 4, 32)
    measured = loop.measure_training_memory(model, batch)
    for part in ("parameters", "gradients", "optimizer states"):
        assert measured[part] == estimate[part], part
    assert 0.8 < measured["activations"] / estimate["activations"] < 1.25
    rows = loop.memory_table(estimate, measured)
    assert [r["part"] for r in rows][-1] == "total"
    json.dumps(rows)


def test_profiler_summary(tokenizer, blocks):
    model = new_model(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters())
    calls = []

    def step():
        calls.append(1)
        model(input_ids=blocks[:4], labels=blocks[:4]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    summary = loop.profile_steps(step, steps=2, top=5)
    assert len(calls) == 3  # one warm-up step, then the profiled ones
    assert len(summary["ops"]) == 5 and summary["peak_MB"] > 0 and summary["profiled_ms"] > 0
    assert any(row["operator"] in ("aten::mm", "aten::addmm", "aten::bmm") for row in summary["ops"])
    with pytest.raises(ValueError, match="steps"):
        loop.profile_steps(step, steps=0)


def test_step_timer_and_throughput_row():
    timer = loop.step_timer()
    for _ in range(3):
        timer.on_step_begin(None, None, None)
        sum(range(10_000))
        timer.on_step_end(None, None, None)
    assert len(timer.seconds) == 3 and all(s >= 0 for s in timer.seconds)
    row = loop.throughput_row("ours", [0.1, 0.2, 0.4], tokens_per_step=512, final_loss=3.21)
    assert row == {
        "loop": "ours",
        "steps": 3,
        "median CPU ms/step": 200.0,
        "tokens/CPU-s": 2560,
        "final loss": 3.21,
    }
    with pytest.raises(ValueError, match="No step timings"):
        loop.throughput_row("ours", [], 512, 1.0)


def test_exercise_checks(tokenizer, blocks):
    from course_lib.exercises import ch11

    config = {"batch_size": 4, "accumulation": 2}
    assert ch11.check_tokens_per_step(config, 64, 512).passed
    assert "accumulation" in ch11.check_tokens_per_step(config, 64, 256).message

    assert ch11.check_warmup(lambda step: min(1.0, (step + 1) / 5), 5).passed
    assert "first optimizer step" in ch11.check_warmup(lambda step: min(1.0, step / 5), 5).message

    def good(model, batch, n):
        for part in batch.chunk(n):
            (model(input_ids=part, labels=part).loss / n).backward()

    def undivided(model, batch, n):
        for part in batch.chunk(n):
            model(input_ids=part, labels=part).loss.backward()

    model, batch = new_model(tokenizer), blocks[:8]
    assert ch11.check_accumulation(good, model, batch, 4).passed
    feedback = ch11.check_accumulation(undivided, model, batch, 4)
    assert not feedback.passed and "divide" in feedback.message

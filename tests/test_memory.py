"""course_lib.memory: peak memory and optimizer-state bytes measured on the CPU, ordered as the
arithmetic says; infer_auto_device_map keeps every device within its max_memory (chapter 15)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama_config

from course_lib import memory
from course_lib.exercises import ch15

MB = memory.MB


def _resident_measurements() -> dict[str, float | str]:
    """Every resident-size measurement these tests check, taken in one fresh process (see
    ``measured``)."""
    with memory.peak_memory() as known:
        block = torch.ones(64 * MB // 4)  # 64 MB, every page written
        del block
    with memory.peak_memory() as retained:
        kept = torch.ones(32 * MB // 4)
        block = torch.ones(64 * MB // 4)
        del block
    del kept
    with memory.peak_memory() as first:
        block = torch.ones(96 * MB // 4)
        del block
    with memory.peak_memory() as second:
        block = torch.ones(32 * MB // 4)
        del block
    with memory.peak_memory() as untouched:
        block = torch.empty(64 * MB // 4)  # promised, never written
        del block
    memory._reset_peak = lambda: False  # the sampling fallback (this process ends here)
    with memory.peak_memory() as sampled:
        block = torch.ones(64 * MB // 4)
        time.sleep(0.05)  # held long enough for the 1 ms sampler
        del block
    return {
        "known": known.megabytes,
        "known_method": known.method,
        "retained_peak": retained.megabytes,
        "retained": retained.retained_megabytes,
        "first": first.megabytes,
        "second": second.megabytes,
        "untouched": untouched.megabytes,
        "sampled": sampled.megabytes,
        "sampled_method": sampled.method,
    }


def _in_a_fresh_process(function: str):
    """``function()`` of this module, run in a new Python process, its JSON result. Resident
    size read inside a long test session misleads: the heap keeps freed pages resident, and an
    allocation that reuses them never raises the peak (a full run failed on that)."""
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); "
        f"from test_memory import {function}; print(json.dumps({function}()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measured() -> dict:
    return _in_a_fresh_process("_resident_measurements")


def test_peak_memory_sees_a_known_allocation(measured):
    assert measured["known_method"]
    assert abs(measured["known"] - 64) < 0.1 * 64, measured


def test_retained_memory_is_what_the_block_keeps(measured):
    assert abs(measured["retained_peak"] - 96) < 0.1 * 96, measured
    assert abs(measured["retained"] - 32) < 0.1 * 32, measured


def test_two_blocks_in_one_process_are_measured_apart(measured):
    """Chapter 13 measures a QLoRA run and then a LoRA run in one process: a larger peak in the
    first block must not leak into the second's figure."""
    assert abs(measured["first"] - 96) < 0.1 * 96, measured
    assert abs(measured["second"] - 32) < 0.1 * 32, measured


def test_untouched_memory_is_not_resident(measured):
    assert measured["untouched"] < 8, measured


def test_sampling_fallback_sees_a_held_allocation(measured):
    assert measured["sampled_method"].startswith("sampled")
    assert abs(measured["sampled"] - 64) < 0.15 * 64, measured


def test_seconds_per_call_and_measure_step():
    calls = []
    assert memory.seconds_per_call(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5
    with pytest.raises(ValueError):
        memory.seconds_per_call(lambda: None, repeats=0)
    row = memory.measure_step(lambda: torch.ones(MB), repeats=1)
    assert set(row) == {"peak_MB", "s_per_step"}


def _state_bytes_per_parameter(model, optimizer) -> float:
    model(torch.randn(8, model.in_features)).sum().backward()
    optimizer.step()
    return memory.optimizer_state_bytes(optimizer) / sum(p.numel() for p in model.parameters())


def test_adamw_state_is_8_bytes_and_adamw8bit_about_2_per_parameter():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = torch.nn.Linear(256, 256, bias=False)
    fp32 = _state_bytes_per_parameter(model, torch.optim.AdamW(model.parameters()))
    assert 8 <= fp32 < 8.01  # two float32 moments (+ a scalar step count)
    model = torch.nn.Linear(256, 256, bias=False)
    eight_bit = _state_bytes_per_parameter(model, bnb.optim.AdamW8bit(model.parameters()))
    assert 2 <= eight_bit < 2.1  # two uint8 moments + one float32 scale per 256-value block


def _tiny_llama(layers):
    from transformers import LlamaForCausalLM

    # wide and long enough that activations, not weights, make the peaks these tests compare
    config = tiny_llama_config(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=layers,
        max_position_embeddings=512,
        use_cache=False,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config).train()


def _step_peak(model, ids, repeats=3) -> float:
    """The highest of a few measured steps: a step whose allocations land in pages the heap
    still holds, or whose peak falls between two samples, reads low."""
    model(input_ids=ids, labels=ids).loss.backward()  # warm-up: kernels, gradient buffers
    model.zero_grad(set_to_none=True)
    peaks = []
    for _ in range(repeats):
        with memory.peak_memory() as peak:
            model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)
        peaks.append(peak.megabytes)
    return max(peaks)


def _activation_peaks() -> dict[str, float]:
    ids = torch.randint(0, 64, (4, 256), generator=torch.Generator().manual_seed(0))
    model = _tiny_llama(layers=8)  # deep enough that checkpointing's saving is large
    full = _step_peak(model, ids)
    half = _step_peak(model, ids[:2])  # one of two accumulated micro-batches
    model.activation_checkpointing_enable()
    return {"full": full, "half": half, "checkpointed": _step_peak(model, ids)}


def test_checkpointing_and_accumulation_lower_the_activation_peak():
    """Measured in a fresh process: after a long test session the heap holds freed pages that are
    still resident, and an allocation that reuses them never raises the peak resident size."""
    peaks = _in_a_fresh_process("_activation_peaks")
    assert peaks["checkpointed"] < 0.75 * peaks["full"], peaks
    assert peaks["half"] < 0.7 * peaks["full"], peaks


def test_infer_auto_device_map_stays_within_each_max_memory():
    # sizes against which the 400 kB budgets below spill over both GPUs, the CPU and disk
    config = tiny_llama_config(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=8)
    budgets = {0: 400_000, 1: 400_000, "cpu": 400_000}
    device_map, used = ch15.device_plan(config, budgets, dtype=torch.float32)
    assert budgets == {0: 400_000, 1: 400_000, "cpu": 400_000}  # not rewritten
    for device, size in used.items():
        if device != "disk":
            assert size <= budgets[device], (device, size)
    assert {0, 1, "cpu", "disk"} <= set(used)  # small budgets spill all the way to disk
    for module in device_map:  # decoder layers are never split
        if module.startswith("model.layers."):
            assert module.count(".") == 2


def test_exercise_checks():
    assert ch15.check_optimizer_state(56, 14).passed
    assert not ch15.check_optimizer_state(28, 14).passed
    assert ch15.check_two_gpu_plan({0: "8GiB", 1: "8GiB", "cpu": 0}).passed
    assert not ch15.check_two_gpu_plan({0: "16GiB", 1: "16GiB"}).passed

    def right(model, batch, micro_batches):
        for chunk in batch.chunk(micro_batches):
            (model(input_ids=chunk, labels=chunk).loss / micro_batches).backward()

    def unscaled(model, batch, micro_batches):
        for chunk in batch.chunk(micro_batches):
            model(input_ids=chunk, labels=chunk).loss.backward()

    assert ch15.check_accumulation(right).passed
    feedback = ch15.check_accumulation(unscaled)
    assert not feedback.passed and "divide" in feedback.message

"""Measuring a training loop (chapter 11): memory, profiler, step timings.

The loop itself is written out on chapter 11's page; this module only measures
it. A memory estimate from the model's shapes and a measurement of the real
tensors of one step, a ``torch.profiler`` summary of a few steps, and the CPU
time of ``transformers.Trainer``'s steps for a throughput comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

# --- memory ------------------------------------------------------------------------------------


def _llama_shape(model) -> tuple[int, int, int, int]:
    config = model.config
    return (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.vocab_size)


def estimate_step_memory(model, batch_size: int, block_size: int) -> dict[str, int]:
    """Bytes one AdamW training step of a Llama-style model needs, from shapes alone.

    parameters and gradients: one float each per parameter; AdamW: two (``exp_avg``,
    ``exp_avg_sq``). Activations saved for backward, per token: in each layer
    11 vectors of width ``hidden`` (3 per RMSNorm x 2, q/k/v after rotary, attention output
    and its reshaped copy) and 4 of width ``intermediate`` (gate, up, SiLU(gate), their
    product), then 3 of width ``hidden`` for the final norm and 2 of width ``vocab``
    (logits and log-softmax).
    """
    n_params = sum(p.numel() for p in model.parameters())
    element = next(model.parameters()).element_size()
    layers, hidden, intermediate, vocab = _llama_shape(model)
    tokens = batch_size * block_size
    per_token = layers * (11 * hidden + 4 * intermediate) + 3 * hidden + 2 * vocab
    estimate = {
        "parameters": n_params * element,
        "gradients": n_params * element,
        "optimizer states": 2 * n_params * element,
        "activations": tokens * per_token * element,
    }
    estimate["total"] = sum(estimate.values())
    return estimate


def measure_training_memory(model, batch: torch.Tensor) -> dict[str, int]:
    """Measure the same four parts on one real AdamW step of ``model`` (trained in place).

    parameters, gradients and optimizer states: bytes of the actual tensors. Activations:
    every tensor autograd saves for backward during the forward pass (a
    ``saved_tensors_hooks`` pack hook; parameters excluded, each storage counted once), plus
    the logits the output holds.
    """
    optimizer = torch.optim.AdamW(model.parameters())
    parameter_storages = {
        p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()
    }
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = batch.clone().to(model.device)  # a slice would report its parent's whole storage
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(input_ids=batch, labels=batch)
    activations = sum(saved.values()) + output.logits.untyped_storage().nbytes()
    output.loss.backward()
    del output
    gradients = sum(p.grad.untyped_storage().nbytes() for p in model.parameters() if p.grad is not None)
    optimizer.step()
    states = sum(
        value.untyped_storage().nbytes()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.ndim > 0
    )
    optimizer.zero_grad(set_to_none=True)
    measured = {
        "parameters": sum(parameter_storages.values()),
        "gradients": gradients,
        "optimizer states": states,
        "activations": activations,
    }
    measured["total"] = sum(measured.values())
    return measured


def memory_table(estimate: dict[str, int], measured: dict[str, int]) -> list[dict]:
    """Rows ``part / estimated MB / measured MB / measured ÷ estimated`` for display."""
    return [
        {
            "part": part,
            "estimated MB": round(estimate[part] / 1e6, 2),
            "measured MB": round(measured[part] / 1e6, 2),
            "measured / estimated": round(measured[part] / estimate[part], 2),
        }
        for part in estimate
    ]


# --- profiler ----------------------------------------------------------------------------------


def profile_steps(step: Callable[[], object], steps: int = 3, top: int = 8) -> dict:
    """Call ``step()`` (one training step) once to warm up, then ``steps`` times under
    ``torch.profiler`` (CPU, memory on).

    Returns ``{"ops": rows, "peak_MB": ..., "profiled_ms": ...}``: the ``top`` operators by
    self CPU time (calls, ms, share of the profiled time) and the peak memory the steps
    allocated on top of what already existed, summed from the profiler's per-event
    allocations in time order.
    """
    from torch.profiler import ProfilerActivity, profile

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    step()  # warm-up: AdamW creates its states on the first step
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        for _ in range(steps):
            step()
    averages = sorted(profiler.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in averages) or 1.0
    rows = [
        {
            "operator": e.key,
            "calls": e.count,
            "self CPU ms": round(e.self_cpu_time_total / 1e3, 1),
            "share %": round(100 * e.self_cpu_time_total / total_us, 1),
        }
        for e in averages[:top]
    ]
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return {"ops": rows, "peak_MB": round(peak / 1e6, 2), "profiled_ms": round(total_us / 1e3, 1)}


# --- step timings --------------------------------------------------------------------------------


def step_timer():
    """A ``TrainerCallback`` that records the CPU seconds of each of ``Trainer``'s optimizer
    steps in its ``seconds`` list (``on_step_begin`` to ``on_step_end``)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._started = time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.process_time() - self._started)

    return StepTimer()


def throughput_row(loop: str, cpu_seconds: list[float], tokens_per_step: int, final_loss: float) -> dict:
    """One row of a throughput comparison: the median CPU time of a step and the tokens per
    CPU second it gives. CPU time, not wall time: on a machine shared with other work, wall
    time also counts the time spent waiting for a core."""
    if not cpu_seconds:
        raise ValueError("No step timings: run at least one step.")
    median = statistics.median(cpu_seconds)
    return {
        "loop": loop,
        "steps": len(cpu_seconds),
        "median CPU ms/step": round(1e3 * median, 1),
        "tokens/CPU-s": round(tokens_per_step / median),
        "final loss": round(final_loss, 4),
    }

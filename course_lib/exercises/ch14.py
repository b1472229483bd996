"""Checks for chapter 14 (scaling out)."""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..distributed import zero_memory_per_gpu
from . import Feedback, verdict


def check_global_batch(answer: int, per_device_batch_size: int, processes: int, grad_accum: int) -> Feedback:
    """Easy: the number of examples behind one optimizer step."""
    expected = per_device_batch_size * processes * grad_accum
    if answer == expected:
        return Feedback(
            True,
            f"{expected} examples per step: per-device batch x processes x accumulation.",
        )
    if answer == per_device_batch_size * processes:
        return Feedback(False, "Each process also accumulates several micro-batches before the step.")
    return Feedback(
        False,
        f"{answer} is not it: multiply the per-device batch by the processes and by the accumulation steps.",
    )


def check_qlora_config(config: dict[str, Any] | str) -> Feedback:
    """Medium: a ``trl sft`` config (a dict or YAML text) that TRL's parser accepts and that trains
    QLoRA (4-bit base, LoRA) with rank 16 on the ``data/signature`` folder for 30 steps."""
    import yaml
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser

    text = config if isinstance(config, str) else yaml.safe_dump(config)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(text)
        parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig))
        usage = io.StringIO()  # argparse prints its whole usage on a bad value
        try:
            with contextlib.redirect_stderr(usage):
                script, training, model, _ = parser.parse_args_and_config(["--config", str(path)])
        except (ValueError, TypeError) as error:
            return Feedback(False, f"trl sft would reject it: {error}")
        except SystemExit:
            reason = usage.getvalue().strip().splitlines()[-1:] or ["a value has the wrong type"]
            return Feedback(False, f"trl sft would reject it: {reason[0]}")
    problems = []
    if not model.use_peft:
        problems.append("use_peft is off: QLoRA trains LoRA adapters (use_peft: true).")
    if not model.load_in_4bit:
        problems.append("load_in_4bit is off: QLoRA's base model is loaded in 4 bits.")
    if model.lora_r != 16:
        problems.append(f"lora_r is {model.lora_r}, wanted 16.")
    if training.max_steps != 30:
        problems.append(f"max_steps is {training.max_steps}, wanted 30.")
    if not str(script.dataset_name).rstrip("/").endswith("signature"):
        problems.append(
            f"dataset_name is {script.dataset_name!r}; the signature task's data is data/signature."
        )
    return verdict(
        problems,
        f"trl sft accepts it: QLoRA, r=16, {script.dataset_name}, 30 steps.",
    )


def check_zero_memory(zero_gb: Callable[[float, int, int], float]) -> Feedback:
    """Hard: ``zero_gb(parameters, gpus, stage)`` -> GB of model states per GPU (mixed-precision Adam,
    no offload), for stages 0-3."""
    cases = [(7.5e9, 64, 0), (7.5e9, 64, 1), (7.5e9, 64, 2), (7.5e9, 64, 3), (1.3e9, 8, 2), (70e9, 512, 3)]
    for parameters, gpus, stage in cases:
        expected = zero_memory_per_gpu(parameters, gpus, stage)["gpu_GB"]
        got = float(zero_gb(parameters, gpus, stage))
        if abs(got - expected) > 0.01 * expected + 0.01:
            hint = {
                0: "every GPU holds 2 + 2 + 12 bytes per parameter",
                1: "stage 1 divides only the 12 bytes of optimizer states by the GPU count",
                2: "stage 2 divides the optimizer states and the 2 bytes of gradients",
                3: "stage 3 divides everything, the 2 bytes of parameters too",
            }[stage]
            return Feedback(
                False,
                f"{parameters:.3g} parameters on {gpus} GPUs at stage {stage}: expected "
                f"{expected} GB, got {got:.2f}. Hint: {hint}.",
            )
    paper = " -> ".join(f"{zero_memory_per_gpu(7.5e9, 64, stage)['gpu_GB']:g}" for stage in range(4))
    return Feedback(
        True,
        f"Matches the ZeRO paper; stages 0-3: {paper} GB.",
    )

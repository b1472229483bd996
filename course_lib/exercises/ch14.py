"""Checks for chapter 14 (scaling out)."""
from __future__ import annotations

from typing import Any, Callable

from ..distributed import zero_memory_per_gpu
from ..train_config import ConfigError, parse_config
from . import Feedback, verdict


def check_global_batch(answer: int, per_device_batch_size: int, processes: int, grad_accum: int) -> Feedback:
    """Easy: the number of examples behind one optimizer step."""
    expected = per_device_batch_size * processes * grad_accum
    if answer == expected:
        return Feedback(True, f"{expected} examples per optimizer step: per-device batch x processes x "
                              "accumulation steps.")
    if answer == per_device_batch_size * processes:
        return Feedback(False, "Each process also accumulates several micro-batches before the step.")
    return Feedback(False, f"{answer} is not it: multiply the per-device batch by the processes and by "
                           "the accumulation steps.")


def check_qlora_config(config: dict[str, Any] | str) -> Feedback:
    """Medium: a valid config that trains QLoRA with rank 16 on the signature task for 30 steps."""
    try:
        resolved = parse_config(config)
    except ConfigError as error:
        return Feedback(False, str(error))
    problems = []
    wanted = {("method", "name"): "qlora", ("method", "r"): 16, ("data", "task"): "signature",
              ("training", "max_steps"): 30}
    for (section, name), value in wanted.items():
        if resolved[section].get(name) != value:
            problems.append(f"{section}.{name} is {resolved[section].get(name)!r}, wanted {value!r}.")
    return verdict(problems, f"Valid, and it trains QLoRA r=16 on the signature task for 30 steps into "
                             f"{resolved['output_dir']}.")


def check_zero_memory(zero_gb: Callable[[float, int, int], float]) -> Feedback:
    """Hard: ``zero_gb(parameters, gpus, stage)`` -> GB of model states per GPU (mixed-precision Adam,
    no offload), for stages 0-3."""
    cases = [(7.5e9, 64, 0), (7.5e9, 64, 1), (7.5e9, 64, 2), (7.5e9, 64, 3), (1.3e9, 8, 2), (70e9, 512, 3)]
    for parameters, gpus, stage in cases:
        expected = zero_memory_per_gpu(parameters, gpus, stage)["gpu_GB"]
        got = float(zero_gb(parameters, gpus, stage))
        if abs(got - expected) > 0.01 * expected + 0.01:
            hint = {0: "every GPU holds 2 + 2 + 12 bytes per parameter",
                    1: "stage 1 divides only the 12 bytes of optimizer states by the GPU count",
                    2: "stage 2 divides the optimizer states and the 2 bytes of gradients",
                    3: "stage 3 divides everything, the 2 bytes of parameters too"}[stage]
            return Feedback(False, f"{parameters:.3g} parameters on {gpus} GPUs at stage {stage}: expected "
                                   f"{expected} GB, got {got:.2f}. Hint: {hint}.")
    paper = " -> ".join(f"{zero_memory_per_gpu(7.5e9, 64, stage)['gpu_GB']:g}" for stage in range(4))
    return Feedback(True, f"Matches the ZeRO paper's model on {len(cases)} cases (7.5B parameters on 64 GPUs, "
                          f"stages 0 to 3: {paper} GB).")

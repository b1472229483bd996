"""Scaling out (chapter 14): launching a training script in several processes, the memory
arithmetic of DeepSpeed ZeRO, and a check of DeepSpeed configs without DeepSpeed installed.

The training script itself is written on chapter 14's page. :func:`run_launched` starts it with
``accelerate launch`` or ``torchrun`` in a subprocess with a timeout and reads the JSON the main
process writes. :func:`zero_memory_per_gpu` is the memory model of the ZeRO paper
(Rajbhandari et al., 2020). :func:`validate_deepspeed_config` checks a DeepSpeed config's
structure with ``jsonschema`` and that its values agree with the ``TrainingArguments`` that will
read it. :func:`build_deepspeed_ops` compiles the op DeepSpeed needs on a CPU, and
:func:`zero_bytes_callback` measures the bytes of model states each process holds in a real run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .env import free_port
from .profiles import CourseError

LAUNCHERS = ("accelerate", "torchrun")

# DeepSpeed compiles its CPU op into torch's extensions folder, which torch names after the Python
# version only: two environments of one machine (the course's, a learner's virtual environment) see
# different compiler flags there and rebuild it for each other, 25 s each time. One folder per
# environment; set here, at import, so the processes a launch starts inherit it.
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR",
    str(Path.home() / ".cache" / "torch_extensions" / hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]),
)


# --- launching a script ------------------------------------------------------------------------


def launch_command(
    script: str | Path,
    script_args: list[str],
    processes: int = 2,
    launcher: str = "accelerate",
    port: int | None = None,
    launcher_args: list[str] = (),
) -> list[str]:
    """The command that starts ``processes`` copies of ``script`` on this machine.
    ``launcher_args`` go to the launcher before the script (torchrun's ``--nnodes``,
    ``--node-rank``, ``--master-addr``, ...); a default option they name is left out."""
    if launcher not in LAUNCHERS:
        raise CourseError(f"Unknown launcher {launcher!r}; use one of {LAUNCHERS}.")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}.")
    port = port or free_port()
    named = {arg.split("=")[0].replace("_", "-") for arg in launcher_args if arg.startswith("--")}
    if launcher == "accelerate":
        # --multi_gpu is accelerate's torchrun-based launcher; on CPUs the script's
        # Accelerator(cpu=True) makes the processes talk through gloo.
        head = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
        ]
        defaults = {
            "--num_machines": "1",
            "--mixed_precision": "no",
            "--dynamo_backend": "no",
            "--main_process_ip": "127.0.0.1",
            "--main_process_port": str(port),
        }
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes)]
        defaults = {"--master-addr": "127.0.0.1", "--master-port": str(port)}
        if "--rdzv-endpoint" in named:  # a rendezvous replaces the master address
            named |= set(defaults)
    for option, value in defaults.items():
        if option.replace("_", "-") not in named:
            head += [option, value]
    return head + [*launcher_args, str(script), *script_args]


def run_launched(
    script: str | Path,
    script_args: list[str] = (),
    processes: int = 2,
    launcher: str = "accelerate",
    timeout: float = 240,
    env: dict[str, str] | None = None,
    launcher_args: list[str] = (),
) -> dict[str, Any]:
    """Launch ``script`` in ``processes`` processes and return the JSON its main process writes
    to the path given as ``--out``, plus ``command`` (the command line, shortened) and
    ``wall_seconds`` (including starting the processes). ``env`` adds environment variables
    (e.g. ``DS_ACCELERATOR=cpu`` for DeepSpeed on a CPU); ``launcher_args`` go to the launcher
    (:func:`launch_command`)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = launch_command(
            script, [*script_args, "--out", str(out)], processes, launcher, launcher_args=launcher_args
        )
        # One thread per process: the processes already share the cores between them.
        env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"} | (env or {})
        start = time.perf_counter()
        try:
            finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CourseError(
                f"The {launcher} launch did not finish within {timeout:.0f} s; raise timeout= or "
                "train fewer steps."
            ) from None
        if finished.returncode != 0 or not out.is_file():
            raise CourseError(
                f"The {launcher} launch failed (exit {finished.returncode}):\n" + finished.stderr[-2500:]
            )
        result = json.loads(out.read_text())
    shown = ["python"] + command[1:-2]
    result["command"] = " ".join(shown)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


# --- DeepSpeed ZeRO: what each stage partitions, and the memory it leaves per GPU ---------------

ZERO_STAGES = {
    0: "nothing: plain data parallelism, every GPU holds everything",
    1: "optimizer states (Adam's fp32 master weights, momentum and variance)",
    2: "optimizer states and gradients",
    3: "optimizer states, gradients and the parameters themselves",
}


def zero_model_state_bytes(
    parameters: float, processes: int, stage: int, weight_bytes: int = 2
) -> dict[str, float]:
    """Bytes of model states per process (GPU) under ZeRO ``stage``, as in the ZeRO paper:
    ``weight_bytes`` per parameter for the weights and as many for the gradients (2 in
    mixed-precision training, 4 in float32), and 12 for the optimizer states (an fp32 copy of the
    weights, Adam's momentum and variance; DeepSpeed keeps its fp32 copy in float32 training too).
    Stage 1 splits the optimizer states over the processes, stage 2 also the gradients, stage 3
    also the weights. Unrounded, so it can be set beside bytes measured on a small model."""
    if stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be one of {sorted(ZERO_STAGES)}, got {stage}.")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}.")
    return {
        "parameters": weight_bytes * parameters / (processes if stage >= 3 else 1),
        "gradients": weight_bytes * parameters / (processes if stage >= 2 else 1),
        "optimizer": 12.0 * parameters / (processes if stage >= 1 else 1),
    }


def zero_memory_per_gpu(
    parameters: float, gpus: int, stage: int, offload_optimizer: bool = False, offload_param: bool = False
) -> dict[str, float]:
    """GB per GPU for model states in mixed-precision Adam training, as in the ZeRO paper: 2 bytes of
    fp16/bf16 parameters, 2 of gradients and 12 of optimizer states (fp32 copy, momentum, variance)
    per parameter; stage 1 splits the optimizer states over the GPUs, stage 2 also the gradients,
    stage 3 also the parameters (:func:`zero_model_state_bytes`). Offloading moves the optimizer
    states (and with stage 3 the parameters) to CPU memory. Activations and buffers come on top."""
    if offload_param and stage != 3:
        raise ValueError("offload_param needs ZeRO stage 3 (only stage 3 partitions the parameters).")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3.")
    states = zero_model_state_bytes(parameters, gpus, stage)
    params, grads, optimizer = states["parameters"], states["gradients"], states["optimizer"]
    cpu = 0.0
    if offload_optimizer:
        cpu, optimizer = cpu + optimizer, 0.0
    if offload_param:
        cpu, params = cpu + params, 0.0
    return {
        "gpu_GB": round((params + grads + optimizer) / 1e9, 2),
        "cpu_GB_per_gpu": round(cpu / 1e9, 2),
        "parameters_GB": round(params / 1e9, 2),
        "gradients_GB": round(grads / 1e9, 2),
        "optimizer_GB": round(optimizer / 1e9, 2),
    }


def zero_table(parameters: float, gpus: int) -> list[dict[str, Any]]:
    """:func:`zero_memory_per_gpu` for stages 0-3 and the two offload options, one row each: GB of
    model states per GPU, and GB per GPU moved to CPU memory."""
    rows = []
    for stage, offload_optimizer, offload_param in (
        (0, False, False),
        (1, False, False),
        (2, False, False),
        (2, True, False),
        (3, False, False),
        (3, True, True),
    ):
        name = (
            f"ZeRO-{stage}"
            + (" + offload optimizer" if offload_optimizer else "")
            + (" + offload params" if offload_param else "")
        )
        memory = zero_memory_per_gpu(parameters, gpus, stage, offload_optimizer, offload_param)
        rows.append(
            {
                "setup": name,
                "partitions": ZERO_STAGES[stage],
                "GB per GPU": memory["gpu_GB"],
                "offloaded GB per GPU": memory["cpu_GB_per_gpu"],
            }
        )
    return rows


# --- DeepSpeed ZeRO, run: the op it compiles, and the bytes each rank holds --------------------


def build_deepspeed_ops() -> float:
    """Compile (once per environment, cached under ``~/.cache/torch_extensions``) the shared-memory communication
    op that DeepSpeed builds with the system C++ compiler and ninja the first time it runs on a
    CPU (``DS_ACCELERATOR=cpu``); return the seconds it took (well under one when cached).
    ``python -m course_lib assets build`` calls it, so a chapter never pays the build."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    start = time.perf_counter()
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
    return time.perf_counter() - start


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one buffer count once;
    ``None`` and empty tensors count zero)."""
    storages = {}
    for tensor in tensors:
        if tensor is not None and tensor.numel() > 0:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


# Where DeepSpeed's ZeRO optimizers keep this rank's gradient partitions and fp32 master weights.
_GRADIENT_BUFFERS = ("grads_in_partition", "grad_partitions_flat_buffer")
_MASTER_WEIGHTS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")


def zero_rank_bytes(model, zero_optimizer) -> dict[str, int]:
    """Bytes of model states this process holds under a DeepSpeed ZeRO optimizer, or under a
    plain torch optimizer: ``parameters`` (the whole weights, or only this rank's partition
    ``ds_tensor`` at stage 3), ``gradients`` (``.grad`` fields plus ZeRO's gradient partitions)
    and ``optimizer`` (Adam's moments plus ZeRO's fp32 master copy of this rank's partition)."""
    import torch

    params = list(model.parameters())
    weights = [getattr(p, "ds_tensor", p) for p in params]
    masters = []
    for name in _MASTER_WEIGHTS:
        masters += list(getattr(zero_optimizer, name, None) or [])
    grads = [p.grad for p in params] + [m.grad for m in masters]
    grads += [getattr(zero_optimizer, name, None) for name in _GRADIENT_BUFFERS]
    for partition in (getattr(zero_optimizer, "averaged_gradients", None) or {}).values():
        grads += partition if isinstance(partition, list) else [partition]
    inner = getattr(zero_optimizer, "optimizer", zero_optimizer)
    moments = [
        value
        for state in inner.state.values()
        for value in state.values()
        if torch.is_tensor(value) and value.dim() > 0
    ]
    return {
        "parameters": storage_bytes(weights),
        "gradients": storage_bytes(grads),
        "optimizer": storage_bytes(masters + moments),
    }


def zero_bytes_callback():
    """A ``TrainerCallback`` that measures :func:`zero_rank_bytes` inside the run: its
    ``measured`` dict holds the parameter and optimizer bytes just before the last optimizer step
    and, for gradients, the most held at any moment of the backward passes or at the step (ZeRO-1
    holds every gradient until the step, ZeRO-2 and 3 reduce them to their partitions as the
    backward pass produces them)."""
    from transformers import TrainerCallback

    class ZeroBytes(TrainerCallback):
        def __init__(self):
            self.measured: dict[str, int] = {}

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            # Trainer hands callbacks accelerate's wrapper; DeepSpeed's ZeRO optimizer is inside.
            zero = getattr(optimizer, "optimizer", optimizer)
            params, step = list(model.parameters()), zero.step
            peak = {"gradients": 0}

            def after_gradient(_):
                held = zero_rank_bytes(model, zero)["gradients"]
                peak["gradients"] = max(peak["gradients"], held)

            def measured_step(*args, **kwargs):
                self.measured = zero_rank_bytes(model, zero)
                self.measured["gradients"] = max(self.measured["gradients"], peak["gradients"])
                peak["gradients"] = 0
                return step(*args, **kwargs)

            for param in params:
                if param.requires_grad:
                    param.register_post_accumulate_grad_hook(after_gradient)
            zero.step = measured_step

    return ZeroBytes()


# --- DeepSpeed config: checked before a launch -------------------------------------------------

_COUNT = {"oneOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]}
_SWITCH = {"type": "object", "properties": {"enabled": {"enum": [True, False, "auto"]}}}
_OFFLOAD = {
    "type": "object",
    "required": ["device"],
    "properties": {"device": {"enum": ["cpu", "nvme", "none"]}},
}
_TYPED = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
_ZERO_KEYS = (
    "overlap_comm",
    "contiguous_gradients",
    "reduce_scatter",
    "reduce_bucket_size",
    "allgather_partitions",
    "allgather_bucket_size",
    "round_robin_gradients",
    "sub_group_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
    "stage3_max_live_parameters",
    "stage3_max_reuse_distance",
    "stage3_gather_16bit_weights_on_model_save",
    "ignore_unused_parameters",
)
# The part of DeepSpeed's config format the course uses (https://www.deepspeed.ai/docs/config-json/).
DEEPSPEED_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "train_batch_size": _COUNT,
        "train_micro_batch_size_per_gpu": _COUNT,
        "gradient_accumulation_steps": _COUNT,
        "gradient_clipping": {"oneOf": [{"type": "number", "minimum": 0}, {"const": "auto"}]},
        "optimizer": _TYPED,
        "scheduler": _TYPED,
        "fp16": _SWITCH,
        "bf16": _SWITCH,
        "steps_per_print": {"type": "integer"},
        "wall_clock_breakdown": {"type": "boolean"},
        "zero_allow_untested_optimizer": {"type": "boolean"},
        "zero_optimization": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "stage": {"enum": [0, 1, 2, 3]},
                "offload_optimizer": _OFFLOAD,
                "offload_param": _OFFLOAD,
                **{key: {} for key in _ZERO_KEYS},
            },
        },
    },
}
# DeepSpeed key -> the TrainingArguments field it must equal unless it is "auto" (Trainer checks).
_MATCHES = {
    "train_micro_batch_size_per_gpu": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "max_grad_norm",
    "optimizer.params.lr": "learning_rate",
    "optimizer.params.weight_decay": "weight_decay",
    "bf16.enabled": "bf16",
    "fp16.enabled": "fp16",
}


def _lookup(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def validate_deepspeed_config(
    config: dict[str, Any] | str | Path, arguments: dict[str, Any] | None = None
) -> list[str]:
    """Problems with a DeepSpeed config (a dict, or the path of its JSON file); an empty list when
    it is valid.

    :data:`DEEPSPEED_SCHEMA` checks the structure (known keys, ZeRO stage 0-3, offload devices,
    positive or ``"auto"`` batch sizes) with ``jsonschema``; then the rules a schema does not say
    well: parameters are offloaded only at stage 3, not both fp16 and bf16, and, given the
    ``TrainingArguments`` keyword arguments, every value that is not ``"auto"`` equals the matching
    argument (``Trainer`` refuses to start on a mismatch).
    """
    from jsonschema import Draft202012Validator

    if not isinstance(config, dict):
        try:
            config = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            return [f"{Path(config).name} cannot be read as JSON: {error}"]

    validator = Draft202012Validator(DEEPSPEED_SCHEMA)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(part) for part in error.absolute_path)
        problems.append(f"{where}: {error.message}" if where else error.message)
    if "train_batch_size" not in config and "train_micro_batch_size_per_gpu" not in config:
        problems.append("set train_micro_batch_size_per_gpu or train_batch_size (or 'auto')")
    stage = _lookup(config, "zero_optimization.stage") or 0
    if _lookup(config, "zero_optimization.offload_param.device") in ("cpu", "nvme") and stage != 3:
        problems.append(f"zero_optimization.offload_param needs stage 3 (stage is {stage})")
    if _lookup(config, "fp16.enabled") is True and _lookup(config, "bf16.enabled") is True:
        problems.append("fp16 and bf16 are both enabled; pick one")
    for dotted, argument in _MATCHES.items() if arguments is not None else ():
        value, wanted = _lookup(config, dotted), arguments.get(argument)
        if value not in (None, "auto") and wanted is not None and value != wanted:
            problems.append(
                f"{dotted}={value!r} but TrainingArguments has {argument}={wanted!r}; "
                "use 'auto' to let Trainer fill it"
            )
    return problems

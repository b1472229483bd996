"""Data-parallel training on several processes: one script, launched by ``accelerate launch`` or
``torchrun``, plus the arithmetic of DeepSpeed ZeRO.

The same function :func:`train` runs in one process (in a notebook) or in every process of a launch::

    python -m accelerate.commands.launch --cpu --num_processes 2 -m course_lib.distributed --steps 8
    python -m torch.distributed.run --nproc_per_node 2 -m course_lib.distributed --steps 8

Each process holds a full copy of the model and sees its own share of every global batch;
``Accelerator.prepare`` wraps the model in ``DistributedDataParallel`` (gloo on CPUs, NCCL on GPUs),
which averages the gradients across processes before every optimizer step. With the same global batch
(per-device batch x processes x accumulation steps), one process with gradient accumulation and two
processes without it take the same optimizer steps: :func:`run_launched` and :func:`train` show it,
:func:`ddp_gradients` checks it on one gradient.

:func:`zero_memory_per_gpu` is the memory model of the ZeRO paper (Rajbhandari et al., 2020), for
reading DeepSpeed configs without GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from .env import free_port
from .profiles import CourseError

LAUNCHERS = ("accelerate", "torchrun")


# ---------------------------------------------------------------------------------------------
# The training script
# ---------------------------------------------------------------------------------------------
def train(steps: int = 8, per_device_batch_size: int = 8, grad_accum: int = 1, lr: float = 3e-3,
          seed: int = 0, held_out: int = 64, progress: bool = False) -> dict[str, Any]:
    """Fine-tune the course LM on the chapter 12 task with ``accelerate``; works in 1 or N processes.

    The data are the first ``steps x global batch`` examples of a seeded shuffle, read in order, so
    every run with the same global batch sees the same examples in the same optimizer steps. Returns
    (on every process) the loss of each optimizer step averaged over all processes, the timings,
    and the held-out answer loss after training.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from .models import load_model, load_tokenizer
    from .peft_methods import answer_metrics, collate, task_examples

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=grad_accum)
    set_seed(seed)
    world = accelerator.num_processes
    global_batch = per_device_batch_size * grad_accum * world
    tokenizer = load_tokenizer("causal-lm")
    examples = task_examples(tokenizer, "train", limit=steps * global_batch, seed=seed)
    if len(examples) < steps * global_batch:
        raise CourseError(f"Only {len(examples)} examples for {steps} steps of {global_batch}: use fewer steps.")
    loader = DataLoader(examples, batch_size=per_device_batch_size, shuffle=False,
                        collate_fn=partial(collate, pad_token_id=tokenizer.pad_token_id))
    model = load_model("causal-lm").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    losses, micro_losses = [], []
    start = time.perf_counter()
    for batch in tqdm(loader, desc=f"{world} process(es)", disable=not (progress and accelerator.is_main_process)):
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)  # divides by grad_accum; DDP averages over processes on sync
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()  # a no-op until the last micro-batch of the accumulation
            optimizer.zero_grad()
        micro_losses.append(accelerator.gather(loss.detach()).mean().item())
        if accelerator.sync_gradients:
            losses.append(sum(micro_losses) / len(micro_losses))
            micro_losses = []
    seconds = time.perf_counter() - start
    accelerator.wait_for_everyone()
    held_out_loss = None
    if accelerator.is_main_process and held_out:
        evaluation = task_examples(tokenizer, "validation", limit=held_out, seed=seed)
        held_out_loss = answer_metrics(accelerator.unwrap_model(model), evaluation)["loss"]
    return {"processes": world, "distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "backend": str(getattr(accelerator.state, "backend", None)),
            "per_device_batch_size": per_device_batch_size, "grad_accum": grad_accum,
            "global_batch": global_batch, "optimizer_steps": len(losses), "losses": losses,
            "train_seconds": round(seconds, 2), "held_out_loss": held_out_loss,
            "model_class": type(model).__name__}


def main(argv: list[str] | None = None) -> int:
    """Command line of the training script; the main process writes the result JSON to ``--out``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.distributed")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--per-device-batch-size", type=int, default=8)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--held-out", type=int, default=64)
    parser.add_argument("--out", default=None, help="JSON file for the results (main process only)")
    args = parser.parse_args(argv)
    result = train(args.steps, args.per_device_batch_size, args.grad_accum, args.lr, args.seed, args.held_out)
    if int(os.environ.get("RANK", "0")) == 0:
        text = json.dumps(result, indent=1)
        if args.out:
            Path(args.out).write_text(text)
        else:
            print(text)
    return 0


# ---------------------------------------------------------------------------------------------
# Launching it
# ---------------------------------------------------------------------------------------------
def launch_command(script_args: list[str], processes: int = 2, launcher: str = "accelerate",
                   port: int | None = None) -> list[str]:
    """The command that starts ``processes`` copies of the training script on this machine."""
    if launcher not in LAUNCHERS:
        raise CourseError(f"Unknown launcher {launcher!r}; use one of {LAUNCHERS}.")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}.")
    port = port or free_port()
    if launcher == "accelerate":
        head = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port)]
        head.insert(3, "--multi_gpu")  # the torchrun-based launcher; on a CPU the script picks gloo
    else:
        head = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_addr", "127.0.0.1", "--master_port", str(port)]
    return head + ["-m", "course_lib.distributed", *script_args]


def run_launched(processes: int = 2, launcher: str = "accelerate", timeout: float = 240, steps: int = 8,
                 per_device_batch_size: int = 8, grad_accum: int = 1, lr: float = 3e-3, seed: int = 0,
                 held_out: int = 64) -> dict[str, Any]:
    """Launch :func:`main` in ``processes`` processes (a subprocess with a timeout) and return the
    main process's result, plus the command line and the wall time including start-up."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        script_args = ["--steps", str(steps), "--per-device-batch-size", str(per_device_batch_size),
                       "--grad-accum", str(grad_accum), "--lr", str(lr), "--seed", str(seed),
                       "--held-out", str(held_out), "--out", str(out)]
        command = launch_command(script_args, processes, launcher)
        # One thread per process: the processes already share the cores between them.
        env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        start = time.perf_counter()
        try:
            finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise CourseError(f"The {launcher} launch did not finish within {timeout:.0f} s; "
                              "raise timeout= or lower steps=.") from None
        if finished.returncode != 0 or not out.is_file():
            raise CourseError(f"The {launcher} launch failed (exit {finished.returncode}):\n"
                              + finished.stderr[-2500:])
        result = json.loads(out.read_text())
    shown = [Path(command[0]).name] + command[1:]
    result["command"] = " ".join(shown[:shown.index("--steps")] + ["..."])
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------------------
# DDP averages gradients: checked on one step
# ---------------------------------------------------------------------------------------------
def _gradient_model(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(config)


def _batch(size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (size, 16), generator=torch.Generator().manual_seed(seed + 1))


def _ddp_worker(rank: int, world_size: int, port: int, folder: str, batch_size: int, seed: int) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model = DistributedDataParallel(_gradient_model(seed))
        share = _batch(batch_size, seed).chunk(world_size)[rank]  # this process's part of the batch
        model(input_ids=share, labels=share).loss.backward()     # DDP all-reduces (averages) the grads
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, Path(folder) / "grads.pt")
    finally:
        dist.destroy_process_group()


def single_process_gradients(batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients of the mean loss over the whole batch, in one process."""
    model = _gradient_model(seed)
    batch = _batch(batch_size, seed)
    model(input_ids=batch, labels=batch).loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def ddp_gradients(world_size: int = 2, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gradients after one DDP backward pass in ``world_size`` processes (gloo, this machine), each
    process seeing ``batch_size / world_size`` rows of the same batch."""
    import torch.multiprocessing as mp

    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must split evenly over {world_size} processes.")
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(world_size, free_port(), folder, batch_size, seed), nprocs=world_size)
        return torch.load(Path(folder) / "grads.pt")


def max_gradient_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two gradient dicts with the same keys."""
    if set(a) != set(b):
        raise ValueError("The gradient dicts name different parameters.")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------
# DeepSpeed ZeRO: what each stage partitions, and the memory it leaves per GPU
# ---------------------------------------------------------------------------------------------
ZERO_STAGES = {
    0: "nothing: plain data parallelism, every GPU holds everything",
    1: "optimizer states (Adam's fp32 master weights, momentum and variance)",
    2: "optimizer states and gradients",
    3: "optimizer states, gradients and the parameters themselves",
}


def zero_memory_per_gpu(parameters: float, gpus: int, stage: int, offload_optimizer: bool = False,
                        offload_param: bool = False) -> dict[str, float]:
    """GB per GPU for model states in mixed-precision Adam training, as in the ZeRO paper: 2 bytes of
    fp16/bf16 parameters, 2 of gradients and 12 of optimizer states (fp32 copy, momentum, variance)
    per parameter; stage 1 splits the optimizer states over the GPUs, stage 2 also the gradients,
    stage 3 also the parameters. Offloading moves the optimizer states (and with stage 3 the
    parameters) to CPU memory. Activations and buffers come on top."""
    if stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be one of {sorted(ZERO_STAGES)}, got {stage}.")
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}.")
    if offload_param and stage != 3:
        raise ValueError("offload_param needs ZeRO stage 3 (only stage 3 partitions the parameters).")
    if offload_optimizer and stage == 0:
        raise ValueError("offload_optimizer needs ZeRO stage 1, 2 or 3.")
    params, grads, optimizer = 2.0 * parameters, 2.0 * parameters, 12.0 * parameters
    optimizer /= gpus if stage >= 1 else 1
    grads /= gpus if stage >= 2 else 1
    params /= gpus if stage >= 3 else 1
    cpu = 0.0
    if offload_optimizer:
        cpu, optimizer = cpu + optimizer, 0.0
    if offload_param:
        cpu, params = cpu + params, 0.0
    return {"gpu_GB": round((params + grads + optimizer) / 1e9, 2), "cpu_GB_per_gpu": round(cpu / 1e9, 2),
            "parameters_GB": round(params / 1e9, 2), "gradients_GB": round(grads / 1e9, 2),
            "optimizer_GB": round(optimizer / 1e9, 2)}


def zero_table(parameters: float, gpus: int) -> list[dict[str, Any]]:
    """:func:`zero_memory_per_gpu` for stages 0-3 and the two offload options, one row each."""
    rows = []
    for stage, offload_optimizer, offload_param in ((0, False, False), (1, False, False), (2, False, False),
                                                    (2, True, False), (3, False, False), (3, True, True)):
        name = f"ZeRO-{stage}" + (" + offload optimizer" if offload_optimizer else "") + (
            " + offload params" if offload_param else "")
        rows.append({"setup": name, "partitions": ZERO_STAGES[stage],
                     **zero_memory_per_gpu(parameters, gpus, stage, offload_optimizer, offload_param)})
    return rows


if __name__ == "__main__":
    sys.exit(main())

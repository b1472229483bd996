"""DeepSpeed ZeRO, run for real on the CPU: stages 1-3 in two processes train exactly like one
process, and the bytes each process holds follow the ZeRO arithmetic (chapter 14)."""

import json
import os
import sys

import pytest
from conftest import tiny_llama_config

from course_lib import distributed as dist

pytest.importorskip("deepspeed")

# Trains a tiny Llama with Trainer under each ZeRO config in turn, in one process group, and
# writes the losses and the bytes measured by zero_bytes_callback (main process only).
SCRIPT = """\
import json, sys
from pathlib import Path

import torch
from accelerate.state import AcceleratorState, PartialState
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PrinterCallback, Trainer, TrainingArguments
from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from course_lib.distributed import zero_bytes_callback

config, out, stages = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
rows = torch.randint(0, config["vocab_size"], (64, 16), generator=torch.Generator().manual_seed(0))
data = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist()})


def train(stage, batch_size):
    deepspeed = None
    if stage is not None:
        deepspeed = {
            "zero_optimization": {"stage": stage, "reduce_bucket_size": 64,
                                  "stage3_param_persistence_threshold": 0},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "train_batch_size": "auto",
            "zero_force_ds_cpu_optimizer": False,
        }
    args = TrainingArguments(
        "runs", deepspeed=deepspeed, use_cpu=True, per_device_train_batch_size=batch_size,
        max_steps=4, learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    memory = zero_bytes_callback()
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[memory])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {"losses": losses, "bytes": memory.measured,
            "parameters": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel()
                              for p in model.parameters()),
            "main": trainer.is_world_process_zero()}


runs = {}
for stage in stages:
    runs[str(stage)] = train(stage, 4 if stage is not None else 8)
    unset_hf_deepspeed_config()
    AcceleratorState._reset_state(True)
if runs[str(stages[0])]["main"]:
    Path(out).write_text(json.dumps(runs))
# gloo's threads outliving the interpreter can abort the process at exit (SIGABRT, "terminate
# called without an active exception"; pytorch/pytorch#190489): close the group first.
PartialState().destroy_process_group()
"""

# The gradient bound in test_zero_bytes_per_process_follow_the_arithmetic counts this 64 x 16
# embedding; untied, so the output layer is a tensor of its own.
CONFIG = tiny_llama_config(vocab_size=64, hidden_size=16, tie_word_embeddings=False)


def _run(tmp_path, stages, processes):
    script = tmp_path / "zero.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"result-{processes}.json"
    command = dist.launch_command(
        script, [json.dumps(CONFIG.to_dict()), str(out), json.dumps(stages)], processes, "torchrun"
    )
    import subprocess

    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert finished.returncode == 0 and out.is_file(), finished.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero")
    zero = _run(folder, [1, 2, 3], processes=2)
    single = _run(folder, [None], processes=1)["None"]
    return zero, single


def test_zero_stage_losses_match_the_single_process(runs):
    zero, single = runs
    assert len(single["losses"]) == 4 and single["losses"][-1] < single["losses"][0]
    for stage in ("1", "2", "3"):
        gap = max(abs(a - b) for a, b in zip(zero[stage]["losses"], single["losses"]))
        assert gap < 1e-4, (stage, zero[stage]["losses"], single["losses"])


def test_zero_bytes_per_process_follow_the_arithmetic(runs):
    zero, single = runs
    n = single["parameters"]
    assert single["bytes"] == {"parameters": 4 * n, "gradients": 4 * n, "optimizer": 8 * n}
    one, two, three = (zero[s]["bytes"] for s in ("1", "2", "3"))
    # weights: whole at stages 1 and 2, half at stage 3 (up to DeepSpeed's alignment padding)
    assert one["parameters"] == two["parameters"] == 4 * n
    assert abs(three["parameters"] - 2 * n) <= 64
    # optimizer: an fp32 copy + Adam's two moments of half the weights, at every stage
    for held in (one, two, three):
        assert abs(held["optimizer"] - 12 * n / 2) <= 3 * 64
    # gradients: ZeRO-1 holds them all before the step; 2 and 3 hold their half plus what waits in
    # a bucket or one tensor (the 64 x 16 embedding) not yet reduced
    assert one["gradients"] >= 4 * n
    largest = 4 * 64 * 16
    for held in (two, three):
        assert held["gradients"] < one["gradients"]
        assert held["gradients"] <= 4 * n / 2 + largest + 4 * 64 * 2
    expected = dist.zero_model_state_bytes(n, 2, 3, weight_bytes=4)
    assert expected == {"parameters": 2 * n, "gradients": 2 * n, "optimizer": 6 * n}


def test_zero_rank_bytes_counts_shared_storage_once():
    import torch

    buffer = torch.zeros(10)
    assert dist.storage_bytes([buffer[:5], buffer[5:], None, torch.zeros(0)]) == 40
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    held = dist.zero_rank_bytes(model, optimizer)
    assert held == {"parameters": 40, "gradients": 40, "optimizer": 80}


def test_build_deepspeed_ops_loads_the_cached_op():
    """`assets build` compiled the op (minutes), so here it only loads from the cache, and what it
    loads has the entry points DeepSpeed's CPU backend calls."""
    seconds = dist.build_deepspeed_ops()
    assert seconds < 30, f"{seconds:.0f} s: compiled now, not loaded from the cache assets build fills"
    assert sys.modules.get("deepspeed") is not None
    from deepspeed.accelerator import get_accelerator

    op = get_accelerator().create_op_builder("ShareMemCommBuilder").load(verbose=False)
    assert callable(op.initialize) and callable(op.vector_kernel_level)  # what deepspeed.comm calls

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama_config

from course_lib import distributed as dist
from course_lib.env import free_port
from course_lib.profiles import CourseError

# --- DDP averages gradients: checked on one step (test-only helpers) -----------------------------


def _gradient_model(seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(hidden_size=32, intermediate_size=64))


def _batch(size: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (size, 16), generator=torch.Generator().manual_seed(seed + 1))


def _ddp_worker(rank: int, world_size: int, port: int, folder: str, batch_size: int, seed: int) -> None:
    import torch.distributed
    from torch.nn.parallel import DistributedDataParallel

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        model = DistributedDataParallel(_gradient_model(seed))
        share = _batch(batch_size, seed).chunk(world_size)[rank]  # this process's part of the batch
        model(input_ids=share, labels=share).loss.backward()  # DDP all-reduces (averages) the grads
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, Path(folder) / "grads.pt")
    finally:
        torch.distributed.destroy_process_group()


def _single_process_gradients(batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    model = _gradient_model(seed)
    batch = _batch(batch_size, seed)
    model(input_ids=batch, labels=batch).loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert set(a) == set(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_ddp_averaged_gradient_equals_the_single_process_gradient():
    import torch.multiprocessing as mp

    single = _single_process_gradients(batch_size=8, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_ddp_worker, args=(2, free_port(), folder, 8, 0), nprocs=2)
        averaged = torch.load(Path(folder) / "grads.pt")
    assert _max_difference(single, averaged) < 1e-6
    # the comparison can tell gradients apart: another batch gives clearly different ones
    assert _max_difference(single, _single_process_gradients(batch_size=8, seed=1)) > 1e-3


# --- launching a script --------------------------------------------------------------------------

SCRIPT = """\
import argparse, json, os
from pathlib import Path
parser = argparse.ArgumentParser()
parser.add_argument("--value", type=int)
parser.add_argument("--out")
args = parser.parse_args()
if os.environ.get("RANK", "0") == "0":
    Path(args.out).write_text(json.dumps({"value": args.value,
                                          "world": int(os.environ["WORLD_SIZE"])}))
"""


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_run_launched_starts_the_processes_and_reads_the_result(tmp_path, launcher):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    # torchrun with its multi-node arguments spelt out, for one node (as chapter 14's FSDP run)
    nodes = ["--nnodes", "1", "--node-rank", "0", "--master-addr", "127.0.0.1"]
    nodes += ["--master-port", str(free_port())]
    result = dist.run_launched(
        script,
        ["--value", "7"],
        processes=2,
        launcher=launcher,
        timeout=280,
        launcher_args=nodes if launcher == "torchrun" else (),
    )
    assert result["value"] == 7 and result["world"] == 2
    assert result["command"].startswith("python -m ") and "--out" not in result["command"]
    assert result["wall_seconds"] > 0


def test_launch_commands():
    accelerate = dist.launch_command(
        "train.py", ["--steps", "2"], processes=2, launcher="accelerate", port=29555
    )
    assert accelerate[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--num_processes" in accelerate and "29555" in accelerate
    torchrun = dist.launch_command("train.py", ["--steps", "2"], processes=4, launcher="torchrun", port=29556)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"] and "4" in torchrun
    assert torchrun[-3:] == ["train.py", "--steps", "2"]
    # launcher arguments go before the script and replace the defaults they name
    nodes = ["--nnodes", "1", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", "29557"]
    multi_node = dist.launch_command("train.py", ["--steps", "2"], launcher="torchrun", launcher_args=nodes)
    assert multi_node[3:] == ["--nproc-per-node", "2", *nodes, "train.py", "--steps", "2"]
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:29558"]
    rdzv = dist.launch_command("train.py", [], launcher="torchrun", launcher_args=rendezvous)
    assert "--master-port" not in rdzv and rdzv[-5:-1] == rendezvous
    machines = dist.launch_command("train.py", [], port=29559, launcher_args=["--num_machines=1"])
    assert "--num_machines" not in machines and "29559" in machines
    with pytest.raises(CourseError, match="launcher"):
        dist.launch_command("train.py", [], launcher="mpirun")
    with pytest.raises(ValueError, match="processes"):
        dist.launch_command("train.py", [], processes=0)


def test_a_failed_launch_says_why(monkeypatch):
    monkeypatch.setattr(
        dist, "launch_command", lambda *a, **k: [sys.executable, "-c", "raise SystemExit('boom')"]
    )
    with pytest.raises(CourseError, match="boom"):
        dist.run_launched("train.py", processes=2)


# --- ZeRO memory ---------------------------------------------------------------------------------


def test_zero_memory_matches_the_paper():
    # ZeRO paper, Figure 1: 7.5B parameters, 64 GPUs, mixed-precision Adam.
    gb = [dist.zero_memory_per_gpu(7.5e9, 64, stage)["gpu_GB"] for stage in (0, 1, 2, 3)]
    assert gb == [120.0, 31.41, 16.64, 1.88]
    offloaded = dist.zero_memory_per_gpu(7.5e9, 64, 3, offload_optimizer=True, offload_param=True)
    assert offloaded["gpu_GB"] == offloaded["gradients_GB"] and offloaded["cpu_GB_per_gpu"] > 0
    with pytest.raises(ValueError, match="stage 3"):
        dist.zero_memory_per_gpu(1e9, 8, 2, offload_param=True)
    with pytest.raises(ValueError, match="stage"):
        dist.zero_memory_per_gpu(1e9, 8, 4)
    assert [r["setup"] for r in dist.zero_table(1e9, 8)][0] == "ZeRO-0"


# --- DeepSpeed configs ---------------------------------------------------------------------------


def _zero_config(stage: int) -> dict:
    zero = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}},
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_valid_deepspeed_configs_pass(stage):
    arguments = {"per_device_train_batch_size": 8, "learning_rate": 1e-4, "bf16": True}
    assert dist.validate_deepspeed_config(_zero_config(stage), arguments) == []


def test_deepspeed_validation_finds_each_problem():
    arguments = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "bf16": False}
    config = _zero_config(2)
    config.update(
        {
            "train_micro_batch_size_per_gpu": 16,
            "fp16": {"enabled": True},
            "bf16": {"enabled": True},
            "gradient_acumulation_steps": 2,
        }
    )
    config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    problems = " | ".join(dist.validate_deepspeed_config(config, arguments))
    assert "'gradient_acumulation_steps' was unexpected" in problems
    assert "offload_param needs stage 3" in problems
    assert "fp16 and bf16 are both enabled" in problems
    assert (
        "train_micro_batch_size_per_gpu=16 but TrainingArguments has per_device_train_batch_size=8"
        in problems
    )
    assert "bf16.enabled=True but TrainingArguments has bf16=False" in problems
    stage4 = " ".join(
        dist.validate_deepspeed_config({"train_batch_size": 8, "zero_optimization": {"stage": 4}})
    )
    assert "zero_optimization.stage: 4 is not one of [0, 1, 2, 3]" in stage4
    assert "train_batch_size" in " ".join(dist.validate_deepspeed_config({"train_batch_size": 0}))
    assert "set train_micro_batch_size_per_gpu" in " ".join(dist.validate_deepspeed_config({}))
    bad_device = _zero_config(2)
    bad_device["zero_optimization"]["offload_optimizer"] = {"device": "gpu"}
    assert "offload_optimizer.device" in " ".join(dist.validate_deepspeed_config(bad_device))
    assert "'type' is a required property" in " ".join(
        dist.validate_deepspeed_config({"train_batch_size": 8, "optimizer": {"params": {}}})
    )


def test_checked_deepspeed_config_is_read_by_accelerate(tmp_path):
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    path = tmp_path / "ds.json"
    path.write_text(json.dumps(_zero_config(3)))
    parsed = HfDeepSpeedConfig(str(path))
    assert parsed.is_zero3() and parsed.is_offload()
    assert dist.validate_deepspeed_config(path) == []  # a file is read like a dict
    (tmp_path / "bad.json").write_text("{not json")
    assert "cannot be read as JSON" in dist.validate_deepspeed_config(tmp_path / "bad.json")[0]
    assert "cannot be read as JSON" in dist.validate_deepspeed_config(tmp_path / "missing.json")[0]


# --- exercise checks -----------------------------------------------------------------------------

SFT_YAML = """\
model_name_or_path: course-lm
dataset_name: data/module
dataset_test_split: validation
use_peft: true
lora_r: 8
lora_alpha: 16
lora_target_modules: all-linear
max_steps: 40
learning_rate: 3.0e-3
bf16: false
activation_checkpointing: false
report_to: none
output_dir: runs/module-lora
"""


def test_chapter_14_exercise_checks():
    import yaml

    from course_lib.exercises import ch14

    assert ch14.check_global_batch(128, 8, 4, 4).passed
    assert "accumulates" in ch14.check_global_batch(32, 8, 4, 4).message
    config = yaml.safe_load(SFT_YAML)
    config |= {"load_in_4bit": True, "lora_r": 16, "dataset_name": "data/signature", "max_steps": 30}
    assert ch14.check_qlora_config(config).passed
    assert "lora_r is 8" in ch14.check_qlora_config(config | {"lora_r": 8}).message
    assert "load_in_4bit is off" in ch14.check_qlora_config(config | {"load_in_4bit": False}).message
    assert "Unknown arguments" in ch14.check_qlora_config(config | {"lr": 1e-3}).message
    assert "invalid float value" in ch14.check_qlora_config(SFT_YAML.replace("3.0e-3", "fast")).message

    def zero_gb(parameters, gpus, stage):
        weights, gradients, optimizer = 2 * parameters, 2 * parameters, 12 * parameters
        optimizer /= gpus if stage >= 1 else 1
        gradients /= gpus if stage >= 2 else 1
        weights /= gpus if stage >= 3 else 1
        return (weights + gradients + optimizer) / 1e9

    assert ch14.check_zero_memory(zero_gb).passed
    assert "stage 2" in ch14.check_zero_memory(lambda p, g, s: zero_gb(p, g, min(s, 1))).message

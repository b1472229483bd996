import sys

import pytest

from course_lib import distributed as dist
from course_lib.profiles import CourseError


def test_ddp_averaged_gradient_equals_the_single_process_gradient():
    single = dist.single_process_gradients(batch_size=8, seed=0)
    averaged = dist.ddp_gradients(world_size=2, batch_size=8, seed=0)
    assert dist.max_gradient_difference(single, averaged) < 1e-6
    # the comparison can tell gradients apart: another batch gives clearly different ones
    assert dist.max_gradient_difference(single, dist.single_process_gradients(batch_size=8, seed=1)) > 1e-3
    with pytest.raises(ValueError, match="split evenly"):
        dist.ddp_gradients(world_size=3, batch_size=8)


def test_two_processes_take_the_same_steps_as_one_with_accumulation():
    launched = dist.run_launched(processes=2, launcher="accelerate", steps=3, per_device_batch_size=4,
                                 held_out=8, timeout=280)
    assert launched["processes"] == 2 and launched["distributed_type"] == "MULTI_CPU"
    assert launched["backend"] == "gloo" and launched["global_batch"] == 8
    local = dist.train(steps=3, per_device_batch_size=4, grad_accum=2, held_out=8)
    assert local["processes"] == 1 and local["global_batch"] == 8
    assert max(abs(a - b) for a, b in zip(local["losses"], launched["losses"])) < 1e-4
    assert abs(local["held_out_loss"] - launched["held_out_loss"]) < 1e-4


def test_launch_commands():
    accelerate = dist.launch_command(["--steps", "2"], processes=2, launcher="accelerate", port=29555)
    assert accelerate[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "--num_processes" in accelerate and "29555" in accelerate
    torchrun = dist.launch_command(["--steps", "2"], processes=4, launcher="torchrun", port=29556)
    assert torchrun[1:3] == ["-m", "torch.distributed.run"] and "4" in torchrun
    assert torchrun[-4:] == ["-m", "course_lib.distributed", "--steps", "2"]
    with pytest.raises(CourseError, match="launcher"):
        dist.launch_command([], launcher="mpirun")


def test_a_failed_launch_says_why(monkeypatch):
    monkeypatch.setattr(dist, "launch_command", lambda *a, **k: [sys.executable, "-c", "raise SystemExit('boom')"])
    with pytest.raises(CourseError, match="boom"):
        dist.run_launched(processes=2)


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


def test_chapter_14_exercise_checks():
    import yaml

    from course_lib import train_config
    from course_lib.exercises import ch14

    assert ch14.check_global_batch(128, 8, 4, 4).passed
    assert "accumulates" in ch14.check_global_batch(32, 8, 4, 4).message
    config = yaml.safe_load(train_config.EXAMPLE_CONFIG)
    config["method"] |= {"name": "qlora", "r": 16}
    config["data"]["task"] = "signature"
    config["training"]["max_steps"] = 30
    assert ch14.check_qlora_config(config).passed
    config["method"]["r"] = 8
    assert "method.r" in ch14.check_qlora_config(config).message
    config["method"]["r"] = 0
    assert "must be >= 1" in ch14.check_qlora_config(config).message

    def zero_gb(parameters, gpus, stage):
        weights, gradients, optimizer = 2 * parameters, 2 * parameters, 12 * parameters
        optimizer /= gpus if stage >= 1 else 1
        gradients /= gpus if stage >= 2 else 1
        weights /= gpus if stage >= 3 else 1
        return (weights + gradients + optimizer) / 1e9

    assert ch14.check_zero_memory(zero_gb).passed
    assert "stage 2" in ch14.check_zero_memory(lambda p, g, s: zero_gb(p, g, min(s, 1))).message

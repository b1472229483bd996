"""Regression test: QLoRA's gradients after an evaluation pass (issue 10).

bitsandbytes 0.50.2 repacks 4-bit weights for a bfloat16 inference kernel the first time a
``Linear4bit`` runs in ``eval()`` mode without grad on a CPU with AVX-512 BF16, and later training
passes then get no gradient through the frozen weights. :func:`course_lib.quantization.disable_cpu_repack`
(called by ``load_quantized``) prevents it. These tests compare QLoRA's LoRA gradients, after an
evaluation pass, with an fp32 reference whose linear weights are the dequantized 4-bit weights.
``tests/repro/qlora_cpu_repack.py`` is the same comparison without course_lib, for upstream.
On a CPU without AVX-512 BF16 nothing is repacked and the tests pass for that reason (printed).
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from course_lib import quantization as qz

TOLERANCE = 1e-5  # largest relative LoRA-gradient error; 0 with the fix, about 0.5-1.2 without it
_spec = importlib.util.spec_from_file_location(
    "qlora_cpu_repack", Path(__file__).parent / "repro" / "qlora_cpu_repack.py"
)
repro = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(repro)


@pytest.fixture(scope="module")
def folder():
    path = repro.tiny_llama_folder()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _say_why() -> None:
    if qz.cpu_repacks_4bit():
        print(
            "this CPU has AVX-512 BF16: bitsandbytes repacks 4-bit weights when evaluating, "
            "so these tests check the fix"
        )
    else:
        print(
            "this CPU has no AVX-512 BF16: bitsandbytes never repacks here, so these tests "
            "pass without exercising the fix"
        )


def _error_after_eval(folder, model) -> float:
    ids = repro.batch()
    reference = repro.dequantized_reference(folder, model)
    _, wanted = repro.lora_grads(reference, ids)
    repro.eval_pass(model, ids)
    _, grads = repro.lora_grads(model, ids)
    error = repro.max_relative_error(grads, wanted)
    print(f"largest relative LoRA-gradient error after an eval pass: {error:.2e}")
    return error


def test_qlora_gradients_after_an_eval_pass_match_the_dequantized_reference(folder):
    _say_why()
    base = qz.load_quantized(qz.quant_methods()["bnb NF4 + double quant"], source=folder)
    model = repro.qlora(base)
    assert _error_after_eval(folder, model) < TOLERANCE
    assert repro.packed_layers(model) == 0


def test_a_model_repacked_before_the_fix_is_converted_back(folder):
    _say_why()
    model = repro.qlora(repro.load_nf4(folder))  # plain from_pretrained: no fix yet
    repro.eval_pass(model, repro.batch())
    packed = repro.packed_layers(model)
    assert packed == (14 if qz.cpu_repacks_4bit() else 0)
    assert qz.disable_cpu_repack(model) == packed
    assert repro.packed_layers(model) == 0
    # The inverse rounds the block scales through bfloat16, so the reference is built after it.
    assert _error_after_eval(folder, model) < TOLERANCE


def test_disable_cpu_repack_ignores_models_without_4bit_layers():
    from torch import nn

    assert qz.disable_cpu_repack(nn.Sequential(nn.Linear(4, 4))) == 0


def test_load_quantized_switches_the_repack_off(folder):
    """The one place: every 4-bit model loaded through ``load_quantized`` (the ``train`` command's
    QLoRA method, the measurement table) comes with the repack off, on any CPU."""
    from bitsandbytes.nn import Linear4bit

    model = qz.load_quantized(qz.quant_methods()["bnb NF4 + double quant"], source=folder)
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    assert len(layers) == 14 and not any(m.support_avx512bf16_for_cpu for m in layers)

"""Quantized loading with bitsandbytes and torchao, measured: file size, perplexity, speed, QLoRA.

Every method is loaded through ``from_pretrained(..., quantization_config=...)``, saved with
``save_pretrained``, and loaded *again* from the saved folder. Each row of
:func:`quantization_table` reports what was measured, not what a method promises:

* the bytes of the saved folder (``get_memory_footprint()`` only adds up tensor storage, and
  torchao's quantized tensors are subclasses whose storage it does not see, so it reports fp32 sizes);
* held-out perplexity right after quantizing **and after the reload** (a checkpoint can load
  without an error and still be wrong: :func:`reload_matches` compares the two);
* forward-pass throughput in tokens per second on this machine.

bitsandbytes 0.50 runs its 8-bit and 4-bit layers on the CPU too (``device_map="cpu"``); GPU-only
rows are listed in :func:`quant_methods` and skipped, with a printed note, when CUDA is absent.
Chapter 13 writes the QLoRA recipe itself; :func:`disable_cpu_repack` works around a
bitsandbytes 0.50 CPU bug that gives QLoRA wrong gradients after any evaluation.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import folder_bytes
from .profiles import CourseError

RELOAD_TOLERANCE = 0.01  # relative perplexity change after a save/load round trip that counts as "same"


@dataclass(frozen=True)
class QuantMethod:
    """A way to load a model: the back end, bits per weight, the device it needs, and its config."""

    name: str
    backend: str
    weight_bits: int
    device: str
    make_config: Callable[[], Any] | None = None
    dtype: str = "float32"
    note: str = ""


def bnb_int8_config():
    """bitsandbytes LLM.int8: 8-bit weights, outlier features kept in higher precision."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def bnb_nf4_config(compute_dtype: torch.dtype = torch.float32):
    """bitsandbytes 4-bit NormalFloat with double quantization (the QLoRA recipe)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def torchao_int8_config():
    """torchao int8 weight-only quantization through transformers' ``TorchAoConfig``."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def torchao_int4_config(group_size: int = 32, cuda: bool = False):
    """torchao 4-bit weight-only quantization in groups of ``group_size`` input features.

    On CUDA: ``Int4WeightOnlyConfig`` (tinygemm kernels, packed 4-bit). On CPU:
    ``IntxWeightOnlyConfig(weight_dtype=torch.int4)``, which keeps each 4-bit value in a byte.
    """
    from transformers import TorchAoConfig

    if cuda:
        from torchao.quantization import Int4WeightOnlyConfig

        return TorchAoConfig(
            Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
        )
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return TorchAoConfig(IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size)))


def quant_methods() -> dict[str, QuantMethod]:
    """The methods the chapter measures, by name (CPU rows first, then the GPU-only ones)."""
    rows = [
        QuantMethod("fp32 (baseline)", "none", 32, "cpu"),
        QuantMethod("bf16", "none", 16, "cpu", dtype="bfloat16"),
        QuantMethod("bnb int8 (LLM.int8)", "bitsandbytes", 8, "cpu", bnb_int8_config),
        QuantMethod("bnb NF4 + double quant", "bitsandbytes", 4, "cpu", bnb_nf4_config),
        QuantMethod("torchao int8 weight-only", "torchao", 8, "cpu", torchao_int8_config),
        QuantMethod(
            "torchao int4 weight-only",
            "torchao",
            4,
            "cpu",
            torchao_int4_config,
            note="CPU layout stores each 4-bit value in a byte",
        ),
        QuantMethod(
            "bnb NF4, bf16 compute (GPU)",
            "bitsandbytes",
            4,
            "cuda",
            lambda: bnb_nf4_config(torch.bfloat16),
            dtype="bfloat16",
        ),
        QuantMethod(
            "torchao int4 tinygemm (GPU)",
            "torchao",
            4,
            "cuda",
            lambda: torchao_int4_config(cuda=True),
            dtype="bfloat16",
        ),
    ]
    return {m.name: m for m in rows}


def check_group_size(model: nn.Module, group_size: int) -> None:
    """Raise :class:`CourseError` naming the linear layers whose input size is not a multiple of
    ``group_size`` (grouped 4-bit quantization splits each weight row into groups of that size)."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    bad = sorted(
        {
            f"{name.split('.')[-1]} (in_features={module.in_features})"
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and module.in_features % group_size
        }
    )
    if bad:
        raise CourseError(
            f"group_size={group_size} does not divide the input size of: {', '.join(bad)}. "
            "Pick a group size that divides every hidden size (32 and 64 usually do)."
        )


def load_quantized(
    method: QuantMethod | str, source: str | None = None, role: str = "causal-lm", saved: bool = False
):
    """Load ``role`` (or the folder/repo ``source``) with ``method``'s quantization config.

    ``saved=True`` reloads a folder written by ``save_pretrained`` of a quantized model: its
    ``config.json`` already holds the quantization config, so none is passed again.
    """
    from transformers import AutoModelForCausalLM

    from .models import as_dtype, source_of
    from .profiles import resolve

    method = quant_methods()[method] if isinstance(method, str) else method
    if method.device == "cuda" and not torch.cuda.is_available():
        raise CourseError(f"{method.name} needs a CUDA GPU; none is visible here.")
    source = source or source_of(resolve(role))
    kwargs: dict[str, Any] = {"dtype": as_dtype(method.dtype), "use_safetensors": True}
    if method.make_config is not None:
        kwargs["device_map"] = method.device
        if not saved:
            kwargs["quantization_config"] = method.make_config()
    with quiet_bnb_casts():
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if method.make_config is None:
        model = model.to(method.device)
    disable_cpu_repack(model)  # every 4-bit model the course loads may be trained later
    return model.eval()


def disable_cpu_repack(model: nn.Module) -> int:
    """Keep bitsandbytes' 4-bit layers in the layout that trains correctly; returns how many
    layers had already been repacked and were converted back.

    bitsandbytes 0.50.2, on a CPU with AVX-512 BF16 (``lscpu`` lists ``avx512_bf16``): the first
    forward pass of a ``Linear4bit`` in ``eval()`` mode with an input that does not require grad
    (any evaluation under ``torch.no_grad()``) repacks its weight for a bfloat16 inference kernel
    (``quant_state.packing_format_for_cpu``), and nothing packs it back when training resumes.
    Every later forward pass, training included, then runs ``bitsandbytes::gemv_4bit``, which has
    no backward: no gradient flows through the frozen 4-bit weights, so LoRA adapters before the
    last layers get wrong gradients and QLoRA's loss can rise (``tests/repro/`` shows it).

    The fix switches the repack off on every ``Linear4bit`` (exact: call it right after loading,
    before any evaluation). A layer already repacked is converted back with bitsandbytes' own
    inverse, whose block scales were rounded to bfloat16 on the way: close, not bit-exact.
    On other CPUs and on GPUs nothing is repacked and this changes nothing.
    """
    try:
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # no bitsandbytes, so no 4-bit layers
        return 0
    restored = 0
    for module in model.modules():
        if not isinstance(module, Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                weight.data, weight.quant_state
            )
            module.quant_state = weight.quant_state
            restored += 1
    return restored


def cpu_repacks_4bit() -> bool:
    """True when bitsandbytes would repack 4-bit weights on this CPU at evaluation time
    (AVX-512 BF16 present), the condition under which :func:`disable_cpu_repack` matters."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


@contextlib.contextmanager
def quiet_bnb_casts() -> Iterator[None]:
    """Hide bitsandbytes' per-call notice that 8-bit matmuls cast float32 inputs to float16 (it is
    logged once per layer per forward pass); every other bitsandbytes message still shows."""
    import logging

    class _DropCastNotice(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "will be cast from" not in record.getMessage()

    logger, notice = logging.getLogger("bitsandbytes.autograd._functions"), _DropCastNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def eval_blocks(tokenizer, n_blocks: int = 16, block_size: int = 128) -> torch.Tensor:
    """The first ``n_blocks`` held-out (validation) blocks of the corpus, for perplexity and speed."""
    from .assets.pretrain import pack_blocks
    from .evaluation import corpus_ids

    blocks = pack_blocks(corpus_ids(tokenizer, "validation"), block_size)[:n_blocks]
    if len(blocks) == 0:
        raise CourseError("No validation blocks: the corpus split is shorter than one block.")
    return blocks


@torch.no_grad()
def perplexity_and_speed(model, blocks: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Held-out perplexity over ``blocks`` (:func:`~course_lib.assets.pretrain.block_perplexity`)
    and the forward-pass throughput (tokens per second) of that same pass, after one warm-up batch."""
    from .assets.pretrain import block_perplexity

    model.eval()
    with quiet_bnb_casts():
        model(input_ids=blocks[:1].to(model.device))  # the first call pays one-off setup, not timed
        start = time.perf_counter()
        perplexity = block_perplexity(model, blocks, batch_size)
        seconds = time.perf_counter() - start
    return perplexity, blocks.numel() / seconds


def reload_matches(before: float, after: float, tolerance: float = RELOAD_TOLERANCE) -> bool:
    """True when perplexity after a save/load round trip is within ``tolerance`` (relative) of before."""
    return abs(after - before) <= tolerance * before


def measure(
    method: QuantMethod | str, blocks: torch.Tensor, role: str = "causal-lm", model: nn.Module | None = None
) -> dict[str, Any]:
    """Load with ``method``, measure, save, reload from disk, measure again: one table row.

    ``model``: one the caller already loaded with ``method``'s config (a page that wrote the
    ``from_pretrained`` call itself); it is measured as it is and ``load_s`` is None."""
    method = quant_methods()[method] if isinstance(method, str) else method
    load_s = None
    if model is None:
        start = time.perf_counter()
        model = load_quantized(method, role=role)
        load_s = round(time.perf_counter() - start, 2)
    disable_cpu_repack(model)  # the evaluation below must not repack a model that may train later
    perplexity, speed = perplexity_and_speed(model, blocks)
    footprint = model.get_memory_footprint()
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        saved = folder_bytes(folder)
        reloaded_perplexity, _ = perplexity_and_speed(
            load_quantized(method, source=folder, saved=True), blocks
        )
    return {
        "method": method.name,
        "backend": method.backend,
        "weight_bits": method.weight_bits,
        "device": method.device,
        "load_s": load_s,
        "footprint_MB": round(footprint / 1e6, 2),
        "saved_MB": round(saved / 1e6, 2),
        "perplexity": round(perplexity, 2),
        "perplexity_after_reload": round(reloaded_perplexity, 2),
        "reload_ok": reload_matches(perplexity, reloaded_perplexity),
        "tokens_per_s": round(speed),
    }


def quantization_table(
    blocks: torch.Tensor,
    names: list[str] | None = None,
    role: str = "causal-lm",
    report: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """:func:`measure` for each method; GPU-only methods are skipped with a note when CUDA is absent."""
    methods = quant_methods()
    unknown = [n for n in (names or []) if n not in methods]
    if unknown:
        raise CourseError(f"Unknown method(s) {unknown}; choose from {list(methods)}.")
    rows = []
    for name in names or list(methods):
        if methods[name].device == "cuda" and not torch.cuda.is_available():
            report(f"skipped (no CUDA GPU here): {name}")
            continue
        rows.append(measure(methods[name], blocks, role))
    return rows


def quantized_linear_types(model: nn.Module) -> dict[str, int]:
    """How many modules of each class hold the model's linear layers (``Linear4bit``, ...)."""
    counts: dict[str, int] = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }:
            label = type(module).__name__
            weight = getattr(module, "weight", None)
            if weight is not None and type(weight).__name__ not in ("Parameter", "Tensor"):
                label += f" ({type(weight).__name__} weight)"
            counts[label] = counts.get(label, 0) + 1
    return counts


REPORT_COLUMNS = {
    "method": "method",
    "weight_bits": "bits",
    "saved_MB": "saved MB",
    "perplexity": "perplexity",
    "perplexity_after_reload": "reloaded",
    "tokens_per_s": "tokens/s",
}


def report_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The columns of :func:`measure`'s rows that fit a page, with short names."""
    return [{short: row[key] for key, short in REPORT_COLUMNS.items()} for row in rows]


GPU_RESULTS = "quantization_gpu.json"
# What wrote course_lib/results/quantization_gpu.json, on a machine with a CUDA GPU.
GPU_COMMAND = "python tests/gpu/quantization_rows.py --output course_lib/results/quantization_gpu.json"


def stored_run(n_blocks: int = 16, command: str = GPU_COMMAND, role: str = "causal-lm") -> dict[str, Any]:
    """Every row of :func:`quantization_table` (the GPU-only ones too, where CUDA exists) on the
    first ``n_blocks`` validation blocks, as the JSON document ``quantization_gpu.json`` stores:
    the ``command`` that wrote it, a ``stamp`` (device, versions, date), ``blocks`` and the rows."""
    import datetime
    import platform
    from importlib import metadata

    from .models import load_tokenizer

    blocks = eval_blocks(load_tokenizer(role), n_blocks=n_blocks)
    libraries = ("torch", "transformers", "peft", "bitsandbytes", "torchao")
    stamp = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        **{name: metadata.version(name).split("+")[0] for name in libraries},
        "date": datetime.date.today().isoformat(),
    }
    rows = quantization_table(blocks, role=role)
    return {"command": command, "stamp": stamp, "blocks": len(blocks), "quantization": rows}


def stored_gpu_results(path: str | Path | None = None) -> dict[str, Any] | None:
    """The GPU run stored as ``course_lib/results/quantization_gpu.json`` (written by
    :data:`GPU_COMMAND`: its ``command``, ``stamp`` with device, versions and date, and its
    ``quantization`` rows, CPU and GPU, from that one machine), or None when absent."""
    import json

    from . import results

    path = Path(path) if path else results.FOLDER / GPU_RESULTS
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    missing = {"command", "stamp", "quantization"} - set(results)
    if missing:
        raise CourseError(
            f"{path.name} lacks {sorted(missing)}: regenerate it with `{GPU_COMMAND}` on a GPU machine."
        )
    return results

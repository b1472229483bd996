"""Load models and tokenizers by role; choose dtypes and devices; count parameters and bytes.

Every load goes through the same code for both profiles: offline it passes a
local folder to ``from_pretrained``, on the Hub a repo id. ``trust_remote_code``
is off and safetensors are required, so loading never runs code from a download.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import assets
from .profiles import CourseError, RoleSpec, resolve

MODEL_ROLES = ("causal-lm", "instruct-lm", "encoder")
_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def source_of(spec: RoleSpec) -> str:
    """What ``from_pretrained`` receives for a resolved model role: a local folder or a repo id."""
    if not spec.is_local:
        return spec.source
    if spec.source == "encoder":
        return str(assets.encoder())
    return str(assets.BUILDERS[spec.source]())


def _model_spec(role: str) -> RoleSpec:
    spec = resolve(role)
    if spec.kind != "model":
        raise CourseError(
            f"Role {role!r} is a {spec.kind}, not a model. Model roles: {', '.join(MODEL_ROLES)}."
        )
    return spec


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``mps`` on Apple silicon, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_of(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs must be on: ``model.device`` (transformers and peft models),
    else the device of its first parameter (a plain module, or a DDP wrapper), else the CPU."""
    device = getattr(model, "device", None)
    if isinstance(device, (torch.device, str)):
        return torch.device(device)
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def to_device_of(model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with every tensor moved to :func:`device_of` ``(model)`` (other values kept):
    what a tokenizer's or collator's output needs before ``model(**batch)`` outside a Trainer."""
    device = device_of(model)
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }


def pick_dtype(device: str | None = None) -> torch.dtype:
    """The training/inference dtype a device handles well: bf16 on recent GPUs, fp16 on
    older GPUs (e.g. a Colab T4), fp32 on CPU (bf16 matmuls are slow on most CPUs)."""
    device = device or pick_device()
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def native_bf16() -> bool:
    """True where bfloat16 arithmetic is native, so bf16 autocast speeds training up: a CUDA GPU
    that supports it, or a CPU with AVX-512 BF16 (emulated bf16 elsewhere is slower than fp32).
    Chapter 15 measures what it buys; chapter 8 trains the real model with it."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported())


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Accept ``torch.bfloat16`` or a name like ``"bf16"``; reject anything else clearly."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise CourseError(f"Unknown dtype {dtype!r}. Use one of: {', '.join(sorted(_DTYPES))}.") from None


def load_tokenizer(role: str = "causal-lm", **kwargs: Any):
    """The tokenizer that belongs to a model role (``AutoTokenizer``).

    A tokenizer without a pad token (SmolLM2's, under the hub profile) pads with its
    end-of-text token, as chapter 9 does on the page: batches need some id there, and the
    labels of padded positions are masked anyway.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_of(_model_spec(role)), **kwargs)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    role: str = "causal-lm",
    *,
    auto_class: Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | None = None,
    **kwargs: Any,
):
    """Load the model behind ``role`` through an Auto class.

    ``auto_class`` defaults to ``AutoModelForCausalLM`` for decoder roles and
    ``AutoModel`` for the encoder; pass e.g. ``AutoModelForSequenceClassification``
    (with ``num_labels=``) for a task head. ``dtype`` defaults to fp32 offline
    and to :func:`pick_dtype` on the Hub profile. Extra kwargs go to ``from_pretrained``.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    spec = _model_spec(role)
    if auto_class is None:
        auto_class = AutoModel if role == "encoder" else AutoModelForCausalLM
    device = device or ("cpu" if spec.is_local else pick_device())
    chosen = (
        as_dtype(dtype) if dtype is not None else (torch.float32 if spec.is_local else pick_dtype(device))
    )
    kwargs.setdefault("trust_remote_code", False)
    kwargs.setdefault("use_safetensors", True)
    model = auto_class.from_pretrained(source_of(spec), dtype=chosen, **kwargs)
    if "device_map" not in kwargs:
        model = model.to(device)
    return model.eval()


def count_parameters(model: torch.nn.Module) -> dict[str, float]:
    """Total and trainable parameter counts (tied weights counted once) and the trainable %."""
    seen: set[int] = set()
    total = trainable = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return {
        "total": total,
        "trainable": trainable,
        "trainable_%": round(100 * trainable / total, 3) if total else 0.0,
    }


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers, each storage counted once."""
    storages = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files under ``folder``: what a saved model or dataset costs on disk."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def saved_bytes(model: torch.nn.Module) -> int:
    """Size on disk of ``save_pretrained`` (safetensors weights + config files)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return folder_bytes(tmp)


def memory_by_dtype(model: torch.nn.Module, dtypes=("float32", "bfloat16")) -> list[dict]:
    """Measure a copy of ``model`` cast to each dtype: bytes in memory and on disk."""
    rows = []
    for name in dtypes:
        cast = copy.deepcopy(model).to(as_dtype(name))
        params = count_parameters(cast)["total"]
        in_memory = tensor_bytes(cast)
        rows.append(
            {
                "dtype": name,
                "parameters": params,
                "bytes_in_memory": in_memory,
                "bytes_per_parameter": round(in_memory / params, 2),
                "MB_on_disk": round(saved_bytes(cast) / 1e6, 2),
            }
        )
        del cast
    return rows

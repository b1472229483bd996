"""Benchmarks behind ``python -m course_lib bench`` and appendix A2.

Suites (each returns rows; every row is stamped with device, library versions and date):

* ``bandwidth``: memory bandwidth from a large tensor copy (the roofline's ceiling).
* ``generation``: greedy decoding latency and tokens/s per model size and dtype, and the
  fraction of the measured bandwidth that decoding achieves (each new token reads every weight once).
* ``training``: tokens/s of AdamW steps by micro-batch size x gradient accumulation.
* ``memory``: bytes per precision (fp32, bf16, int8, nf4) on disk, in tensors and in process memory.
* ``quantization``: the pretrained course LM per precision: size, held-out perplexity, decoding speed.
* ``gpu``: bandwidth, generation and training on CUDA; skipped with a note where there is no GPU.

Results are a JSON document validated against :data:`SCHEMA` (JSON Schema) by :func:`validate`.
Models for the speed suites are course-LM-shaped Llamas with random weights (speed does not
depend on the values); only the quantization suite needs the trained model.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .memory import release_freed_memory
from .profiles import CourseError

SCHEMA_VERSION = 1
CPU_SUITES = ("bandwidth", "generation", "training", "memory", "quantization")
ALL_SUITES = CPU_SUITES + ("gpu",)
VERSIONED = ("torch", "transformers", "bitsandbytes", "torchao", "course_lib")

# Llama shapes built from the course LM's config; the vocabulary (4096) stays the course tokenizer's.
MODEL_SIZES: dict[str, dict] = {
    "course LM": {
        "hidden_size": 128,
        "intermediate_size": 384,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
    },
    "small": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4},
    "medium": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
    },
    "large": {
        "hidden_size": 768,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
    },
}
RANDOM_MODEL_VOCAB = 4096
PRECISIONS = ("fp32", "bf16", "int8", "nf4")
QUANTIZATIONS = ("fp32", "bf16", "int8 (bitsandbytes)", "nf4 (bitsandbytes)", "int8 weight-only (torchao)")


@dataclass(frozen=True)
class Settings:
    """How much each suite measures. ``quick`` fits a notebook's budget; ``full`` is for the CLI."""

    bandwidth_mb: int
    bandwidth_repeats: int
    generation_sizes: tuple[str, ...]
    generation_dtypes: tuple[str, ...]
    new_tokens: int
    repeats: int
    batch_sizes: tuple[int, ...]
    accumulation: tuple[int, ...]
    optimizer_steps: int
    memory_size: str
    quantization_blocks: int
    quantization_tokens: int


QUICK = Settings(
    bandwidth_mb=256,
    bandwidth_repeats=3,
    generation_sizes=("course LM", "medium"),
    generation_dtypes=("fp32", "bf16"),
    new_tokens=16,
    repeats=1,
    batch_sizes=(1, 4),
    accumulation=(1, 4),
    optimizer_steps=1,
    memory_size="small",
    quantization_blocks=4,
    quantization_tokens=16,
)
FULL = Settings(
    bandwidth_mb=1024,
    bandwidth_repeats=5,
    generation_sizes=tuple(MODEL_SIZES),
    generation_dtypes=("fp32", "bf16"),
    new_tokens=32,
    repeats=3,
    batch_sizes=(1, 4, 16),
    accumulation=(1, 2, 4),
    optimizer_steps=3,
    memory_size="large",
    quantization_blocks=16,
    quantization_tokens=32,
)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# ----------------------------------------------------------------------------- schema

SUITE_METRICS: dict[str, list[str]] = {
    "bandwidth": ["bytes_moved", "seconds", "GB_per_s"],
    "generation": [
        "parameters",
        "weight_bytes",
        "first_token_ms",
        "ms_per_token",
        "tokens_per_s",
        "achieved_GB_per_s",
        "roofline_fraction",
    ],
    "training": ["effective_batch", "seconds_per_optimizer_step", "tokens_per_s"],
    "memory": [
        "parameters",
        "bytes_on_disk",
        "tensor_bytes",
        "process_bytes",
        "private_bytes",
        "file_backed_bytes",
    ],
    "quantization": ["bytes_on_disk", "perplexity", "tokens_per_s"],
}
_NUMBER = {"type": "number"}
ROW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "suite",
        "config",
        "metrics",
        "device",
        "device_name",
        "date",
        "versions",
        "python",
        "torch_threads",
        "cpu_count",
        "load_average_1m",
    ],
    "properties": {
        "suite": {"enum": list(SUITE_METRICS)},
        "config": {"type": "object", "additionalProperties": {"type": ["string", "number", "integer"]}},
        "metrics": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
        "device": {"enum": ["cpu", "cuda", "mps"]},
        "device_name": {"type": "string", "minLength": 1},
        "date": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"},
        "versions": {
            "type": "object",
            "required": ["torch", "transformers"],
            "additionalProperties": {"type": ["string", "null"]},
        },
        "python": {"type": "string"},
        "torch_threads": {"type": "integer", "minimum": 1},
        "cpu_count": {"type": "integer", "minimum": 1},
        "load_average_1m": {"type": ["number", "null"]},
    },
    "allOf": [
        {
            "if": {"properties": {"suite": {"const": suite}}},
            "then": {"properties": {"metrics": {"required": names}}},
        }
        for suite, names in SUITE_METRICS.items()
    ],
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "course_lib benchmark results",
    "type": "object",
    "required": ["schema_version", "created", "command", "settings", "notes", "rows"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "created": {"type": "string"},
        "command": {"type": "string"},
        "settings": {"enum": ["quick", "full"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "rows": {"type": "array", "items": ROW_SCHEMA},
    },
}


def validate(document: dict) -> list[str]:
    """Problems with a results document (empty when it follows :data:`SCHEMA`).

    A dependency-free check of exactly what the schema states; the tests run the same
    documents through the ``jsonschema`` package to keep the two in agreement."""
    problems = [f"missing key {key!r}" for key in SCHEMA["required"] if key not in document]
    if document.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version must be {SCHEMA_VERSION}")
    if document.get("settings") not in ("quick", "full"):
        problems.append("settings must be 'quick' or 'full'")
    if not isinstance(document.get("notes", []), list) or not all(
        isinstance(n, str) for n in document.get("notes", [])
    ):
        problems.append("notes must be a list of strings")
    for key in ("created", "command"):
        if key in document and not isinstance(document[key], str):
            problems.append(f"{key} must be a string")
    rows = document.get("rows", [])
    if not isinstance(rows, list):
        return problems + ["rows must be a list"]
    for i, row in enumerate(rows):
        problems += [f"row {i}: {p}" for p in _row_problems(row)]
    return problems


def _row_problems(row: Any) -> list[str]:
    if not isinstance(row, dict):
        return ["not an object"]
    problems = [f"missing {key!r}" for key in ROW_SCHEMA["required"] if key not in row]
    suite = row.get("suite")
    if suite not in SUITE_METRICS:
        problems.append(f"unknown suite {suite!r}")
    if row.get("device") not in ("cpu", "cuda", "mps"):
        problems.append(f"unknown device {row.get('device')!r}")
    if "device_name" in row and not (isinstance(row["device_name"], str) and row["device_name"]):
        problems.append("device_name must be a non-empty string")
    if not isinstance(row.get("date", ""), str) or not _looks_like_date(row.get("date", "")):
        problems.append("date must be an ISO 8601 date-time")
    versions = row.get("versions", {})
    if (
        not isinstance(versions, dict)
        or not {"torch", "transformers"} <= set(versions)
        or not all(v is None or isinstance(v, str) for v in versions.values())
    ):
        problems.append(
            "versions must map library names to version strings (torch and transformers required)"
        )
    if "python" in row and not isinstance(row["python"], str):
        problems.append("python must be a string")
    for key in ("torch_threads", "cpu_count"):
        if key in row and not (
            isinstance(row[key], int) and not isinstance(row[key], bool) and row[key] >= 1
        ):
            problems.append(f"{key} must be an integer >= 1")
    if "load_average_1m" in row and not (
        row["load_average_1m"] is None or _is_number(row["load_average_1m"])
    ):
        problems.append("load_average_1m must be a number or null")
    config, metrics = row.get("config", {}), row.get("metrics", {})
    if not isinstance(config, dict) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in config.values()
    ):
        problems.append("config values must be strings or numbers")
    if not isinstance(metrics, dict) or not all(v is None or _is_number(v) for v in metrics.values()):
        problems.append("metric values must be numbers or null")
    elif suite in SUITE_METRICS:
        problems += [
            f"{suite} row lacks metric {name!r}" for name in SUITE_METRICS[suite] if name not in metrics
        ]
    return problems


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _looks_like_date(text: str) -> bool:
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text


# ----------------------------------------------------------------------------- stamps and helpers


def device_name(device: str = "cpu") -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (else the platform's processor string)."""
    from .env import cpu_name

    return torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()


def stamp(device: str = "cpu") -> dict[str, Any]:
    """What every row carries: device, library versions, date (UTC), threads and load."""
    from .env import load_average, versions

    return {
        "device": device,
        "device_name": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(VERSIONED),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count() or 1,
        "load_average_1m": load_average(),
    }


def _row(suite: str, config: dict, metrics: dict, device: str) -> dict:
    return {"suite": suite, "config": config, "metrics": metrics, **stamp(device)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(function: Callable[[], Any], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    function()
    _sync(device)
    return time.perf_counter() - start


def llama(size: str, seed: int = 0):
    """A randomly initialised course-LM-shaped Llama of one of :data:`MODEL_SIZES`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in MODEL_SIZES:
        raise CourseError(f"Unknown model size {size!r}; choose from {list(MODEL_SIZES)}.")
    shape = MODEL_SIZES[size]
    config = LlamaConfig(
        vocab_size=RANDOM_MODEL_VOCAB,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        num_key_value_heads=shape["num_attention_heads"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        **shape,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def _progress(items, description: str, enabled: bool):
    from tqdm import tqdm  # text bars: they render in the static book too

    return tqdm(items, desc=description, disable=not enabled, leave=False)


# ----------------------------------------------------------------------------- suites


def measure_bandwidth(megabytes: int = 256, repeats: int = 3, device: str = "cpu") -> dict[str, float]:
    """Best-of-``repeats`` copy of a ``megabytes`` tensor into another: bytes read + written per second."""
    if megabytes < 1 or repeats < 1:
        raise ValueError("megabytes and repeats must be >= 1.")
    n = megabytes * 1024 * 1024 // 4
    source = torch.ones(n, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    target.copy_(source)  # touch the pages once so the timing measures copying, not page faults
    best = min(_timed(lambda: target.copy_(source), device) for _ in range(repeats))
    moved = 2 * source.numel() * source.element_size()
    return {"bytes_moved": moved, "seconds": round(best, 5), "GB_per_s": round(moved / best / 1e9, 2)}


def bandwidth_suite(settings: Settings, device: str = "cpu", progress: bool = False) -> list[dict]:
    """One row: the measured copy bandwidth of ``device``."""
    metrics = measure_bandwidth(settings.bandwidth_mb, settings.bandwidth_repeats, device)
    return [
        _row(
            "bandwidth",
            {"tensor_MB": settings.bandwidth_mb, "method": "copy_ (read + write)"},
            metrics,
            device,
        )
    ]


def random_ids(model, shape: tuple[int, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """Random token ids (never the special ids 0-2) on the model's device: a benchmark's input."""
    from .models import device_of

    generator = generator or torch.Generator().manual_seed(0)
    return torch.randint(3, RANDOM_MODEL_VOCAB, shape, generator=generator).to(device_of(model))


@torch.inference_mode()
def measure_decoding(
    model, new_tokens: int = 16, repeats: int = 1, prompt_length: int = 16
) -> dict[str, float]:
    """Latency of greedy generation at batch 1: ``first_token_ms`` (prefill of the prompt plus one token)
    and ``ms_per_token`` for each further token, ``(t(N tokens) - t(1 token)) / (N - 1)``; medians over
    ``repeats``. The prompt is put on the model's device."""
    from transformers import GenerationConfig

    from .models import device_of

    if new_tokens < 2:
        raise ValueError("new_tokens must be >= 2 to separate decoding from prefill.")
    prompt = random_ids(model, (1, prompt_length))
    device = device_of(model).type

    def generate(count: int) -> None:
        config = GenerationConfig(
            do_sample=False, max_new_tokens=count, min_new_tokens=count, eos_token_id=2, pad_token_id=0
        )
        model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=config)

    generate(4)  # warm-up
    first, whole = [], []
    for _ in range(repeats):
        first.append(_timed(lambda: generate(1), device))
        whole.append(_timed(lambda: generate(new_tokens), device))
    one, many = statistics.median(first), statistics.median(whole)
    # On a busy machine the N-token run can come out faster than the 1-token run; the difference
    # then says nothing, so fall back to the whole run's average rather than report ~0 ms.
    seconds = (many - one) / (new_tokens - 1) if many > one else many / new_tokens
    return {
        "first_token_ms": round(1000 * one, 3),
        "ms_per_token": round(1000 * seconds, 3),
        "tokens_per_s": round(1 / seconds, 1),
    }


def generation_suite(
    settings: Settings,
    device: str = "cpu",
    progress: bool = False,
    bandwidth_GB_per_s: float | None = None,
    dtypes: tuple[str, ...] | None = None,
) -> list[dict]:
    """Decoding speed per model size and dtype, with achieved bytes/s against the measured bandwidth."""
    from .models import tensor_bytes

    if bandwidth_GB_per_s is None:
        bandwidth_GB_per_s = measure_bandwidth(settings.bandwidth_mb, settings.bandwidth_repeats, device)[
            "GB_per_s"
        ]
    rows = []
    dtypes = dtypes or settings.generation_dtypes
    for size in _progress(settings.generation_sizes, "generation", progress):
        model = llama(size).to(device)
        for dtype in dtypes:  # cast the same weights in place: fp32 first, then narrower types
            model = model.to(_DTYPES[dtype])
            weight_bytes = tensor_bytes(model)
            speed = measure_decoding(model, settings.new_tokens, settings.repeats)
            achieved = weight_bytes * speed["tokens_per_s"] / 1e9
            rows.append(
                _row(
                    "generation",
                    {"model": size, "dtype": dtype, "new_tokens": settings.new_tokens, "batch": 1},
                    {
                        "parameters": sum(p.numel() for p in model.parameters()),
                        "weight_bytes": weight_bytes,
                        **speed,
                        "achieved_GB_per_s": round(achieved, 3),
                        "bandwidth_GB_per_s": bandwidth_GB_per_s,
                        "roofline_fraction": round(achieved / bandwidth_GB_per_s, 4),
                    },
                    device,
                )
            )
        del model
    return rows


def measure_training(
    model, batch_size: int, accumulation: int, optimizer_steps: int, block_size: int = 128
) -> dict[str, float]:
    """Seconds per AdamW optimizer step over ``accumulation`` micro-batches, after one warm-up step
    (random batches on the model's device)."""
    from .models import device_of

    generator = torch.Generator().manual_seed(0)
    device = device_of(model).type
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        for _ in range(accumulation):
            batch = random_ids(model, (batch_size, block_size), generator)
            (model(input_ids=batch, labels=batch).loss / accumulation).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    seconds = _timed(lambda: [step() for _ in range(optimizer_steps)], device) / optimizer_steps
    tokens = batch_size * accumulation * block_size
    return {
        "effective_batch": batch_size * accumulation,
        "seconds_per_optimizer_step": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
    }


def training_suite(
    settings: Settings, device: str = "cpu", progress: bool = False, size: str = "course LM"
) -> list[dict]:
    """Training throughput for every micro-batch size x gradient accumulation pair."""
    rows = []
    combos = [(b, a) for b in settings.batch_sizes for a in settings.accumulation]
    for batch_size, accumulation in _progress(combos, "training", progress):
        model = llama(size).to(device)
        metrics = measure_training(model, batch_size, accumulation, settings.optimizer_steps)
        rows.append(
            _row(
                "training",
                {
                    "model": size,
                    "micro_batch": batch_size,
                    "accumulation": accumulation,
                    "block_size": 128,
                    "optimizer": "AdamW",
                },
                metrics,
                device,
            )
        )
        del model
    return rows


def resident_bytes() -> dict[str, int | None]:
    """This process's resident memory: ``total``, ``private`` (anonymous: heap, tensors it allocated)
    and ``file_backed`` (mapped files, e.g. safetensors weights used in place). Linux reads
    /proc/self/status; elsewhere only the total (psutil), or None."""
    status = Path("/proc/self/status")
    if status.exists():
        fields = {}
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024
        return {
            "total": fields.get("VmRSS"),
            "private": fields.get("RssAnon"),
            "file_backed": fields.get("RssFile"),
        }
    try:
        import psutil

        return {"total": int(psutil.Process().memory_info().rss), "private": None, "file_backed": None}
    except ImportError:
        return {"total": None, "private": None, "file_backed": None}


def _difference(after: dict, before: dict, key: str) -> int | None:
    return None if after[key] is None or before[key] is None else after[key] - before[key]


def quantization_config(precision: str):
    """``from_pretrained`` arguments for a precision name (fp32, bf16, int8, nf4, torchao int8);
    the quantization configs are chapter 13's (:mod:`course_lib.quantization`)."""
    from .quantization import bnb_int8_config, bnb_nf4_config, torchao_int8_config

    if precision in ("fp32", "bf16"):
        return {"dtype": _DTYPES[precision]}
    if precision.startswith("int8 weight-only"):
        return {"quantization_config": torchao_int8_config(), "device_map": "cpu", "dtype": torch.float32}
    if precision.startswith("int8"):
        return {"quantization_config": bnb_int8_config(), "device_map": "cpu"}
    if precision.startswith("nf4"):
        return {
            "quantization_config": bnb_nf4_config(torch.float32),
            "device_map": "cpu",
            "dtype": torch.float32,
        }
    raise CourseError(f"Unknown precision {precision!r}; choose from {PRECISIONS + QUANTIZATIONS}.")


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    from .checks import quiet_int8_warnings
    from .display import capture_transformers_log

    with quiet_int8_warnings(), capture_transformers_log():
        yield


def weight_file_bytes(folder: str | Path) -> int:
    """Total size of the weight files (``*.safetensors``, ``*.bin``) in a folder."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".bin"))


def memory_suite(settings: Settings, device: str = "cpu", progress: bool = False) -> list[dict]:
    """Bytes per precision for one model size: on disk, in parameter/buffer tensors, and the resident
    memory that loading it and running one forward pass added to this process, split into private
    and file-backed pages. Each model stays alive until the end, so later loads cannot reuse its memory."""
    from transformers import AutoModelForCausalLM

    from .models import tensor_bytes

    rows, keep_alive = [], []
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "fp32"
        reference = llama(settings.memory_size)
        parameters = sum(p.numel() for p in reference.parameters())
        reference.save_pretrained(source)
        del reference
        for precision in _progress(PRECISIONS, "memory", progress):
            release_freed_memory()
            before = resident_bytes()
            with _quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(source, **quantization_config(precision))
            with torch.no_grad(), _quiet_loading():  # touch every weight once, as inference would
                model(input_ids=random_ids(model, (1, 16)))
            release_freed_memory()
            after = resident_bytes()
            keep_alive.append(model)
            saved = Path(work) / precision
            with _quiet_loading():
                model.save_pretrained(saved)
            rows.append(
                _row(
                    "memory",
                    {"model": settings.memory_size, "precision": precision},
                    {
                        "parameters": parameters,
                        "bytes_on_disk": weight_file_bytes(saved),
                        "tensor_bytes": tensor_bytes(model),
                        "process_bytes": _difference(after, before, "total"),
                        "private_bytes": _difference(after, before, "private"),
                        "file_backed_bytes": _difference(after, before, "file_backed"),
                    },
                    device,
                )
            )
    del keep_alive
    release_freed_memory()
    return rows


def quantization_suite(settings: Settings, device: str = "cpu", progress: bool = False) -> list[dict]:
    """The pretrained course LM per precision: weights on disk, held-out perplexity, decoding speed."""
    from transformers import AutoModelForCausalLM

    from .assets.pretrain import block_perplexity, pack_blocks
    from .evaluation import corpus_ids
    from .models import load_tokenizer, source_of
    from .profiles import resolve

    source = source_of(resolve("causal-lm"))
    blocks = pack_blocks(corpus_ids(load_tokenizer("causal-lm"), "validation"), 128)[
        : settings.quantization_blocks
    ]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for precision in _progress(QUANTIZATIONS, "quantization", progress):
            with _quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(source, **quantization_config(precision)).eval()
                saved = Path(work) / precision.split()[0]
                model.save_pretrained(saved)
                perplexity = block_perplexity(model, blocks)
                speed = measure_decoding(model, settings.quantization_tokens, settings.repeats)
            rows.append(
                _row(
                    "quantization",
                    {"model": "course LM (pretrained)", "precision": precision, "blocks": len(blocks)},
                    {
                        "bytes_on_disk": weight_file_bytes(saved),
                        "perplexity": round(perplexity, 2),
                        "tokens_per_s": speed["tokens_per_s"],
                    },
                    device,
                )
            )
            del model
    return rows


def gpu_suite(settings: Settings, progress: bool = False) -> list[dict]:
    """Bandwidth, generation (fp32, bf16, fp16) and training on CUDA. Empty without a GPU."""
    if not torch.cuda.is_available():
        return []
    bandwidth = bandwidth_suite(settings, "cuda")
    generation = generation_suite(
        settings, "cuda", progress, bandwidth[0]["metrics"]["GB_per_s"], dtypes=("fp32", "bf16", "fp16")
    )
    return bandwidth + generation + training_suite(settings, "cuda", progress)


SUITE_FUNCTIONS: dict[str, Callable[..., list[dict]]] = {
    "bandwidth": bandwidth_suite,
    "generation": generation_suite,
    "training": training_suite,
    "memory": memory_suite,
    "quantization": quantization_suite,
}
NO_GPU_NOTE = "gpu: skipped, no CUDA device on this machine (GPU rows need one)"


def run(suites=CPU_SUITES, quick: bool = True, progress: bool = True, command: str = "") -> dict:
    """Run ``suites`` and return a results document (validated; see :data:`SCHEMA`).

    The CPU suites run on the CPU even where a GPU exists; ``gpu`` runs its suite on CUDA,
    or adds a note saying it was skipped."""
    unknown = [s for s in suites if s not in ALL_SUITES]
    if unknown:
        raise CourseError(f"Unknown suite(s) {unknown}; choose from {list(ALL_SUITES)}.")
    settings = QUICK if quick else FULL
    rows, notes = [], []
    bandwidth = None
    for suite in suites:
        if suite == "gpu":
            found = gpu_suite(settings, progress)
            rows += found
            if not found:
                notes.append(NO_GPU_NOTE)
            continue
        if suite == "generation":
            found = generation_suite(settings, "cpu", progress, bandwidth)
        else:
            found = SUITE_FUNCTIONS[suite](settings, "cpu", progress)
        if suite == "bandwidth":
            bandwidth = found[0]["metrics"]["GB_per_s"]
        rows += found
    document = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or f"course_lib.bench.run({list(suites)}, quick={quick})",
        "settings": "quick" if quick else "full",
        "notes": notes,
        "rows": rows,
    }
    problems = validate(document)
    if problems:
        raise CourseError(f"Benchmark results do not follow the schema: {problems[:5]}")
    return document


def save(document: dict, path: str | Path) -> Path:
    """Write a validated results document as JSON (parent folders are created)."""
    problems = validate(document)
    if problems:
        raise CourseError(f"Refusing to save results that do not follow the schema: {problems[:5]}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def load(path: str | Path) -> dict:
    """Read and validate a results document; CourseError with the problems when it is invalid."""
    path = Path(path)
    if not path.exists():
        raise CourseError(
            f"No benchmark results at {path}. Create them with: python -m course_lib bench --output {path}"
        )
    document = json.loads(path.read_text())
    problems = validate(document)
    if problems:
        raise CourseError(f"{path} does not follow the benchmark schema: {problems[:5]}")
    return document


def stored_results(name: str) -> dict | None:
    """A results file shipped in ``course_lib/results/`` (None when there is none of that name)."""
    from . import results

    path = results.FOLDER / name
    return load(path) if path.exists() else None


def rows_of(document: dict, suite: str, columns: tuple[str, ...] = ()) -> list[dict]:
    """Flat table rows (config, then metrics, then the stamp fields in ``columns``) for one suite."""
    flat = []
    for row in document["rows"]:
        if row["suite"] == suite:
            flat.append({**row["config"], **row["metrics"], **{c: row[c] for c in columns}})
    return flat


def stamps(document: dict) -> list[dict]:
    """The distinct environments the rows were measured in (device, versions, date range, load)."""
    groups: dict[tuple, dict] = {}
    for row in document["rows"]:
        key = (
            row["device"],
            row["device_name"],
            json.dumps(row["versions"], sort_keys=True),
            row["python"],
            row["torch_threads"],
        )
        group = groups.setdefault(
            key,
            {
                "device": row["device"],
                "device_name": row["device_name"],
                "python": row["python"],
                **row["versions"],
                "torch_threads": row["torch_threads"],
                "rows": 0,
                "first": row["date"],
                "last": row["date"],
                "max_load_1m": None,
            },
        )
        group["rows"] += 1
        group["first"], group["last"] = min(group["first"], row["date"]), max(group["last"], row["date"])
        if row["load_average_1m"] is not None:
            group["max_load_1m"] = max(group["max_load_1m"] or 0.0, row["load_average_1m"])
    return list(groups.values())


def summary_lines(document: dict) -> list[str]:
    """Short text tables per suite, for the command line."""
    keys = {
        "bandwidth": ("GB_per_s",),
        "generation": ("model", "dtype", "tokens_per_s", "roofline_fraction"),
        "training": ("micro_batch", "accumulation", "tokens_per_s"),
        "memory": ("precision", "bytes_on_disk", "process_bytes"),
        "quantization": ("precision", "bytes_on_disk", "perplexity", "tokens_per_s"),
    }
    lines = []
    for suite, columns in keys.items():
        for device in ("cpu", "cuda"):
            table = [
                r for r in rows_of({"rows": [x for x in document["rows"] if x["device"] == device]}, suite)
            ]
            if table:
                lines.append(f"{suite} ({device}):")
                lines += ["  " + "  ".join(f"{c}={r.get(c)}" for c in columns) for r in table]
    return lines + [f"note: {note}" for note in document["notes"]]


# ----------------------------------------------------------------------------- summaries and charts


def bytes_by_dtype(model) -> dict[str, int]:
    """Bytes of the model's parameters and buffers per dtype (shows what a quantizer left in float)."""
    found: dict[str, int] = {}
    seen: set[int] = set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        name = str(tensor.dtype).removeprefix("torch.")
        found[name] = found.get(name, 0) + tensor.numel() * tensor.element_size()
    return found


def _pick(document: dict, suite: str, **config) -> dict | None:
    for row in document["rows"]:
        if row["suite"] == suite and all(row["config"].get(k) == v for k, v in config.items()):
            return row["metrics"]
    return None


def headline(document: dict) -> list[dict]:
    """The main comparisons of a CPU results document, each as baseline -> result, narrow enough
    for the book's column: ``comparison`` (with its unit), ``baseline`` and ``result`` (label:
    value) and ``ratio`` (result / baseline). Rows whose inputs are missing are left out."""
    rows = []

    def add(
        what: str, unit: str, baseline: tuple[str, dict | None, str], result: tuple[str, dict | None, str]
    ):
        (base_label, base, base_key), (label, value, key) = baseline, result
        if base is not None and value is not None:
            scale = 1e6 if unit == "MB" else 1.0
            rows.append(
                {
                    "comparison": f"{what}, {unit}",
                    "baseline": f"{base_label}: {round(base[base_key] / scale, 4):g}",
                    "result": f"{label}: {round(value[key] / scale, 4):g}",
                    "ratio": round(value[key] / base[base_key], 2) if base[base_key] else None,
                }
            )

    sizes = [r["config"]["model"] for r in document["rows"] if r["suite"] == "generation"]
    if sizes:
        small, big = sizes[0], sizes[-1]
        add(
            "decoding speed vs model size (fp32)",
            "tokens/s",
            (small, _pick(document, "generation", model=small, dtype="fp32"), "tokens_per_s"),
            (big, _pick(document, "generation", model=big, dtype="fp32"), "tokens_per_s"),
        )
        add(
            "share of memory bandwidth used by decoding (fp32)",
            "fraction",
            (small, _pick(document, "generation", model=small, dtype="fp32"), "roofline_fraction"),
            (big, _pick(document, "generation", model=big, dtype="fp32"), "roofline_fraction"),
        )
        add(
            f"decoding speed, bf16 vs fp32 ({big})",
            "tokens/s",
            ("fp32", _pick(document, "generation", model=big, dtype="fp32"), "tokens_per_s"),
            ("bf16", _pick(document, "generation", model=big, dtype="bf16"), "tokens_per_s"),
        )
    training = [r for r in document["rows"] if r["suite"] == "training"]
    if training:
        first, best = training[0], max(training, key=lambda r: r["metrics"]["tokens_per_s"])
        add(
            "training throughput",
            "tokens/s",
            (
                f"micro-batch {first['config']['micro_batch']} x {first['config']['accumulation']}",
                first["metrics"],
                "tokens_per_s",
            ),
            (
                f"micro-batch {best['config']['micro_batch']} x {best['config']['accumulation']}",
                best["metrics"],
                "tokens_per_s",
            ),
        )
    add(
        "weights on disk (memory suite model)",
        "MB",
        ("fp32", _pick(document, "memory", precision="fp32"), "bytes_on_disk"),
        ("nf4", _pick(document, "memory", precision="nf4"), "bytes_on_disk"),
    )
    fp32_quantization = _pick(document, "quantization", precision="fp32")
    if fp32_quantization is not None:
        # a variant of the course's held-out perplexity (course_lib.evaluation, the whole split):
        # only the first validation blocks, so the row names how many
        blocks = next(r["config"]["blocks"] for r in document["rows"] if r["suite"] == "quantization")
        add(
            "course LM perplexity",
            f"first {blocks} held-out blocks",
            ("fp32", fp32_quantization, "perplexity"),
            ("nf4", _pick(document, "quantization", precision="nf4 (bitsandbytes)"), "perplexity"),
        )
    return rows


def _grouped_bars(
    groups: list[str], series: dict[str, list[float]], title: str, ylabel: str, log: bool = False
):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(groups)), 3.4))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(positions, [v or 0 for v in values], width, label=name)
        ax.bar_label(bars, labels=[f"{v:,.3g}" if v else "" for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_roofline(document: dict, device: str = "cpu"):
    """Bytes/s that decoding reads (weights x tokens/s) per model and dtype, against the measured
    copy bandwidth (dashed line): the closer a bar gets to the line, the more decoding is memory-bound."""
    rows = [r for r in document["rows"] if r["suite"] == "generation" and r["device"] == device]
    if not rows:
        raise CourseError(f"No {device} generation rows in these results.")
    models = list(dict.fromkeys(r["config"]["model"] for r in rows))
    dtypes = list(dict.fromkeys(r["config"]["dtype"] for r in rows))
    series = {
        dtype: [
            next(
                (
                    r["metrics"]["achieved_GB_per_s"]
                    for r in rows
                    if r["config"]["model"] == m and r["config"]["dtype"] == dtype
                ),
                None,
            )
            for m in models
        ]
        for dtype in dtypes
    }
    sizes = {r["config"]["model"]: r["metrics"]["parameters"] for r in rows}
    fig = _grouped_bars(
        [f"{m}\n{sizes[m] / 1e6:.1f}M params" for m in models],
        series,
        f"Decoding: weight bytes read per second ({device}, batch 1)",
        "GB/s",
    )
    bandwidth = rows[0]["metrics"]["bandwidth_GB_per_s"]
    fig.axes[0].axhline(bandwidth, linestyle="--", color="black", linewidth=1)
    fig.axes[0].annotate(
        f"measured copy bandwidth {bandwidth:g} GB/s",
        (0, bandwidth),
        xytext=(0, 3),
        textcoords="offset points",
        fontsize=8,
    )
    fig.axes[0].set_ylim(0, bandwidth * 1.25)
    return fig


def plot_training(document: dict, device: str = "cpu"):
    """Training tokens/s per micro-batch size, one bar per gradient-accumulation setting."""
    rows = [r for r in document["rows"] if r["suite"] == "training" and r["device"] == device]
    if not rows:
        raise CourseError(f"No {device} training rows in these results.")
    batches = sorted({r["config"]["micro_batch"] for r in rows})
    accumulations = sorted({r["config"]["accumulation"] for r in rows})
    series = {
        f"accumulation {a}": [
            next(
                (
                    r["metrics"]["tokens_per_s"]
                    for r in rows
                    if r["config"]["micro_batch"] == b and r["config"]["accumulation"] == a
                ),
                None,
            )
            for b in batches
        ]
        for a in accumulations
    }
    return _grouped_bars(
        [f"micro-batch {b}" for b in batches],
        series,
        f"Training throughput ({device}, AdamW, 128-token blocks)",
        "tokens/s",
    )


def plot_memory(document: dict):
    """Megabytes per precision: on disk, in tensors, and resident in the process (private and file-backed)."""
    rows = [r for r in document["rows"] if r["suite"] == "memory"]
    if not rows:
        raise CourseError("No memory rows in these results.")
    keys = {
        "on disk": "bytes_on_disk",
        "tensors": "tensor_bytes",
        "process: private": "private_bytes",
        "process: file-backed": "file_backed_bytes",
    }
    series = {
        label: [None if r["metrics"][key] is None else r["metrics"][key] / 1e6 for r in rows]
        for label, key in keys.items()
    }
    model = rows[0]["config"]["model"]
    return _grouped_bars(
        [r["config"]["precision"] for r in rows],
        series,
        f"Memory per precision ({model} model, {rows[0]['metrics']['parameters'] / 1e6:.1f}M params)",
        "MB",
    )

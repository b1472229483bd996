"""Diagnostics for the errors people hit most when training and serving LLMs.

Each check turns a cryptic failure (``IndexError: index out of range in self``, a
distributed job that hangs, a loss that turns into ``nan``, a checkpoint that
reloads without complaint but predicts garbage) into a message that names the
cause and says what to do. Appendix A1 raises each error for real and then uses
these checks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .display import capture_transformers_log
from .env import free_port
from .evaluation import text_perplexity
from .profiles import CourseError

GB = 1e9


# --------------------------------------------------------------------------- showing an error


# The folder an installed package sits in (".../site-packages/"): an ImportError names the file it
# searched ("cannot import name 'AdamW' from 'transformers' (/usr/.../site-packages/transformers/
# __init__.py)"); the page keeps the path inside the package only.
_INSTALL_FOLDER = re.compile(r"(?<![\w.])(?:[A-Za-z]:)?[/\\][^\s'\"()]*?[/\\](?:site|dist)-packages[/\\]")


def describe_error(error: BaseException, width: int | None = 79) -> str:
    """``TypeName: message`` in full (no traceback), its whitespace collapsed and wrapped at ``width``
    characters so that it fits a page; one line with ``width=None`` (a table cell wraps itself).
    A path into an installed package loses its machine-specific folder (``transformers/__init__.py``)."""
    text = " ".join(_INSTALL_FOLDER.sub("", f"{type(error).__name__}: {error}").split())
    return text if width is None else textwrap.fill(text, width, break_on_hyphens=False)


@dataclass
class CaughtError:
    """What :func:`expect_error` caught (``error`` stays None until the block has run)."""

    error: BaseException | None = None

    @property
    def message(self) -> str:
        return describe_error(self.error) if self.error else ""


@contextlib.contextmanager
def expect_error(*types: type[BaseException], show: bool = True) -> Iterator[CaughtError]:
    """Run a block that must fail with one of ``types``; print ``TypeName: message``.

    The page then shows the error without a traceback. When the block does *not*
    fail (a library or the model changed), that is a false claim (:func:`claims.claim`): it
    raises, so the page that shows an error cannot build silently, except in report mode
    (Colab, or the hub profile's random weights in CI), where it is printed and marked."""
    from .claims import claim

    types = types or (Exception,)
    caught = CaughtError()
    try:
        yield caught
    except types as error:  # the expected failure
        caught.error = error
        if show:
            print(caught.message)
        return
    claim(
        f"this raises {' or '.join(t.__name__ for t in types)}",
        False,
        "it ran without error: the installed library or the model changed; update this example",
    )


# --------------------------------------------------------------------------- tokenizer / model mismatch


class TokenizerModelMismatch(CourseError):
    """The tokenizer does not belong to the model."""


def _embedding_rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def tokenizer_model_report(tokenizer, model) -> list[dict]:
    """Compare what the tokenizer produces with what the model expects.

    Rows: vocabulary size against the embedding matrix, and each special token
    (bos, eos, pad) against the ids in the model's config. ``ok`` is False for a
    real problem; ``what to do`` says how to fix it."""
    rows_in_model, vocabulary = _embedding_rows(model), len(tokenizer)
    same = "load the tokenizer from the same folder or repo as the model"
    rows = [
        {
            "check": "vocabulary size vs embedding rows",
            "tokenizer": vocabulary,
            "model": rows_in_model,
            "ok": vocabulary <= rows_in_model,
            "what to do": (
                ""
                if vocabulary == rows_in_model
                else "fine: unused rows (models often pad the vocabulary)"
                if vocabulary < rows_in_model
                else f"ids >= {rows_in_model} crash the embedding lookup: {same}; after adding "
                "tokens on purpose call model.resize_token_embeddings(len(tokenizer))"
            ),
        }
    ]
    generation = getattr(model, "generation_config", None)
    for name in ("bos", "eos", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        model_id = getattr(model.config, f"{name}_token_id", None)
        if model_id is None and generation is not None:
            model_id = getattr(generation, f"{name}_token_id", None)
        expected = model_id if not isinstance(model_id, list) else model_id[0]
        ok = model_id is None or (
            token_id is not None
            and (token_id == model_id or isinstance(model_id, list) and token_id in model_id)
        )
        advice = ""
        if not ok:
            advice = (
                f"the model was trained with {name} id {expected}, the tokenizer has "
                f"{'no ' + name + ' token' if token_id is None else 'id ' + str(token_id)}: {same}"
            )
        rows.append(
            {
                "check": f"{name} token id",
                "tokenizer": "none" if token_id is None else token_id,
                "model": "none" if model_id is None else model_id,
                "ok": ok,
                "what to do": advice,
            }
        )
    return rows


def check_tokenizer_matches(tokenizer, model) -> list[dict]:
    """Raise :class:`TokenizerModelMismatch` listing every failed check of
    :func:`tokenizer_model_report`; return the report when everything matches."""
    rows = tokenizer_model_report(tokenizer, model)
    problems = [
        f"{r['check']}: tokenizer {r['tokenizer']}, model {r['model']} -> {r['what to do']}"
        for r in rows
        if not r["ok"]
    ]
    if problems:
        raise TokenizerModelMismatch(
            f"{type(tokenizer).__name__} does not match {type(model).__name__}. " + " | ".join(problems)
        )
    return rows


@torch.no_grad()
def try_forward(model, tokenizer, text: str) -> str:
    """Run ``model`` on ``text`` as ``tokenizer`` encodes it; report the error (``TypeName: message``)
    or, when it runs, the perplexity it produced."""
    try:
        perplexity = text_perplexity(model, tokenizer, [text])["perplexity"]
        return f"no error: perplexity {perplexity:,.1f}"
    except (IndexError, RuntimeError) as error:
        return describe_error(error)


# --------------------------------------------------------------------------- missing / unused weights

HEAD_NAMES = ("classifier", "score", "qa_outputs", "lm_head", "cls.", "pooler")
QUANTIZATION_STATE = (
    "SCB",
    "weight_format",
    "absmax",
    "quant_map",
    "quant_state",
    "nested_absmax",
    "nested_quant_map",
    "zero_point",
    "scale",
)


@dataclass
class LoadReport:
    """What ``from_pretrained`` said: its logged report text and its loading info."""

    log: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> list[dict]:
        return explain_loading_info(self.info)


def load_with_report(auto_class, source: str, **kwargs):
    """``auto_class.from_pretrained(source, **kwargs)`` returning ``(model, LoadReport)``.

    The report holds the load report transformers logs (missing / unexpected /
    mismatched weights) and the loading info dict, explained by :attr:`LoadReport.rows`."""
    with capture_transformers_log() as lines:
        model, info = auto_class.from_pretrained(source, output_loading_info=True, **kwargs)
    return model, LoadReport(
        page_text("\n".join(lines)), {k: sorted(v) if isinstance(v, set) else v for k, v in info.items()}
    )


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s/]+/)*([^\s/]+/[^\s/]+)")


def page_text(text: str, width: int = 79) -> str:
    """``text`` as a page shows it: absolute paths cut to their last two components (a folder
    and its parent), tabs as spaces, and every line wrapped at ``width`` (continuations indented)."""
    text = _ABSOLUTE_PATH.sub(r"\1", text).replace("\t", " ")
    return "\n".join(
        textwrap.fill(line, width, subsequent_indent="  ", break_on_hyphens=False) if line.strip() else line
        for line in text.splitlines()
    )


def _group(key: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", key)


def explain_loading_info(info: dict) -> list[dict]:
    """One row per kind of missing / unexpected / mismatched weight: what it means, what to do.

    Layer indices are collapsed (``layers.*.``) so a 32-layer model gives one row per kind."""
    rows: dict[tuple[str, str], dict] = {}

    def add(status: str, key: str, meaning: str, todo: str, serious: bool) -> None:
        group = _group(key)
        row = rows.setdefault(
            (status, group),
            {
                "weights": group,
                "status": status,
                "count": 0,
                "serious": serious,
                "meaning": meaning,
                "what to do": todo,
            },
        )
        row["count"] += 1

    for key in info.get("missing_keys", []):
        if any(h in key for h in HEAD_NAMES):
            add(
                "missing",
                key,
                "new task head, randomly initialised",
                "expected: fine-tune before trusting its outputs",
                False,
            )
        else:
            add(
                "missing",
                key,
                "a body weight is not in the checkpoint",
                "wrong checkpoint for this architecture: outputs will be garbage",
                True,
            )
    for key in info.get("unexpected_keys", []):
        leaf = key.rsplit(".", 1)[-1]
        if leaf in QUANTIZATION_STATE:
            add(
                "unexpected",
                f"every quantized layer's .{leaf}",
                "quantization state loaded into a float model",
                "config.json lost its "
                "quantization_config: restore it (or reload with the quantization config)",
                True,
            )
        elif any(h in key for h in HEAD_NAMES):
            add(
                "unexpected",
                key,
                "checkpoint head/pooler this architecture does not use",
                "harmless when you changed the task on purpose",
                False,
            )
        else:
            add(
                "unexpected",
                key,
                "checkpoint weight with no place in this model",
                "check that the checkpoint and the Auto class match",
                True,
            )
    for entry in info.get("mismatched_keys", []):
        key = entry[0] if isinstance(entry, (tuple, list)) else entry
        add(
            "mismatched shape",
            key,
            "same name, different shape (vocabulary or label count)",
            "ignore_mismatched_sizes=True re-initialises it; then it must be trained",
            True,
        )
    return list(rows.values())


# --------------------------------------------------------------------------- out of memory

BYTES_PER_WEIGHT = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "nf4": 0.5}


def meta_model(config):
    """A causal LM built from ``config`` on the meta device: real shapes, no memory, no weights."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def parameter_count(model) -> int:
    """Distinct parameters of ``model`` (tied tensors once); works on the meta device."""
    return sum(p.numel() for p in model.parameters())


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_parameter_count(model, r: int, target_modules=LORA_TARGETS) -> int:
    """Parameters a LoRA adapter of rank ``r`` adds: ``r * (in + out)`` per targeted ``nn.Linear``."""
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}.")
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in target_modules:
            total += r * (module.in_features + module.out_features)
    if total == 0:
        raise CourseError(
            f"No nn.Linear named {target_modules} in {type(model).__name__}: pass its "
            "attention/MLP projection names as target_modules."
        )
    return total


def estimate_training_memory(
    n_params: int, weights: str = "fp32", trainable_params: int | None = None, activation_bytes: float = 0.0
) -> list[dict]:
    """Bytes needed to train with AdamW, by component (activations only if you pass them).

    ``weights`` is the storage of the base weights (fp32, bf16, fp16, int8, nf4).
    Trainable parameters carry an fp32 gradient and two fp32 Adam moments (12 bytes);
    a 16-bit model trained in full also keeps an fp32 master copy (4 bytes), as mixed
    precision does. ``trainable_params=None`` means full fine-tuning; a LoRA adapter is
    given as its own parameter count and stored in fp32 on top of frozen base weights."""
    if weights not in BYTES_PER_WEIGHT:
        raise CourseError(f"Unknown weight storage {weights!r}; use one of {sorted(BYTES_PER_WEIGHT)}.")
    if n_params <= 0:
        raise ValueError(f"n_params must be positive, got {n_params}.")
    full = trainable_params is None
    if full and weights in ("int8", "nf4"):
        raise CourseError(
            "Quantized weights cannot be trained in full: train a LoRA adapter on top "
            "(pass trainable_params=<adapter parameters>)."
        )
    trainable = n_params if full else trainable_params
    rows = [{"component": f"weights ({weights})", "bytes": n_params * BYTES_PER_WEIGHT[weights]}]
    if not full:
        rows.append({"component": "adapter weights (fp32)", "bytes": trainable * 4.0})
    elif weights != "fp32":
        rows.append({"component": "fp32 master weights", "bytes": trainable * 4.0})
    rows += [
        {"component": "gradients (fp32)", "bytes": trainable * 4.0},
        {"component": "AdamW moments (2 x fp32)", "bytes": trainable * 8.0},
    ]
    if activation_bytes:
        rows.append({"component": "activations", "bytes": float(activation_bytes)})
    for row in rows:
        row["GB"] = round(row["bytes"] / GB, 2)
    return rows


def available_memory(device: str = "cpu") -> int:
    """Free bytes on ``device``: the CUDA allocator's free memory, or the OS's available RAM."""
    if device.startswith("cuda"):
        return int(torch.cuda.mem_get_info()[0])
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class PredictedOutOfMemory(CourseError):
    """The estimate says this will not fit; raised before anything is allocated."""


def check_fits(estimate: list[dict], device: str = "cpu", available: int | None = None) -> dict:
    """Compare an :func:`estimate_training_memory` total with the free memory of ``device``.

    Raises :class:`PredictedOutOfMemory` with what to change when it does not fit;
    returns ``{needed_GB, available_GB, headroom_GB}`` when it does."""
    needed = sum(row["bytes"] for row in estimate)
    available = available_memory(device) if available is None else available
    summary = {
        "needed_GB": round(needed / GB, 2),
        "available_GB": round(available / GB, 2),
        "headroom_GB": round((available - needed) / GB, 2),
    }
    if needed > available:
        raise PredictedOutOfMemory(
            f"Needs {summary['needed_GB']} GB, {summary['available_GB']} GB available on {device}. "
            "Train a LoRA adapter instead of all weights, store the base in bf16 or 4-bit (QLoRA), "
            "lower the batch size or sequence length, or enable activation_checkpointing."
        )
    return summary


def fit_report(scenarios: dict[str, list[dict]], available: float, where: str) -> list[dict]:
    """One row per named estimate: needed GB, whether it fits in ``available`` bytes, and the
    :class:`PredictedOutOfMemory` message when it does not."""
    rows = []
    for name, estimate in scenarios.items():
        try:
            rows.append(
                {"setup": name, **check_fits(estimate, where, available), "fits": True, "message": ""}
            )
        except PredictedOutOfMemory as error:
            needed = sum(row["bytes"] for row in estimate)
            rows.append(
                {
                    "setup": name,
                    "needed_GB": round(needed / GB, 2),
                    "available_GB": round(available / GB, 2),
                    "headroom_GB": round((available - needed) / GB, 2),
                    "fits": False,
                    "message": describe_error(error, width=None),
                }
            )
    return rows


def try_allocate(n_bytes: int, device: str = "cpu") -> str:
    """Ask the allocator for ``n_bytes`` (uninitialised, untouched) and report what it said."""
    try:
        block = torch.empty(int(n_bytes), dtype=torch.uint8, device=device)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        return textwrap.fill("refused: " + describe_error(error, width=10**6), 79)
    del block
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        return f"granted: {n_bytes / GB:.1f} GB allocated on the GPU (and freed again)"
    return textwrap.fill(
        "granted: the operating system promised the memory without reserving it "
        "(overcommit); touching it all would get the process killed",
        79,
    )


# --------------------------------------------------------------------------- distributed hang


def tidy_collective_error(message: str) -> str:
    """Drop the C++ source location, the ``TensorOptions(...)`` dumps and all but the first listed
    difference from a gloo/c10d error (what is left is shown in full)."""
    message = re.sub(r"\[[^\]]*\.(?:cc|cpp|h):\d+\] ", "", message)
    message = re.sub(r"(Op type: \S+vs \S+) .*", r"\1", message)  # keep the first difference only
    while (start := message.find(", TensorDeviceTypes=TensorOptions(")) != -1:
        depth, end = 0, start + len(", TensorDeviceTypes=TensorOptions")
        for end in range(end, len(message)):  # noqa: B020 - ``end`` is the loop's result
            depth += {"(": 1, ")": -1}.get(message[end], 0)
            if depth == 0:
                break
        message = message[:start] + message[end + 1 :]
    return message


COLLECTIVE_SCENARIOS = {
    "mismatched": "only rank 0 calls all_reduce (the bug)",
    "mismatched, TORCH_DISTRIBUTED_DEBUG=DETAIL": "the same bug with collective checking on",
    "fixed": "every rank calls all_reduce",
}


def _collective_worker() -> None:
    """One rank of :func:`run_collectives`, one gloo group per scenario."""
    import time

    import torch.distributed as dist

    torch.set_num_threads(1)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    seconds = float(os.environ["COURSE_COLLECTIVE_TIMEOUT"])
    timeout = datetime.timedelta(seconds=seconds)
    # [[scenario, port], ...]
    plan = json.loads(os.environ["COURSE_COLLECTIVE_PLAN"])
    for scenario, port in plan:
        mismatched = scenario.startswith("mismatched")
        detail = "DETAIL" in scenario
        level = dist.DebugLevel.DETAIL if detail else dist.DebugLevel.OFF
        dist.set_debug_level(level)
        result: dict[str, Any] = {"scenario": scenario, "rank": rank}
        try:
            dist.init_process_group(
                "gloo",
                init_method=f"tcp://127.0.0.1:{port}",
                rank=rank,
                world_size=world_size,
                timeout=timeout,
            )
            started = time.perf_counter()
            metric = torch.tensor([float(rank + 1)])
            try:
                # the bug: only rank 0 joins the all_reduce ("log on rank 0")
                if not mismatched or rank == 0:
                    dist.all_reduce(metric)
                dist.barrier()
                result.update(ok=True, result=metric.tolist())
            finally:
                result["seconds"] = round(time.perf_counter() - started, 2)
        except Exception as error:  # noqa: BLE001 - report what it raised
            message = tidy_collective_error(describe_error(error, 2000))
            result.update(ok=False, error=message)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        print(json.dumps(result), flush=True)


def run_collectives(
    scenarios=tuple(COLLECTIVE_SCENARIOS),
    world_size: int = 2,
    timeout_s: float = 4.0,
    hard_timeout_s: float = 120.0,
) -> dict[str, list[dict]]:
    """Launch ``world_size`` gloo processes on 127.0.0.1; in each scenario every rank all-reduces
    a tensor (``rank + 1``), then meets the others at a barrier.

    ``mismatched``: only rank 0 calls ``all_reduce``, so every rank waits for a partner that
    never comes until the process group's ``timeout_s`` raises. With ``TORCH_DISTRIBUTED_DEBUG=DETAIL``
    the ranks compare each collective first and fail at once with the mismatch. ``fixed``:
    everyone calls it. Both processes run all scenarios (one start-up); processes that outlive
    ``hard_timeout_s`` are killed. Returns ``{scenario: one row per rank}`` with the seconds
    spent in the collectives."""
    unknown = [s for s in scenarios if s not in COLLECTIVE_SCENARIOS]
    if unknown or world_size < 2:
        raise ValueError(
            f"Scenarios must be among {list(COLLECTIVE_SCENARIOS)} (got {unknown}) "
            f"and world_size >= 2 (got {world_size})."
        )
    plan = [[scenario, free_port()] for scenario in scenarios]
    env = os.environ | {
        "WORLD_SIZE": str(world_size),
        "COURSE_COLLECTIVE_PLAN": json.dumps(plan),
        "COURSE_COLLECTIVE_TIMEOUT": str(timeout_s),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("TORCH_DISTRIBUTED_DEBUG", None)
    if sys.platform.startswith("linux"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # loopback only
    code = "from course_lib.checks import _collective_worker; _collective_worker()"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env | {"RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world_size)
    ]
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=hard_timeout_s)
    found: dict[tuple[str, int], dict] = {}
    for process in processes:
        try:
            remaining = max(1.0, (deadline - datetime.datetime.now()).total_seconds())
            out, _ = process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            process.kill()
            out, _ = process.communicate()
        for line in out.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                found[(row["scenario"], row["rank"])] = row
    results: dict[str, list[dict]] = {}
    for scenario in scenarios:
        results[scenario] = []
        for rank in range(world_size):
            row = found.get(
                (scenario, rank),
                {
                    "ok": False,
                    "error": "no result: the process was killed "
                    f"after the hard timeout of {hard_timeout_s} s or crashed",
                },
            )
            results[scenario].append(
                {
                    "rank": rank,
                    "ok": row["ok"],
                    "all_reduce result": row.get("result", ""),
                    "seconds in collectives": row.get("seconds", ""),
                    "error": row.get("error", ""),
                }
            )
    return results


# --------------------------------------------------------------------------- NaN loss


class NonFiniteLoss(CourseError):
    """The loss became nan or inf; ``losses`` holds the values up to that step."""

    def __init__(self, message: str, losses: list[float]):
        super().__init__(message)
        self.losses = losses


def nonfinite_parameters(model) -> list[str]:
    """Names of parameters whose values (or gradients) contain nan or inf."""
    bad = []
    for name, param in model.named_parameters():
        if not torch.isfinite(param).all():
            bad.append(name)
        elif param.grad is not None and not torch.isfinite(param.grad).all():
            bad.append(f"{name} (gradient)")
    return bad


def guarded_training(
    model,
    optimizer,
    blocks: torch.Tensor,
    steps: int,
    batch_size: int = 8,
    max_grad_norm: float | None = None,
) -> list[float]:
    """A plain training loop that checks the loss before every backward pass.

    Returns the losses; raises :class:`NonFiniteLoss` at the first nan/inf loss, naming the
    step and the parameters that are already non-finite, with the usual causes and fixes."""
    if len(blocks) < batch_size:
        raise ValueError(f"Need at least {batch_size} blocks, got {len(blocks)}.")
    model.train()
    losses: list[float] = []
    for step in range(steps):
        start = (step * batch_size) % (len(blocks) - batch_size + 1)
        batch = blocks[start : start + batch_size].to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            bad = nonfinite_parameters(model)
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise NonFiniteLoss(
                f"loss is {loss.item()} at step {step + 1} (earlier losses: {[round(x, 3) for x in losses]}); "
                f"non-finite parameters: {shown or 'none'}. Usual causes: 16-bit weights updated by Adam "
                "(eps=1e-8 is 0 in float16), a learning rate far too high, log(0) or 0/0 in a custom loss. "
                "Fixes: keep fp32 master weights (mixed precision: bf16=True / fp16=True in TrainingArguments), "
                "lower the learning rate, clip gradients (max_grad_norm).",
                losses,
            )
        losses.append(loss.item())
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


# --------------------------------------------------------------------------- degenerate generation

DEGENERATION_SETTINGS: dict[str, dict] = {
    "greedy (no fix)": {"do_sample": False},
    "greedy + repetition_penalty=1.3": {"do_sample": False, "repetition_penalty": 1.3},
    "greedy + no_repeat_ngram_size=3": {"do_sample": False, "no_repeat_ngram_size": 3},
    "sampling (temperature 0.8, top_p 0.9)": {"do_sample": True, "temperature": 0.8, "top_p": 0.9},
}


def repeated_ngram_fraction(ids: list[int], n: int = 3) -> float:
    """Share of the n-grams in ``ids`` that already occurred earlier (0 = no repetition)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


@torch.no_grad()
def degeneration_table(
    model,
    tokenizer,
    prompts: list[str],
    settings: dict[str, dict] | None = None,
    max_new_tokens: int = 60,
    n: int = 3,
    seed: int = 0,
) -> list[dict]:
    """For each decoding setting: mean repeated-n-gram fraction over ``prompts`` (exactly
    ``max_new_tokens`` new tokens each, so lengths are equal) and the first continuation."""
    from transformers import GenerationConfig, set_seed

    rows = []
    for name, options in (settings or DEGENERATION_SETTINGS).items():
        config = GenerationConfig(
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **options,
        )
        fractions, first = [], ""
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
            set_seed(seed)
            new = model.generate(**inputs, generation_config=config)[
                0, inputs["input_ids"].shape[1] :
            ].tolist()
            fractions.append(repeated_ngram_fraction(new, n))
            first = first or tokenizer.decode(new, skip_special_tokens=True)
        rows.append(
            {
                "setting": name,
                f"repeated {n}-grams": round(sum(fractions) / len(fractions), 3),
                "example": " ".join(f"{prompts[0]}{first}".split()),
            }
        )
    return rows


# --------------------------------------------------------------------------- quantized reload


class ReloadMismatch(CourseError):
    """A reloaded checkpoint does not reproduce the model that was saved."""


QUANTIZED_DTYPES = {"I8", "U8", "I4", "U4", "F8_E4M3", "F8_E5M2"}


def safetensors_dtypes(folder: str | Path) -> dict[str, int]:
    """How many tensors of each dtype the ``*.safetensors`` files of ``folder`` hold (header only)."""
    counts: dict[str, int] = {}
    for path in Path(folder).glob("*.safetensors"):
        with open(path, "rb") as handle:
            header_size = struct.unpack("<Q", handle.read(8))[0]
            header = json.loads(handle.read(header_size))
        for name, entry in header.items():
            if name != "__metadata__":
                counts[entry["dtype"]] = counts.get(entry["dtype"], 0) + 1
    return counts


def checkpoint_problems(folder: str | Path) -> list[str]:
    """Static checks of a saved checkpoint: integer weight tensors without a ``quantization_config``
    in ``config.json`` reload as floats (silently wrong)."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    quantized = {dtype: n for dtype, n in safetensors_dtypes(folder).items() if dtype in QUANTIZED_DTYPES}
    if quantized and "quantization_config" not in config:
        return [
            f"{sum(quantized.values())} quantized tensors ({', '.join(quantized)}) but config.json has no "
            "quantization_config: from_pretrained would load the integers as float weights. Restore the "
            "config.json saved with the quantized model."
        ]
    return []


def verify_reload(reference_perplexity: float, reloaded_perplexity: float, tolerance: float = 0.05) -> dict:
    """Raise :class:`ReloadMismatch` when the reloaded model's perplexity differs from the one
    measured before saving by more than ``tolerance`` (relative); otherwise return both."""
    change = reloaded_perplexity / reference_perplexity - 1.0
    summary = {
        "before save": round(reference_perplexity, 2),
        "after reload": round(reloaded_perplexity, 2),
        "relative change": round(change, 4),
    }
    if abs(change) > tolerance:
        raise ReloadMismatch(
            f"Perplexity {summary['after reload']} after reload vs {summary['before save']} before saving "
            f"({change:+.0%}): the checkpoint did not reload as saved. Check the load report for unexpected "
            "keys and config.json for its quantization_config."
        )
    return summary


@contextlib.contextmanager
def quiet_int8_warnings() -> Iterator[None]:
    """Hide bitsandbytes' per-call note (logged) that CPU int8 matmuls cast their inputs to float16."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="MatMul8bitLt")
            yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- QLoRA after an evaluation


def dequantized_reference(model, source: str):
    """An fp32 twin of the QLoRA ``model`` (a peft model on a bitsandbytes 4-bit base): the base
    loaded from ``source`` in float32, each linear weight replaced by the dequantized 4-bit weight,
    and the same LoRA matrices. Its gradients are what QLoRA's should be."""
    import copy

    from bitsandbytes.functional import dequantize_4bit
    from bitsandbytes.nn import Linear4bit
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from .env import ignore_checkpointing_rename

    config = copy.deepcopy(model.peft_config["default"])
    with ignore_checkpointing_rename():
        reference = get_peft_model(AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32), config)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Linear4bit):
                modules[name].weight.copy_(dequantize_4bit(module.weight.data, module.weight.quant_state))
        reference.load_state_dict({n: p for n, p in model.named_parameters() if "lora_" in n}, strict=False)
    return reference


def lora_gradients(model, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The gradient of every trainable tensor for one training-mode batch (language-model loss);
    the model's mode is restored and its gradients cleared afterwards."""
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():  # bitsandbytes' repacked kernel warns that it has no backward
        warnings.filterwarnings("ignore", "bitsandbytes::gemv_4bit", UserWarning)
        ids = input_ids.to(model.device)
        model(input_ids=ids, labels=ids).loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return grads


def qlora_gradient_error(model, source: str, input_ids: torch.Tensor) -> float:
    """Largest relative error (max |g - g_ref| / max |g_ref|, over the LoRA tensors) of a QLoRA
    model's gradients against :func:`dequantized_reference`'s: 0 up to rounding when they are right.
    (Freshly initialised LoRA A matrices get zero gradients; those count as right when both are 0.)"""
    wanted = lora_gradients(dequantized_reference(model, source), input_ids)
    grads = lora_gradients(model, input_ids)
    return max(
        ((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)).item() for n, g in wanted.items()
    )

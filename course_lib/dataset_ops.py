"""Working with 🤗 datasets: local files, fast ``map``, instruction formatting, streaming and mixing,
and Arrow memory mapping: what chapter 2 measures, and what it does not teach (the course files,
the Alpaca template, stream adapters). Chapter 2 writes the ``datasets`` calls themselves.

* :func:`write_course_files` writes the course corpus as JSONL, CSV and plain-text files, so a
  chapter can show ``load_dataset("json" | "csv" | "text", ...)`` on real local files.
* :func:`time_map` and :func:`compare_map_modes` time ``Dataset.map`` per example, batched and with
  ``num_proc``.
* :func:`format_alpaca` turns instruction/input/output rows into Alpaca-style prompts.
* :func:`as_text_stream`, :func:`realised_mixing` measure what ``interleave_datasets`` really mixes.
* :func:`arrow_allocated_bytes` measures the RAM a loaded Arrow table takes (chapter 2 compares a
  memory-mapped ``load_from_disk`` with an in-memory copy).
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .profiles import CourseError

WORD_PATTERN = re.compile(r"[a-z]+")


# ---------------------------------------------------------------------------------------------------
# Local files


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def write_course_files(folder: str | Path, topics: int = 20) -> dict[str, Path]:
    """Write the course corpus to ``folder`` in three formats and return their paths.

    * ``docs.jsonl``: every corpus document (``id``, ``source``, ``text``, ``split``), one JSON object
      per line;
    * ``api.csv``: one row per documented function/class of the standard library (``module``,
      ``qualname``, ``kind``, ``signature``, ``summary``);
    * ``topics/*.txt``: the first ``topics`` language-reference topics, one plain-text file each.

    The corpus comes from :func:`course_lib.assets.corpus` (built from the installed Python's own
    documentation in seconds, under any profile).
    """
    from . import assets
    from .assets.corpus import first_sentence

    if topics < 1:
        raise ValueError(f"topics must be at least 1, not {topics}.")
    corpus = assets.corpus()
    folder = Path(folder)
    (folder / "topics").mkdir(parents=True, exist_ok=True)
    documents = [
        row for split in ("train", "validation", "test") for row in _read_jsonl(corpus / f"{split}.jsonl")
    ]
    with open(folder / "docs.jsonl", "w", encoding="utf-8") as handle:
        for row in documents:
            handle.write(
                json.dumps({k: row[k] for k in ("id", "source", "text", "split")}, ensure_ascii=False) + "\n"
            )
    with open(folder / "api.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["module", "qualname", "kind", "signature", "summary"])
        writer.writeheader()
        for entry in _read_jsonl(corpus / "api.jsonl"):
            writer.writerow(
                {
                    "module": entry["module"],
                    "qualname": entry["qualname"],
                    "kind": entry["kind"],
                    "signature": entry["signature"],
                    "summary": first_sentence(entry["docstring"]),
                }
            )
    topic_docs = [row for row in documents if row["source"] == "topic"][:topics]
    for row in topic_docs:
        name = re.sub(r"[^a-z0-9]+", "_", row["id"].removeprefix("topic:").lower()).strip("_")
        (folder / "topics" / f"{name}.txt").write_text(row["text"], encoding="utf-8")
    return {"jsonl": folder / "docs.jsonl", "csv": folder / "api.csv", "text": folder / "topics"}


def file_sizes(paths: dict[str, Path]) -> list[dict[str, Any]]:
    """One row per written file or folder: what it is and its size on disk."""
    rows = []
    for kind, path in paths.items():
        files = [p for p in Path(path).rglob("*") if p.is_file()] if Path(path).is_dir() else [Path(path)]
        rows.append(
            {
                "format": kind,
                "path": Path(path).name + ("/" if Path(path).is_dir() else ""),
                "files": len(files),
                "KB": round(sum(p.stat().st_size for p in files) / 1e3, 1),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# map: per example, batched, several processes


def time_map(dataset, function: Callable, **map_kwargs: Any):
    """``dataset.map(function, **map_kwargs)`` and the seconds it took, with the cache off.

    ``map`` caches results by fingerprint: timing the same call twice would measure a cache hit,
    so ``load_from_cache_file=False`` unless given.
    """
    map_kwargs.setdefault("load_from_cache_file", False)
    start = time.perf_counter()
    result = dataset.map(function, **map_kwargs)
    return result, time.perf_counter() - start


def compare_map_modes(
    dataset,
    function: Callable,
    fn_kwargs: dict | None = None,
    num_procs: Sequence[int] = (2,),
    batch_size: int = 1000,
) -> list[dict[str, Any]]:
    """Time ``map`` per example, batched, and batched with each of ``num_procs`` processes.

    Every row reports seconds, rows per second, the speed-up over per-example ``map``, and whether
    its output equals the per-example output (it must: only the speed may change).
    """
    settings = [("per example", False, None), ("batched", True, None)]
    settings += [(f"batched, num_proc={n}", True, n) for n in num_procs]
    rows, reference, baseline = [], None, None
    for name, batched, num_proc in settings:
        result, seconds = time_map(
            dataset,
            function,
            batched=batched,
            batch_size=batch_size,
            num_proc=num_proc,
            fn_kwargs=fn_kwargs or {},
            desc=name,
        )
        columns = sorted(set(result.column_names) - set(dataset.column_names))
        output = result.select_columns(columns).to_dict()
        if reference is None:
            reference, baseline = output, seconds
        rows.append(
            {
                "mode": name,
                "seconds": round(seconds, 3),
                "rows/s": round(len(dataset) / seconds),
                "speed-up": round(baseline / seconds, 1),
                "same output": output == reference,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# Instruction formatting

ALPACA_HEADER_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes "
    "the request."
)
ALPACA_HEADER_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that "
    "appropriately completes the request."
)


def alpaca_prompt(instruction: str, input: str = "") -> str:  # noqa: A002 - the dataset's column name
    """The Alpaca prompt up to and including ``### Response:\\n`` (the model writes the rest)."""
    if not instruction.strip():
        raise ValueError("The instruction is empty; every Alpaca row needs one.")
    if input.strip():
        return (
            f"{ALPACA_HEADER_WITH_INPUT}\n\n### Instruction:\n{instruction}\n\n"
            f"### Input:\n{input}\n\n### Response:\n"
        )
    return f"{ALPACA_HEADER_NO_INPUT}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def format_alpaca(example: dict[str, Any]) -> dict[str, str]:
    """One instruction/input/output row -> ``prompt``, ``completion`` and ``text`` (prompt + completion).

    ``prompt``/``completion`` is the shape TRL's ``SFTTrainer`` trains on with the loss on the
    completion only; ``text`` is the whole document for plain language modelling.
    """
    missing = [k for k in ("instruction", "output") if k not in example]
    if missing:
        raise CourseError(
            f"Alpaca rows need 'instruction' and 'output' (and optionally 'input'); "
            f"missing {missing}, got {sorted(example)}."
        )
    prompt = alpaca_prompt(example["instruction"], example.get("input") or "")
    return {"prompt": prompt, "completion": example["output"], "text": prompt + example["output"]}


# ---------------------------------------------------------------------------------------------------
# Streaming and mixing


def as_text_stream(stream, to_text: Callable[[dict], str], origin: str):
    """A stream of ``{"text", "origin"}`` rows from any stream, so that differently shaped datasets
    can be interleaved (``interleave_datasets`` needs identical columns)."""
    columns = list(stream.column_names or [])
    return stream.map(lambda row: {"text": to_text(row), "origin": origin}, remove_columns=columns)


def message_text(value: Any) -> str:
    """A string, or a conversation (a list of ``{"role", "content"}`` messages) joined into one text.

    Preference data comes both ways: the course's rows hold strings, Hub sets such as
    ``trl-lib/ultrafeedback_binarized`` hold conversations.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(str(m["content"]) for m in value)
    raise CourseError(
        f"Expected a string or a list of {{'role', 'content'}} messages, got {type(value).__name__}."
    )


def preference_text(row: dict[str, Any]) -> str:
    """The prompt and the chosen answer of a preference row as one text (for mixing into a corpus).

    A conversational row with an implicit prompt (no ``prompt`` column: the user turn opens
    ``chosen``, as in ``trl-lib/ultrafeedback_binarized``) is its ``chosen`` conversation."""
    if "prompt" not in row and isinstance(row.get("chosen"), list):
        return message_text(row["chosen"])
    missing = [k for k in ("prompt", "chosen") if k not in row]
    if missing:
        raise CourseError(f"Preference rows need 'prompt' and 'chosen'; missing {missing}.")
    prompt, chosen = message_text(row["prompt"]), message_text(row["chosen"])
    return chosen if chosen.startswith(prompt) else prompt + "\n" + chosen


def realised_mixing(
    rows: Iterable[dict], requested: dict[str, float], n: int, key: str = "origin"
) -> list[dict[str, Any]]:
    """Count ``key`` over the first ``n`` rows and compare with the requested probabilities.

    Each row has the requested and realised share and their difference in binomial standard
    errors (``sqrt(p(1-p)/n)``): values within about 2 are what chance alone gives.
    """
    if n < 1:
        raise ValueError("n must be positive.")
    if abs(sum(requested.values()) - 1) > 1e-6:
        raise ValueError(f"requested probabilities sum to {sum(requested.values())}, not 1.")
    counts: Counter = Counter()
    seen = 0
    for row in rows:
        if seen == n:
            break
        counts[row[key]] += 1
        seen += 1
    if seen < n:
        raise CourseError(
            f"The stream ended after {seen} rows, before {n}; ask for fewer rows or use "
            "stopping_strategy='all_exhausted'."
        )
    table = []
    for name, p in requested.items():
        share = counts[name] / n
        error = math.sqrt(p * (1 - p) / n) if 0 < p < 1 else 0.0
        table.append(
            {
                "source": name,
                "requested": p,
                "rows": counts[name],
                "realised": round(share, 3),
                "difference in std errors": round((share - p) / error, 2) if error else 0.0,
            }
        )
    return table


def word_counts(texts: Iterable[str]) -> Counter:
    """Lower-cased words (runs of ``a-z``) counted over ``texts``."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(WORD_PATTERN.findall(text.lower()))
    return counts


# ---------------------------------------------------------------------------------------------------
# Memory mapping: what a loaded table costs


def arrow_allocated_bytes() -> int:
    """Bytes Arrow has allocated in RAM right now (its memory pool).

    A memory-mapped table allocates nothing: its buffers point into the mapped file. The process's
    resident memory (RSS) is a poorer measure here: the allocator reuses freed memory, so RSS can
    even shrink while a table is loaded.
    """
    import pyarrow as pa

    return pa.total_allocated_bytes()

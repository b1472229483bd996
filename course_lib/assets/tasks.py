"""Task datasets derived from the corpus's API entries; every label comes from the data.

* classification: a docstring -> the standard-library package it belongs to;
* sft: instruction/input/output pairs whose answers are facts of the source
  (the module that defines a function, its parameters, its docstring's first sentence);
* preference: the same prompts, the true answer as ``chosen`` and another
  entry's answer to the same kind of question as ``rejected``.

Rows are split train/validation/test (80/10/10) by a hash of the API entry's
name, so a function never appears in two splits. Each row also records
``corpus_split``: the split of the corpus document that describes the entry,
so a chapter can ask whether pretraining saw it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from .corpus import first_sentence

CLASSIFICATION_LABELS = ["asyncio", "email", "unittest", "xml"]
TASK_SPLITS = ("train", "validation", "test")


def task_split(key: str) -> str:
    """80/10/10 split by a hash of ``key``."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _read_api(corpus_folder: Path) -> list[dict]:
    with open(corpus_folder / "api.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def classification_rows(api: list[dict], seed: int = 0) -> list[dict]:
    """Balanced docstring -> package rows (downsampled to the smallest class)."""
    by_label: dict[str, list[dict]] = {name: [] for name in CLASSIFICATION_LABELS}
    for entry in api:
        package = entry["module"].split(".")[0]
        if package in by_label:
            text = " ".join(entry["docstring"].split())[:400]
            by_label[package].append(
                {
                    "text": text,
                    "label": CLASSIFICATION_LABELS.index(package),
                    "source": f"{entry['module']}.{entry['qualname']}",
                }
            )
    smallest = min(len(rows) for rows in by_label.values())
    rng = random.Random(seed)
    chosen = [row for name in CLASSIFICATION_LABELS for row in rng.sample(by_label[name], smallest)]
    rng.shuffle(chosen)
    return chosen


def sft_rows(api: list[dict]) -> list[dict]:
    """Alpaca-shaped rows (instruction, input, output) plus ``task`` and provenance."""
    name_counts = Counter(e["qualname"] for e in api if e["kind"] == "function")
    rows = []
    for entry in api:
        full = f"{entry['module']}.{entry['qualname']}"
        base = {"source": full, "corpus_split": entry["split"]}
        if entry["kind"] == "function" and name_counts[entry["qualname"]] == 1:
            rows.append(
                base
                | {
                    "task": "module",
                    "input": "",
                    "output": entry["module"],
                    "instruction": f"Which standard-library module defines the "
                    f"function `{entry['qualname']}`?",
                }
            )
        if entry["kind"] in ("function", "method") and len(entry["signature"]) <= 60:
            rows.append(
                base
                | {
                    "task": "signature",
                    "input": "",
                    "output": entry["signature"],
                    "instruction": f"What are the parameters of `{full}`?",
                }
            )
        summary = first_sentence(entry["docstring"])
        if 20 <= len(summary) <= 120:
            rows.append(
                base
                | {
                    "task": "summary",
                    "input": "",
                    "output": summary,
                    "instruction": f"Describe `{full}` in one sentence.",
                }
            )
    return rows


def preference_rows(sft: list[dict], seed: int = 0) -> list[dict]:
    """prompt/chosen/rejected: the true answer against another entry's answer to the same task."""
    rng = random.Random(seed)
    by_task: dict[str, list[str]] = {}
    for row in sft:
        by_task.setdefault(row["task"], []).append(row["output"])
    rows = []
    for row in sft:
        pool = by_task[row["task"]]
        rejected = row["output"]
        while rejected == row["output"]:
            rejected = pool[rng.randrange(len(pool))]
        rows.append(
            {
                "prompt": row["instruction"],
                "chosen": row["output"],
                "rejected": rejected,
                "task": row["task"],
                "source": row["source"],
                "corpus_split": row["corpus_split"],
            }
        )
    return rows


def _write_splits(rows: list[dict], folder: Path) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in TASK_SPLITS:
        chosen = [r for r in rows if task_split(r["source"]) == split]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for row in chosen:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = len(chosen)
    return counts


def write_tasks(corpus_folder: Path, out_folder: Path) -> dict:
    """Write ``classification/``, ``sft/`` and ``preference/`` split files; return row counts."""
    api = _read_api(corpus_folder)
    sft = sft_rows(api)
    counts = {
        "classification": _write_splits(classification_rows(api), out_folder / "classification"),
        "sft": _write_splits(sft, out_folder / "sft"),
        "preference": _write_splits(preference_rows(sft), out_folder / "preference"),
    }
    (out_folder / "classification" / "labels.json").write_text(json.dumps(CLASSIFICATION_LABELS))
    return {"rows": counts}

"""Shared test setup: offline, strict about deprecations, and a report of notebook timings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("COURSE_STRICT_WARNINGS", "1")  # inherited by the notebook kernels
os.environ.pop("COURSE_PROFILE", None)

REPO = Path(__file__).resolve().parents[1]
TIMINGS = REPO / "_build" / "ci" / "notebook_timings.json"
WHEEL_INSTALL = REPO / "_build" / "ci" / "wheel_install.json"  # tests/test_book.py
HUB_TIMINGS = REPO / "_build" / "ci" / "hub_notebook_timings.json"  # tests/test_hub_profile.py


def pytest_configure(config):
    from course_lib.env import strict_warnings

    strict_warnings()
    TIMINGS.unlink(missing_ok=True)  # only this run's notebook timings are reported
    HUB_TIMINGS.unlink(missing_ok=True)
    WHEEL_INSTALL.unlink(missing_ok=True)


def tiny_llama_config(**overrides):
    """A Llama config small enough for unit tests (2 layers of width 16, vocabulary 64)."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaConfig(**(settings | overrides))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty asset cache, so a test can build, corrupt and rebuild without touching the real one."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def course_lm():
    """The pretrained course LM and its tokenizer (built by `python -m course_lib assets build`)."""
    from course_lib.models import load_model, load_tokenizer

    return load_model("causal-lm"), load_tokenizer("causal-lm")


def pytest_collection_modifyitems(items):
    """Unit tests first (fast feedback), the book (notebooks, build, browser) last."""
    items.sort(key=lambda item: item.get_closest_marker("book") is not None)


_STAGE_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """Sum setup+call+teardown time per stage: unit tests, and each book test."""
    path, _, name = report.nodeid.partition("::")
    book = path.endswith(("test_book.py", "test_hub_profile.py"))
    stage = f"book: {name}" if book else "unit and repository tests"
    _STAGE_SECONDS[stage] = _STAGE_SECONDS.get(stage, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("time per stage")
    for stage, seconds in _STAGE_SECONDS.items():
        terminalreporter.write_line(f"{seconds:7.1f} s  {stage}")
    if TIMINGS.exists():
        rows = json.loads(TIMINGS.read_text())
        terminalreporter.section("notebook execution times (budget 120 s each, offline, this machine)")
        for row in rows:
            flag = "" if row["seconds"] <= row["budget"] else "  OVER BUDGET"
            terminalreporter.write_line(f"{row['seconds']:7.1f} s  {row['status']:7} {row['notebook']}{flag}")
        terminalreporter.write_line(f"{sum(r['seconds'] for r in rows):7.1f} s  total")
    if WHEEL_INSTALL.exists():
        seconds = json.loads(WHEEL_INSTALL.read_text())["seconds"]
        terminalreporter.write_line(f"{seconds:7.1f} s  (before them) wheel built, installed in a fresh venv")
    if HUB_TIMINGS.exists():
        rows = json.loads(HUB_TIMINGS.read_text())
        terminalreporter.section("hub profile: execution times (synthetic Hub, offline, this machine)")
        for row in rows:
            terminalreporter.write_line(f"{row['seconds']:7.1f} s  {row['status']:7} {row['notebook']}")
        terminalreporter.write_line(f"{sum(r['seconds'] for r in rows):7.1f} s  total")

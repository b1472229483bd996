"""Shared test setup: offline, strict about deprecations, and a report of notebook timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

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
        offline = json.loads(TIMINGS.read_text())
        rows = offline["notebooks"]
        # the budget (120 s) is a chapter's time alone on 2 cores: the book build logs those
        terminalreporter.section(
            "notebook execution times (offline, two notebooks at a time, one thread each)"
        )
        for row in rows:
            terminalreporter.write_line(f"{row['seconds']:7.1f} s  {row['status']:7} {row['notebook']}")
        terminalreporter.write_line(f"{sum(r['seconds'] for r in rows):7.1f} s  total")
        terminalreporter.write_line(f"{offline['wall_seconds']:7.1f} s  wall clock")
    if WHEEL_INSTALL.exists():
        seconds = json.loads(WHEEL_INSTALL.read_text())["seconds"]
        terminalreporter.write_line(f"{seconds:7.1f} s  (before them) wheel built, installed in a fresh venv")
    if HUB_TIMINGS.exists():
        hub = json.loads(HUB_TIMINGS.read_text())
        rows = hub["notebooks"]
        terminalreporter.section(
            "hub profile: execution times (synthetic Hub, offline, two notebooks at a time, one thread each)"
        )
        for row in rows:
            terminalreporter.write_line(f"{row['seconds']:7.1f} s  {row['status']:7} {row['notebook']}")
        terminalreporter.write_line(f"{sum(r['seconds'] for r in rows):7.1f} s  total")
        terminalreporter.write_line(f"{hub['wall_seconds']:7.1f} s  wall clock")


def _stack_constraints(path: Path) -> Path:
    """The exact versions pyproject's extras pin (torch's CPU build, the stack, the book and test
    tools) as a pip constraints file: the wheel's own loose ranges resolve to the verified stack."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = [r.split("#")[0].strip() for name in ("cpu", "stack", "book", "test") for r in extras[name]]
    path.write_text("\n".join(pin for pin in pins if "==" in pin) + "\n")
    return path


_PREBUILD_DEEPSPEED_OP = (
    "import course_lib; course_lib.install_extras('deepspeed'); "
    "from course_lib.distributed import build_deepspeed_ops; build_deepspeed_ops()"
)


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> dict[str, str]:
    """course_lib as a learner gets it: the built wheel installed into a fresh virtual environment
    outside the checkout (what the setup cell does in Colab), plus the kernel and nbmake to execute
    notebooks there. Returns the environment that runs that interpreter. Session-wide: the offline
    book run (tests/test_book.py) and the hub-profile run (tests/test_hub_profile.py) share it."""
    root = tmp_path_factory.mktemp("wheel")
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root, REPO],
        check=True,
        capture_output=True,
    )
    (wheel,) = root.glob("course_lib-*.whl")
    subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True)
    env = os.environ | {
        # The chapters' install_extras (the encoder wheel, bitsandbytes...) resolve to the stack too.
        "PIP_CONSTRAINT": str(_stack_constraints(root / "constraints.txt")),
        "PATH": f"{root / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(root / "venv"),
        "PYTHONPATH": "",
        "PYTHONWARNINGS": "",
    }
    installed = subprocess.run(
        [
            "python",
            "-m",
            "pip",
            "install",
            "-q",
            f"{wheel}[cpu]",
            "ipykernel",
            "nbmake",
            "pytest",
            "pytest-xdist",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    # What `assets build` does on a learner's machine, in this environment: DeepSpeed's CPU op
    # compiled once (25 s), so that chapter 14's time is the chapter's own.
    prebuilt = subprocess.run(
        ["python", "-c", _PREBUILD_DEEPSPEED_OP], env=env, capture_output=True, text=True
    )
    assert prebuilt.returncode == 0, prebuilt.stderr[-4000:]
    WHEEL_INSTALL.parent.mkdir(parents=True, exist_ok=True)
    WHEEL_INSTALL.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
    return env

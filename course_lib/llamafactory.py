"""LLaMA-Factory in a virtual environment of its own (chapter 8's last section).

LLaMA-Factory 0.9.5, the newest release on the registry, pins older libraries than the course's
stack: transformers <= 5.6, datasets <= 4.0, peft <= 0.18.1, trl <= 0.24, accelerate <= 1.11
(:func:`requirements` reads the exact ranges from the built environment). Installed next to the
course it would downgrade them, so it gets its own environment in the course cache
(``~/.cache/course_lib/py311/llamafactory-env``), built with the ordinary tools:

1. ``python -m venv`` without ``--system-site-packages``: the course's torchao 0.18 would leak in,
   and peft 0.18.1's LoRA layer dispatch breaks on it.
2. ``pip install llamafactory==0.9.5 -c <file with torch==<the course's torch>>``. The pin makes
   pip reuse the CPU torch wheel the course installed (without it pip resolves a multi-GB CUDA
   torch). ``-c`` adds to the constraint files pip's configuration already names; the
   ``PIP_CONSTRAINT`` variable is dropped for this one command, because it usually holds the
   course's own stack pins, which contradict LLaMA-Factory's.
3. Two repairs, each made only when an import probe fails inside the new environment:

   - torchvision from the registry is a CUDA build (0.28.0 when this was written); with the CPU
     torch, ``import torchvision`` raises "operator torchvision::nms does not exist" and
     transformers, which imports it when present, then fails to import. It is uninstalled:
     transformers and LLaMA-Factory's text fine-tuning work without it.
   - torchaudio's newest registry release (2.11) was compiled for another torch, so its compiled
     extension fails to load; LLaMA-Factory imports torchaudio unconditionally (its multimodal
     plugin, for audio datasets). Its ``lib/*.so`` files are deleted: torchaudio then imports in
     pure-Python mode (its loader returns False when the file is absent), which text data never
     leaves.

A marker file written last (:data:`MARKER`) records the pins the environment was built for; an
environment without it (interrupted build) or with other pins (the course's torch changed) is
rebuilt. ``python -m course_lib llamafactory build`` builds it, and so does
``python -m course_lib assets build``; when pip cannot build it (no network, no wheel), chapter 8's
LLaMA-Factory cells print how to build it and skip, except in CI (``CI=true``), where
:func:`environment_status` raises and the build fails instead of publishing a skipped section.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from .assets.cache import _locked, cache_root
from .profiles import CourseError

LLAMAFACTORY_VERSION = "0.9.5"
ENV_NAME = "llamafactory-env"
MARKER = "course_environment.json"
BUILD_COMMAND = "python -m course_lib llamafactory build"
# The libraries LLaMA-Factory pins that the course also uses (what chapter 8 prints side by side).
SHARED_LIBRARIES = ("transformers", "datasets", "peft", "trl", "accelerate", "torch")
# Environment variables that would change what the environment's Python runs or what pip resolves.
_OUTSIDE_VARIABLES = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONWARNINGS",
    "VIRTUAL_ENV",
    "PIP_CONSTRAINT",
    "MPLBACKEND",  # a Jupyter kernel's inline backend, which the other matplotlib lacks
)


class BuildFailed(CourseError):
    """pip or an import probe failed while building the environment."""


def environment_dir() -> Path:
    """Where the environment lives: ``llamafactory-env`` in the course cache."""
    return cache_root() / ENV_NAME


def course_torch_version() -> str:
    """The installed torch's public version (``2.13.0`` for ``2.13.0+cpu``)."""
    return metadata.version("torch").split("+")[0]


def pins() -> dict:
    """What an environment must have been built for to be used as it is."""
    return {
        "llamafactory": LLAMAFACTORY_VERSION,
        "torch": course_torch_version(),
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
    }


def read_marker(folder: Path) -> dict | None:
    """The marker of a finished build in ``folder``, or None (never built, or interrupted)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def cli_path(folder: Path | None = None) -> Path:
    """The environment's ``llamafactory-cli`` executable."""
    return Path(folder or environment_dir()) / "bin" / "llamafactory-cli"


def in_ci() -> bool:
    """Whether this process runs in CI (``CI`` set to anything but ``false``/``0``, as CI
    services set ``CI=true``): there a section that cannot run fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() not in ("", "false", "0", "no")


class NotReady(CourseError):
    """The environment cannot be used and this run is CI, where chapter 8's section must run."""


def environment_status(
    folder: Path | None = None, wanted: dict | None = None, *, strict: bool | None = None
) -> dict:
    """``{"ready": bool, "reason": str}``: whether the environment in ``folder`` (default: the
    cache's) can be used, and why not with the command that builds it; the reason reads after
    "LLaMA-Factory environment " ("not built: run `python -m course_lib llamafactory build`").

    ``strict`` (default: :func:`in_ci`) raises :class:`NotReady` instead of returning a
    not-ready status: chapter 8 calls this to decide whether its LLaMA-Factory cells run, and a
    CI build must fail rather than publish the section skipped. Outside CI the chapter prints
    the reason and skips the section visibly."""
    status = _status(Path(folder or environment_dir()), wanted or pins())
    if not status["ready"] and (in_ci() if strict is None else strict):
        raise NotReady(
            f"LLaMA-Factory environment {status['reason']}. CI=true: chapter 8's "
            "LLaMA-Factory section must run in CI, so this fails instead of skipping."
        )
    return status


def _status(folder: Path, wanted: dict) -> dict:
    """:func:`environment_status` without raising."""
    wanted = wanted or pins()
    marker = read_marker(folder)
    if not folder.exists():
        reason = "not built"
    elif marker is None:
        reason = "not finished (its build was interrupted)"
    elif marker.get("pins") != wanted:
        reason = f"built for {marker.get('pins')}, the course now needs {wanted}"
    elif not cli_path(folder).is_file():
        reason = "without llamafactory-cli"
    else:
        return {"ready": True, "reason": f"ready: llamafactory {wanted['llamafactory']}"}
    return {"ready": False, "reason": f"{reason}: run `{BUILD_COMMAND}`"}


def cli_environment() -> dict[str, str]:
    """Variables for running the environment's programs from the course's process: this process's
    environment without what would redirect the other interpreter (a PYTHONPATH, a
    ``PYTHONWARNINGS=error`` meant for the course's tests, the course's pip constraints, a
    notebook's matplotlib backend), with LLaMA-Factory's and transformers' logging at warnings,
    matplotlib drawing to files (LLaMA-Factory imports it to plot losses) and torch on one thread
    unless ``OMP_NUM_THREADS`` says otherwise: on 2 cores with another process busy (the notebook's
    kernel, a test run), 30 LoRA steps of the course LM took 72 s with torch's default two threads
    and 2.1 s with one."""
    env = {k: v for k, v in os.environ.items() if k not in _OUTSIDE_VARIABLES}
    env.update(LLAMAFACTORY_VERBOSITY="WARN", TRANSFORMERS_VERBOSITY="warning", MPLBACKEND="Agg")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(command: list, what: str) -> str:
    """Run ``command``; return its output, or raise :class:`BuildFailed` with its last lines."""
    done = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env=cli_environment()
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BuildFailed(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def import_error(folder: Path, module: str) -> str | None:
    """The last line of the error ``import module`` raises in the environment, or None."""
    python = Path(folder) / "bin" / "python"
    done = subprocess.run(
        [str(python), "-c", f"import {module}"], capture_output=True, text=True, env=cli_environment()
    )
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or ["(no message)"])[-1]


def _remove_torchvision(folder: Path, log: Callable[[str], None]) -> None:
    error = import_error(folder, "torchvision")
    if error is None:
        return
    log(f"  torchvision does not import ({error[:100]}): uninstalling it (text SFT needs none)")
    _run(
        [Path(folder) / "bin" / "python", "-m", "pip", "uninstall", "-y", "-q", "torchvision"],
        "pip uninstall",
    )


def _make_torchaudio_pure_python(folder: Path, log: Callable[[str], None]) -> None:
    error = import_error(folder, "torchaudio")
    if error is None:
        return
    libraries = sorted(Path(folder).glob("lib/python*/site-packages/torchaudio/lib/*.so"))
    log(
        f"  torchaudio does not import ({error[:100]}): deleting its {len(libraries)} compiled "
        "libraries (built for another torch) so it loads as pure Python"
    )
    for library in libraries:
        library.unlink()
    error = import_error(folder, "torchaudio")
    if error is not None:
        raise BuildFailed(f"torchaudio still does not import: {error}")


def _install(folder: Path, wanted: dict, log: Callable[[str], None]) -> None:
    log(f"  python -m venv {folder.name}")
    _run([sys.executable, "-m", "venv", folder], "python -m venv")
    constraints = folder / "course-constraints.txt"
    constraints.write_text(f"torch=={wanted['torch']}\n")
    log(f"  pip install llamafactory=={wanted['llamafactory']} (torch=={wanted['torch']}): minutes")
    pip = [folder / "bin" / "python", "-m", "pip", "install", "-q", "-c", constraints]
    _run(pip + [f"llamafactory=={wanted['llamafactory']}"], "pip install llamafactory")


def build_environment(log: Callable[[str], None] = print) -> Path:
    """Return the folder of a ready environment, building it first when
    :func:`environment_status` says it is not (raises :class:`BuildFailed` when pip or a probe
    fails; the half-built folder is removed)."""
    folder = environment_dir()
    wanted = pins()
    if _status(folder, wanted)["ready"]:
        return folder
    with _locked(folder.parent, ENV_NAME):
        if _status(folder, wanted)["ready"]:  # built meanwhile by another process
            return folder
        start = time.perf_counter()
        log(f"[course_lib] building LLaMA-Factory's environment in {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            _install(folder, wanted, log)
            _remove_torchvision(folder, log)
            _make_torchaudio_pure_python(folder, log)
            for module in ("transformers", "llamafactory.train.tuner"):
                error = import_error(folder, module)
                if error is not None:
                    raise BuildFailed(f"`import {module}` fails in the new environment: {error}")
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        seconds = round(time.perf_counter() - start, 1)
        (folder / MARKER).write_text(json.dumps({"pins": wanted, "build_seconds": seconds}, indent=2))
        log(f"[course_lib] LLaMA-Factory environment ready in {seconds} s")
    return folder


def requirements(folder: Path | None = None, libraries: tuple[str, ...] = SHARED_LIBRARIES) -> list[dict]:
    """One row per library in ``libraries``: the range LLaMA-Factory requires (read from the
    environment's installed metadata), the version installed there and the course's version."""
    folder = Path(folder or environment_dir())
    script = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({'requires': m.requires('llamafactory'), "
        f"'installed': {{n: m.version(n) for n in {list(libraries)!r}}}}}))"
    )
    found = json.loads(_run([folder / "bin" / "python", "-c", script], "reading the environment"))
    ranges = {}
    for requirement in found["requires"]:
        name = requirement.split(";")[0]
        for library in libraries:
            if name.startswith(library) and name[len(library) : len(library) + 1] in "<>=!~ ":
                ranges[library] = name[len(library) :].strip() or "any"
    return [
        {
            "library": library,
            "LLaMA-Factory needs": ranges.get(library, "any"),
            "its environment": found["installed"][library],
            "the course": metadata.version(library),
        }
        for library in libraries
    ]

"""Measuring memory and time on a CPU (chapter 15): the peak resident memory of a piece of code,
seconds per call, and the bytes an optimizer keeps as state.

How peak memory is measured. A GPU counts its own allocations (``torch.cuda.max_memory_allocated``);
a CPU has no such counter in torch, but Linux keeps every process's peak resident set size
(``VmHWM`` in ``/proc/self/status``) and resets it to the current size when ``5`` is written to
``/proc/self/clear_refs``. :func:`peak_memory` frees what the allocator still holds
(``gc.collect`` and glibc's ``malloc_trim``), reads the resident size, resets the peak, runs the
code and reports the peak minus the starting size: the most memory the code added at any moment.
Where ``clear_refs`` is missing (macOS, some sandboxes) a background thread samples the resident
size every millisecond instead (it can miss a peak shorter than that). The chapter checks either
method against an allocation of known size.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .profiles import CourseError

MB = 2**20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_bytes(key: str) -> int | None:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0]) * 1024
    return None


def resident_bytes() -> int:
    """This process's resident set size: the memory it occupies in RAM now."""
    found = _status_bytes("VmRSS")
    if found is not None:
        return found
    try:
        import psutil
    except ImportError as error:  # pragma: no cover - psutil ships with the course's stack
        raise CourseError("Measuring memory off Linux needs psutil: pip install psutil.") from error
    return int(psutil.Process().memory_info().rss)


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc ``malloc_trim``), so the
    resident size counts live objects only."""
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset the kernel's peak resident size to the current one; False where it can't."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


@dataclass
class Peak:
    """Filled in when a :func:`peak_memory` block ends: ``bytes`` above the starting resident size
    at the block's highest point, ``retained`` bytes still held when it ends (e.g. the activations
    a forward pass keeps for the backward pass), and the ``method`` that measured them."""

    bytes: int = 0
    retained: int = 0
    method: str = ""
    _samples: list[int] = field(default_factory=list, repr=False)

    @property
    def megabytes(self) -> float:
        return self.bytes / MB

    @property
    def retained_megabytes(self) -> float:
        return self.retained / MB


def _retained(start: int) -> int:
    release_freed_memory()
    return max(0, resident_bytes() - start)


@contextlib.contextmanager
def peak_memory() -> Iterator[Peak]:
    """``with peak_memory() as peak: step()`` -> ``peak.megabytes``: the most resident memory the
    block added at any moment (see the module's docstring for how); ``peak.retained_megabytes``:
    what it still holds at its end."""
    release_freed_memory()
    peak = Peak()
    start = resident_bytes()
    if _reset_peak():
        peak.method = "kernel peak RSS (VmHWM)"
        yield peak
        peak.bytes = max(0, (_status_bytes("VmHWM") or start) - start)
        peak.retained = _retained(start)
        return
    peak.method = "sampled RSS (1 ms)"
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak._samples.append(resident_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        peak._samples.append(resident_bytes())
        done.set()
        sampler.join()
        peak.bytes = max(0, max(peak._samples) - start)
        peak.retained = _retained(start)


def seconds_per_call(function: Callable[[], object], repeats: int = 2, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``function()`` over ``repeats`` calls after ``warmup`` calls
    (CUDA work is synchronised before each clock reading)."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1.")
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        function()
        _synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_step(step: Callable[[], object], repeats: int = 2, warmup: int = 1) -> dict[str, float]:
    """Peak memory (MB) and median seconds of ``repeats`` calls of a training ``step`` after
    ``warmup`` calls (the first step allocates the optimizer state, which then stays)."""
    for _ in range(warmup):
        step()
    with peak_memory() as peak:
        seconds = seconds_per_call(step, repeats=repeats, warmup=0)
    return {"peak_MB": round(peak.megabytes, 1), "s_per_step": round(seconds, 3)}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors an optimizer keeps per parameter (``optimizer.state``): AdamW's two
    moments, an 8-bit optimizer's quantized moments and their scales; each storage counted once."""
    seen, total = set(), 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                key = (value.untyped_storage().data_ptr(), value.device)
                if key not in seen:
                    seen.add(key)
                    total += value.untyped_storage().nbytes()
    return total

"""Running and measuring an HTTP API on loopback: what chapter 10 needs besides the app itself.

Chapter 10 writes its FastAPI app (pydantic request/response models, ``@app.post`` routes, the
``text-generation`` pipeline) into a file on the page; this module runs that file and measures it.

- :func:`running_server` starts uvicorn on that app in a background process on a free loopback
  port, waits for ``GET /health``, and stops it when the ``with`` block ends. Binding anything but a
  loopback address is refused unless explicitly allowed (:func:`check_host`), and then warns.
- :func:`load_test` measures latency percentiles (``statistics.quantiles``) with ``httpx`` from one
  or many concurrent clients, and how much of each request's time the server spent generating.
- :func:`request_schema_table` shows a pydantic model's fields and limits as a table.

Run a server by hand: ``python -m course_lib.serving chat_api:app --port 8000`` (binds 127.0.0.1;
``uvicorn chat_api:app --port 8000`` does the same without the course's parent watchdog).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .env import free_port
from .profiles import CourseError

DEFAULT_HOST = "127.0.0.1"
MAX_LOAD_TEST_REQUESTS = 5000
MAX_LOAD_TEST_CLIENTS = 64


class PublicBindWarning(UserWarning):
    """The server is about to listen on an address other machines can reach."""


def request_schema_table(model_class) -> list[dict]:
    """One row per field of a pydantic model: type, default and limits (for display)."""
    schema = model_class.model_json_schema()
    required = set(schema.get("required", ()))
    rows = []
    for name, spec in schema["properties"].items():
        limits = [
            f"{key} {spec[key]}" for key in ("minLength", "maxLength", "minimum", "maximum") if key in spec
        ]
        rows.append(
            {
                "field": name,
                "type": spec.get("type", "?"),
                "default": "required" if name in required else spec.get("default"),
                "limits": ", ".join(limits),
            }
        )
    return rows


# --- binding safely -----------------------------------------------------------------------------


def check_host(host: str, allow_public: bool = False) -> str:
    """Return ``host`` if it is a loopback address; refuse anything else unless ``allow_public``.

    ``0.0.0.0`` (every interface) would let any machine that can reach this one use the model,
    with no authentication. With ``allow_public=True`` the bind goes ahead with a loud warning.
    """
    try:
        address = ipaddress.ip_address("127.0.0.1" if host == "localhost" else host)
    except ValueError:
        raise CourseError(f"host must be an IP address such as {DEFAULT_HOST}, got {host!r}.") from None
    if address.is_loopback:
        return host
    if not allow_public:
        raise CourseError(
            f"Refusing to bind {host}: the API would be reachable from other machines, with no "
            f"authentication. Use {DEFAULT_HOST} (the default). If you really mean to expose it, pass "
            "allow_public=True (--allow-public) and put it behind a firewall and an authenticating proxy."
        )
    warnings.warn(
        f"Binding {host}: the chat API is reachable from other machines, with no "
        "authentication and no rate limit.",
        PublicBindWarning,
        stacklevel=2,
    )
    return host


def require_loopback_url(url: str) -> str:
    """Return ``url`` if its host is a loopback address (the load tester only hits our own servers)."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise CourseError(
            f"{url!r} is not a loopback URL; the course only sends requests to servers "
            f"it started itself on {DEFAULT_HOST}."
        )
    return url.rstrip("/")


# --- a server in a background process ----------------------------------------------------------


@dataclass
class RunningServer:
    """A uvicorn process started by :func:`running_server`."""

    url: str
    process: subprocess.Popen
    log_path: Path
    log: str = field(default="", repr=False)
    killed: bool = False  # True when it ignored SIGTERM and had to be killed

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    @property
    def stopped_cleanly(self) -> bool:
        """Exited after SIGTERM (uvicorn re-raises it after a graceful shutdown) or with code 0."""
        return not self.killed and self.returncode in (0, -signal.SIGTERM)

    def log_tail(self, chars: int = 2000) -> str:
        text = self.log or (self.log_path.read_text(errors="replace") if self.log_path.exists() else "")
        return text[-chars:]


def _wait_until_healthy(server: RunningServer, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise CourseError(
                f"The server exited with code {server.process.returncode} before it "
                f"became healthy. Its log ends with:\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise CourseError(
        f"The server did not answer /health within {timeout:.0f} s. Its log ends with:\n{server.log_tail()}"
    )


def _stop(server: RunningServer, grace: float = 10.0) -> None:
    if server.process.poll() is None:
        server.process.terminate()  # SIGTERM: uvicorn finishes open requests, then exits
        try:
            server.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=grace)
            server.killed = True
    if server.log_path.exists():
        server.log = server.log_path.read_text(errors="replace")
        server.log_path.unlink()


@contextmanager
def running_server(
    app: str,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    *,
    app_dir: str | Path = ".",
    allow_public: bool = False,
    threads: int = 1,
    startup_timeout: float = 120.0,
) -> Iterator[RunningServer]:
    """Serve the ASGI app ``app`` (``"module:attribute"``, e.g. ``"chat_api:app"``, imported from
    ``app_dir``) with uvicorn in a background process for the duration of a ``with`` block.

    Picks a free port on ``host`` (loopback by default), waits until ``GET /health`` answers (the
    app must have that route), yields a :class:`RunningServer` (``.url``), and always stops the
    process at the end, even when the block raises. ``threads`` sets torch's intra-op threads in the
    server (1 leaves a core for the clients on a 2-core machine). The server also exits by itself
    if this process dies.
    """
    check_host(host, allow_public)
    module, _, attribute = app.partition(":")
    app_dir = Path(app_dir).resolve()
    if not attribute or not (app_dir / f"{module.replace('.', '/')}.py").is_file():
        raise CourseError(
            f"app must be 'module:attribute' with module.py in {app_dir.name or app_dir}, "
            f"got {app!r}: write the app file first (%%writefile)."
        )
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    port = port or free_port(host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    handle, log_name = tempfile.mkstemp(prefix="course-server-", suffix=".log")
    command = [
        sys.executable,
        "-m",
        "course_lib.serving",
        app,
        "--app-dir",
        str(app_dir),
        "--host",
        host,
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--parent-pid",
        str(os.getpid()),
    ]
    if allow_public:
        command.append("--allow-public")
    with os.fdopen(handle, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = RunningServer(url=url, process=process, log_path=Path(log_name))
    try:
        _wait_until_healthy(server, startup_timeout)
        yield server
    finally:
        _stop(server)


# --- measuring ------------------------------------------------------------------------------------


def _quantile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (1-99), interpolated linearly between order statistics."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p95, mean and max of latencies given in seconds, in milliseconds."""
    if not seconds:
        raise ValueError("no latencies to summarise.")
    return {
        "p50 ms": round(1e3 * _quantile(seconds, 50), 1),
        "p95 ms": round(1e3 * _quantile(seconds, 95), 1),
        "mean ms": round(1e3 * sum(seconds) / len(seconds), 1),
        "max ms": round(1e3 * max(seconds), 1),
    }


def load_test(
    url: str, payload: dict, requests: int = 50, concurrency: int = 1, timeout: float = 60.0
) -> dict:
    """Send ``requests`` POST /chat requests from ``concurrency`` client threads (httpx) to a
    loopback server; return status counts, latency percentiles and throughput.

    Each reply carries the server's generation time (``seconds``), so every answered request's
    latency splits into generation and the rest (HTTP, JSON, validation, waiting in the queue):
    ``generation p50 ms`` and ``outside generation p50 ms``.

    Transport failures (refused connection, timeout) are counted, not raised, so one bad request
    does not hide the others' numbers.
    """
    import httpx

    url = require_loopback_url(url)
    if not 1 <= requests <= MAX_LOAD_TEST_REQUESTS:
        raise ValueError(f"requests must be within 1..{MAX_LOAD_TEST_REQUESTS}, got {requests}.")
    if not 1 <= concurrency <= MAX_LOAD_TEST_CLIENTS:
        raise ValueError(f"concurrency must be within 1..{MAX_LOAD_TEST_CLIENTS}, got {concurrency}.")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    with httpx.Client(base_url=url, timeout=timeout, limits=limits) as client:

        def one(_: int) -> tuple[int | None, float, float | None]:
            begin = time.perf_counter()
            try:
                response = client.post("/chat", json=payload)
            except httpx.TransportError:
                return None, time.perf_counter() - begin, None
            seconds = time.perf_counter() - begin
            generation = response.json().get("seconds") if response.status_code == 200 else None
            return response.status_code, seconds, generation

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - started
    statuses = [status for status, _, _ in results]
    row = {
        "requests": requests,
        "clients": concurrency,
        "ok": sum(s == 200 for s in statuses),
        "4xx": sum(s is not None and 400 <= s < 500 for s in statuses),
        "5xx": sum(s is not None and s >= 500 for s in statuses),
        "transport errors": sum(s is None for s in statuses),
        **latency_summary([seconds for _, seconds, _ in results]),
        "requests/s": round(requests / wall, 1),
    }
    answered = [(seconds, generation) for _, seconds, generation in results if generation is not None]
    if answered:
        row["generation p50 ms"] = round(1e3 * statistics.median([g for _, g in answered]), 1)
        row["outside generation p50 ms"] = round(1e3 * statistics.median([s - g for s, g in answered]), 1)
    return row


# --- the server process's entry point -------------------------------------------------------------


def _exit_when_orphaned(parent_pid: int, interval: float = 1.0) -> None:
    """Stop this server if the process that started it is gone (e.g. a killed notebook kernel)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def serve_command(argv: list[str] | None = None) -> None:
    """``python -m course_lib.serving chat_api:app [--app-dir .] [--host 127.0.0.1] --port N``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.serving", description=__doc__.splitlines()[0])
    parser.add_argument("app", help="the ASGI app to serve, as module:attribute (e.g. chat_api:app)")
    parser.add_argument("--app-dir", default=".", help="the folder the app's module is imported from")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument(
        "--allow-public", action="store_true", help="allow a non-loopback host such as 0.0.0.0 (warns)"
    )
    parser.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_host(args.host, args.allow_public)

    import torch
    import uvicorn

    from .env import setup

    setup(seed=0, quiet=True)
    torch.set_num_threads(args.threads)
    if args.parent_pid:
        _exit_when_orphaned(args.parent_pid)
    uvicorn.run(
        args.app, app_dir=args.app_dir, host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    serve_command()

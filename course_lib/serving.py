"""A small HTTP chat API for a course model: FastAPI + pydantic, served by uvicorn on loopback.

- :class:`ChatRequest` validates every request (non-empty message of bounded length, bounded
  ``max_new_tokens``, temperature range, no unknown fields); a bad request gets HTTP 422 with a
  message that names the field and the rule.
- :class:`ChatService` answers through a ``text-generation`` ``pipeline`` with the model's chat
  template, one request at a time (one model, one CPU: requests queue instead of fighting for cores).
- :func:`create_app` builds the FastAPI app (``GET /health``, ``POST /chat``).
- :func:`running_server` starts uvicorn in a background process on a free loopback port, waits for
  ``/health``, and stops it when the ``with`` block ends. Binding anything but a loopback address
  is refused unless explicitly allowed, and then warns.
- :func:`load_test` measures latency percentiles with ``httpx`` from one or many concurrent clients,
  and how much of each request's time the server spent generating.

Run a server by hand: ``python -m course_lib.serving --port 8000`` (binds 127.0.0.1).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .env import free_port
from .generation import PRESETS
from .profiles import CourseError

DEFAULT_HOST = "127.0.0.1"
MAX_MESSAGE_CHARS = 1000
MAX_NEW_TOKENS = 128
MAX_TEMPERATURE = 2.0
MAX_LOAD_TEST_REQUESTS = 5000
MAX_LOAD_TEST_CLIENTS = 64


class PublicBindWarning(UserWarning):
    """The server is about to listen on an address other machines can reach."""


# --- the request and the response --------------------------------------------------------------

class ChatRequest(BaseModel):
    """One user message and how to answer it. Unknown fields are rejected (typos fail loudly)."""

    model_config = ConfigDict(extra="forbid")

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS,
                         description="the user's message")
    max_new_tokens: int = Field(32, ge=1, le=MAX_NEW_TOKENS, description="longest reply, in tokens")
    temperature: float = Field(0.0, ge=0.0, le=MAX_TEMPERATURE,
                               description="0 = greedy (repeatable); higher = more random")

    @field_validator("message")
    @classmethod
    def _has_text(cls, message: str) -> str:
        if not message.strip():
            raise ValueError("message must contain text, not only whitespace")
        return message


class ChatResponse(BaseModel):
    """The reply, its size in tokens, and the server-side generation time."""

    reply: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def describe_errors(errors: list[dict]) -> list[dict[str, str]]:
    """pydantic/FastAPI error dicts as ``[{"field": ..., "problem": ...}]`` (JSON-safe)."""
    described = []
    for error in errors:
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "json_invalid":  # loc is ("body", character position)
            position = error.get("loc", ("body", "?"))[-1]
            described.append({"field": "body", "problem": f"{message} at character {position}: send a "
                                                          "JSON object such as {\"message\": \"Hi\"}"})
            continue
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        described.append({"field": ".".join(location) or "body", "problem": message})
    return described


def validation_problems(payload: dict) -> list[dict[str, str]]:
    """Validate ``payload`` as the API would; ``[]`` when it is a valid :class:`ChatRequest`."""
    try:
        ChatRequest.model_validate(payload)
    except ValidationError as error:
        return describe_errors(error.errors())
    return []


def request_schema_table() -> list[dict]:
    """One row per :class:`ChatRequest` field: type, default and limits (for display)."""
    schema = ChatRequest.model_json_schema()
    required = set(schema.get("required", ()))
    rows = []
    for name, spec in schema["properties"].items():
        limits = [f"{key} {spec[key]}" for key in ("minLength", "maxLength", "minimum", "maximum")
                  if key in spec]
        rows.append({"field": name, "type": spec.get("type", "?"),
                     "default": "required" if name in required else spec.get("default"),
                     "limits": ", ".join(limits), "description": spec.get("description", "")})
    return rows


# --- generation -------------------------------------------------------------------------------

class PromptTooLong(CourseError):
    """The chat-formatted prompt plus ``max_new_tokens`` exceeds the model's context."""


class ChatService:
    """Answers :class:`ChatRequest` objects through a ``text-generation`` pipeline.

    The prompt is the tokenizer's chat template applied to one user turn; generation stops at
    the end-of-turn token (``<|im_end|>`` for ChatML templates) or the model's eos. Temperature 0
    is the course's greedy preset; above 0, the balanced preset at that temperature. A lock
    serialises generation: one model on one CPU answers one request at a time.
    """

    def __init__(self, model, tokenizer, name: str = "chat-model"):
        from transformers import pipeline

        if not getattr(tokenizer, "chat_template", None):
            raise CourseError(f"The tokenizer of {name!r} has no chat template; use the 'chat-model' "
                              "role or set tokenizer.chat_template.")
        self.name = name
        self.tokenizer = tokenizer
        self.generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
        self.context_length = getattr(model.config, "max_position_embeddings", None)
        stops = [tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>",)
                 if token in tokenizer.get_vocab()]
        self.stop_ids = [*stops, tokenizer.eos_token_id]
        self.requests_served = 0
        self._lock = threading.Lock()

    def messages(self, request: ChatRequest) -> list[dict[str, str]]:
        return [{"role": "user", "content": request.message}]

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        """The chat-formatted prompt's token ids, checked against the model's context."""
        ids = self.tokenizer.apply_chat_template(self.messages(request), add_generation_prompt=True,
                                                 tokenize=True)["input_ids"]
        if self.context_length and len(ids) + request.max_new_tokens > self.context_length:
            raise PromptTooLong(
                f"the message is {len(ids)} tokens once formatted; with max_new_tokens="
                f"{request.max_new_tokens} that exceeds the model's context of {self.context_length} "
                "tokens: shorten the message or ask for fewer tokens.")
        return ids

    def generation_kwargs(self, request: ChatRequest) -> dict:
        if request.temperature == 0:
            settings = dict(PRESETS["greedy"])
        else:
            settings = dict(PRESETS["balanced"], temperature=request.temperature)
        return {**settings, "max_new_tokens": request.max_new_tokens, "eos_token_id": self.stop_ids,
                "pad_token_id": self.tokenizer.pad_token_id}

    def reply(self, request: ChatRequest) -> ChatResponse:
        """Generate the assistant's reply to ``request`` (raises :class:`PromptTooLong`)."""
        prompt_length = len(self.prompt_ids(request))
        with self._lock:
            started = time.perf_counter()
            output = self.generator(self.messages(request), return_tensors=True,
                                    **self.generation_kwargs(request))
            seconds = time.perf_counter() - started
            self.requests_served += 1
        new_ids = list(output[0]["generated_token_ids"][prompt_length:])
        text = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        completion = len([i for i in new_ids if i not in self.stop_ids])
        return ChatResponse(reply=text, prompt_tokens=prompt_length, completion_tokens=completion,
                            seconds=round(seconds, 4))


def load_service(role: str = "chat-model") -> ChatService:
    """A :class:`ChatService` for the model behind ``role`` (offline: the course LM)."""
    from .models import load_model, load_tokenizer

    return ChatService(load_model(role), load_tokenizer(role), name=role)


# --- the app ------------------------------------------------------------------------------------

def create_app(service: ChatService):
    """The FastAPI app: ``GET /health`` and ``POST /chat`` (422 with a readable ``message``
    for any invalid request)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    from . import __version__

    app = FastAPI(title="Course chat API", version=__version__,
                  description="Chat with a course model. Loopback only by default.")

    def unprocessable(problems: list[dict[str, str]]) -> JSONResponse:
        summary = "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return JSONResponse(status_code=422, content={"message": f"Invalid request. {summary}",
                                                      "detail": problems})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return unprocessable(describe_errors(list(error.errors())))

    @app.exception_handler(PromptTooLong)
    async def prompt_too_long(request: Request, error: PromptTooLong) -> JSONResponse:
        return unprocessable([{"field": "message", "problem": str(error)}])

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.name, "requests_served": service.requests_served,
                "limits": {"message_chars": MAX_MESSAGE_CHARS, "max_new_tokens": MAX_NEW_TOKENS,
                           "temperature": [0.0, MAX_TEMPERATURE]}}

    @app.post("/chat", response_model=ChatResponse)
    def chat(request: ChatRequest) -> ChatResponse:  # sync: FastAPI runs it in a worker thread
        return service.reply(request)

    return app


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
            "allow_public=True (--allow-public) and put it behind a firewall and an authenticating proxy.")
    warnings.warn(f"Binding {host}: the chat API is reachable from other machines, with no "
                  "authentication and no rate limit.", PublicBindWarning, stacklevel=2)
    return host


def require_loopback_url(url: str) -> str:
    """Return ``url`` if its host is a loopback address (the load tester only hits our own servers)."""
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise CourseError(f"{url!r} is not a loopback URL; the course only sends requests to servers "
                          f"it started itself on {DEFAULT_HOST}.")
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
            raise CourseError(f"The server exited with code {server.process.returncode} before it "
                              f"became healthy. Its log ends with:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.2)
    raise CourseError(f"The server did not answer /health within {timeout:.0f} s. Its log ends with:\n"
                      f"{server.log_tail()}")


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
def running_server(role: str = "chat-model", host: str = DEFAULT_HOST, port: int | None = None, *,
                   allow_public: bool = False, threads: int = 1,
                   startup_timeout: float = 120.0) -> Iterator[RunningServer]:
    """Serve ``role`` with uvicorn in a background process for the duration of a ``with`` block.

    Picks a free port on ``host`` (loopback by default), waits until ``GET /health`` answers,
    yields a :class:`RunningServer` (``.url``), and always stops the process at the end, even when
    the block raises. ``threads`` sets torch's intra-op threads in the server (1 leaves a core for
    the clients on a 2-core machine). The server also exits by itself if this process dies.
    """
    from .profiles import resolve

    check_host(host, allow_public)
    resolve(role)  # an unknown role fails here, not after the child has imported torch
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    port = port or free_port(host)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    handle, log_name = tempfile.mkstemp(prefix="course-server-", suffix=".log")
    command = [sys.executable, "-m", "course_lib.serving", "--role", role, "--host", host,
               "--port", str(port), "--threads", str(threads), "--parent-pid", str(os.getpid())]
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

def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics
    (numpy's default method)."""
    if not values:
        raise ValueError("percentile of an empty list.")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within [0, 100], got {q}.")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """p50, p95, mean and max of latencies given in seconds, in milliseconds."""
    return {"p50 ms": round(1e3 * percentile(seconds, 50), 1), "p95 ms": round(1e3 * percentile(seconds, 95), 1),
            "mean ms": round(1e3 * sum(seconds) / len(seconds), 1), "max ms": round(1e3 * max(seconds), 1)}


def load_test(url: str, payload: dict, requests: int = 50, concurrency: int = 1,
              timeout: float = 60.0) -> dict:
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
    row = {"requests": requests, "clients": concurrency,
           "ok": sum(s == 200 for s in statuses),
           "4xx": sum(s is not None and 400 <= s < 500 for s in statuses),
           "5xx": sum(s is not None and s >= 500 for s in statuses),
           "transport errors": sum(s is None for s in statuses),
           **latency_summary([seconds for _, seconds, _ in results]),
           "requests/s": round(requests / wall, 1)}
    answered = [(seconds, generation) for _, seconds, generation in results if generation is not None]
    if answered:
        row["generation p50 ms"] = round(1e3 * percentile([g for _, g in answered], 50), 1)
        row["outside generation p50 ms"] = round(1e3 * percentile([s - g for s, g in answered], 50), 1)
    return row


# --- the server process's entry point -------------------------------------------------------------

def _exit_when_orphaned(parent_pid: int, interval: float = 1.0) -> None:
    """Stop this server if the process that started it is gone (e.g. a killed notebook kernel)."""
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def main(argv: list[str] | None = None) -> None:
    """``python -m course_lib.serving [--role chat-model] [--host 127.0.0.1] --port N``."""
    parser = argparse.ArgumentParser(prog="python -m course_lib.serving", description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="chat-model")
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--allow-public", action="store_true",
                        help="allow a non-loopback host such as 0.0.0.0 (warns)")
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
    app = create_app(load_service(args.role))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

"""Checks for chapter 10 (deployment: a validated chat API on loopback)."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pydantic import BaseModel

from ..env import free_port
from ..serving import DEFAULT_HOST
from . import Feedback, verdict

REQUIRED_RULES = {
    "empty message": "message",
    "too many tokens": "max_new_tokens",
    "temperature out of range": "temperature",
}


def _rejected_fields(request_model, payload: dict) -> list[str]:
    """The fields ``request_model`` (a pydantic model) rejects in ``payload``; [] when it is valid."""
    from pydantic import ValidationError

    try:
        request_model.model_validate(payload)
    except ValidationError as error:
        return sorted({".".join(str(part) for part in e["loc"]) or "body" for e in error.errors()})
    return []


def check_rejected_payloads(payloads: dict[str, dict], request_model) -> Feedback:
    """Easy: one JSON payload per rule in ``REQUIRED_RULES``, each rejected by ``request_model``
    (the page's ``ChatRequest``, which FastAPI validates every request body with) for exactly that
    field, and for nothing else."""
    problems = []
    for rule, field_name in REQUIRED_RULES.items():
        if rule not in payloads:
            problems.append(f"add a payload for {rule!r}.")
            continue
        fields = _rejected_fields(request_model, payloads[rule])
        if not fields:
            problems.append(f"{rule!r}: the API accepts {payloads[rule]}; it must be rejected.")
        elif fields != [field_name]:
            problems.append(
                f"{rule!r}: rejected for {fields}, expected only {field_name!r}; keep the other "
                "fields valid so the test isolates one rule."
            )
    return verdict(problems, "each payload is rejected with 422 for exactly its rule.")


def check_percentile(function: Callable[[list[float], float], float]) -> Feedback:
    """Medium: ``function(values, q)`` must match linear-interpolation percentiles (numpy's
    default, ``statistics.quantiles(values, n=100, method="inclusive")``) on a few lists, including
    an even-sized one where p50 falls between two values."""
    rng = random.Random(0)
    cases = [([3.0, 1.0, 2.0, 4.0], 50), ([10.0, 20.0, 30.0, 40.0, 50.0], 95), ([5.0], 95)]
    cases.append(([rng.uniform(0.05, 0.5) for _ in range(50)], 95))
    problems = []
    for values, q in cases:
        expected = (
            statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]
        )
        got = float(function(list(values), q))
        if abs(got - expected) > 1e-9:
            hint = " (sort the values first?)" if values == cases[0][0] else ""
            problems.append(f"p{q} of {len(values)} values: got {got:.6g}, expected {expected:.6g}{hint}.")
            break
    return verdict(problems, "matches statistics.quantiles(method='inclusive') on every case.")


class EchoRequest(BaseModel):
    """What the echo server of :func:`check_concurrent_client` accepts."""

    message: str
    max_new_tokens: int = 1


@contextmanager
def _slow_echo_server(delay: float = 0.05) -> Iterator[tuple[str, dict]]:
    """A tiny FastAPI app on a free loopback port, in a thread: POST /chat waits ``delay`` seconds
    and echoes the message. Yields the URL and a dict with the most requests seen in flight."""
    import uvicorn
    from fastapi import FastAPI

    app, stats = FastAPI(), {"in_flight": 0, "max_in_flight": 0, "served": 0}

    @app.post("/chat")
    async def chat(request: EchoRequest) -> dict:
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        await asyncio.sleep(delay)
        stats["in_flight"] -= 1
        stats["served"] += 1
        return {"reply": request.message}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=DEFAULT_HOST, port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://{DEFAULT_HOST}:{port}", stats
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def check_concurrent_client(
    send_all: Callable[[str, dict, int, int], list[int]], requests: int = 24, concurrency: int = 8
) -> Feedback:
    """Hard: ``send_all(url, payload, requests, concurrency)`` must POST ``payload`` to
    ``url + "/chat"`` ``requests`` times from ``concurrency`` parallel clients and return the
    status codes. Checked against a local echo server that counts requests in flight."""
    with _slow_echo_server() as (url, stats):
        started = time.perf_counter()
        statuses = list(send_all(url, {"message": "ping", "max_new_tokens": 1}, requests, concurrency))
        seconds = time.perf_counter() - started
    problems = []
    if len(statuses) != requests:
        problems.append(f"got {len(statuses)} status codes for {requests} requests.")
    elif any(status != 200 for status in statuses):
        problems.append(f"not every request succeeded: {sorted(set(statuses))} (POST JSON to url + '/chat').")
    if stats["max_in_flight"] < max(2, concurrency // 2):
        problems.append(
            f"at most {stats['max_in_flight']} request(s) were in flight at once: the clients "
            "ran one after another. Use a ThreadPoolExecutor(max_workers=concurrency) "
            "(httpx.Client is thread-safe)."
        )
    return verdict(
        problems,
        f"{requests} requests, up to {stats['max_in_flight']} in flight at once, {seconds:.2f} s in all.",
    )

"""Hidden tests for chapter 10 (deployment). One point per test; each test is self-contained (the
grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_each_breaks_its_rule(payloads):
    """each payload breaks exactly its rule of the page's ChatRequest, the other fields valid"""
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class ChatRequest(BaseModel):  # the page's request schema (chat_api.py)
        model_config = ConfigDict(extra="forbid")
        message: str = Field(min_length=1, max_length=1000)
        max_new_tokens: int = Field(32, ge=1, le=128)
        temperature: float = Field(0.0, ge=0.0, le=2.0)

    rules = {"empty message": "message", "too many tokens": "max_new_tokens"}
    rules["temperature out of range"] = "temperature"
    for rule, field in rules.items():
        assert rule in payloads, f"no payload for {rule!r}"
        try:
            ChatRequest.model_validate(payloads[rule])
            rejected = []
        except ValidationError as error:
            rejected = sorted({str(e["loc"][0]) for e in error.errors() if e["loc"]})
        assert rejected == [field], f"{rule!r} is rejected for {rejected}, expected only {field!r}"


def test_ex2_other_values(percentile):
    """interpolates on lists and percentiles the public check does not try"""
    import statistics

    cases = [([7.0, 1.0, 4.0], 25), ([2.0, 9.0], 10), ([5.0, 1.0, 3.0, 2.0, 4.0, 6.0], 99)]
    for values, q in cases:
        expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        got = float(percentile(list(values), q))
        assert abs(got - expected) < 1e-9, f"p{q} of {values}: got {got}, expected {expected}"


def test_ex2_extremes(percentile):
    """p0 is the minimum and p100 the maximum"""
    values = [3.5, -1.0, 8.25, 2.0]
    assert float(percentile(list(values), 0)) == -1.0, "p0 must be the smallest value"
    assert float(percentile(list(values), 100)) == 8.25, "p100 must be the largest value"


def test_ex3_other_concurrency(send_all):
    """9 requests from 3 clients: every status is 200 and 3 requests are in flight at once"""
    import asyncio
    import threading
    import time

    import uvicorn
    from fastapi import FastAPI

    from course_lib.env import free_port

    app, seen = FastAPI(), {"now": 0, "most": 0, "served": 0}

    @app.post("/chat")
    async def chat(body: dict) -> dict:
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        await asyncio.sleep(0.1)
        seen["now"] -= 1
        seen["served"] += 1
        return {"reply": body.get("message", "")}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        statuses = list(send_all(f"http://127.0.0.1:{port}", {"message": "hi"}, 9, 3))
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert statuses == [200] * 9, f"expected nine 200s, got {statuses}"
    assert seen["served"] == 9, f"the server got {seen['served']} requests, not 9"
    assert seen["most"] == 3, f"{seen['most']} requests in flight at once, expected 3 (concurrency)"

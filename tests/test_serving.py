import importlib.util
import json
import socket
import statistics
import sys
import time

import httpx
import pytest
from conftest import REPO
from pydantic import BaseModel, Field

from course_lib import serving
from course_lib.profiles import CourseError

GOOD = {"message": "Which module defines the function dumps?", "max_new_tokens": 4}
BAD = {
    "empty message": ({"message": ""}, "message"),
    "blank message": ({"message": "   \n"}, "message"),
    "message too long": ({"message": "x" * 1001}, "message"),
    "no message": ({"max_new_tokens": 4}, "message"),
    "zero tokens": ({"message": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    "too many tokens": ({"message": "hi", "max_new_tokens": 129}, "max_new_tokens"),
    "negative temperature": ({"message": "hi", "temperature": -0.1}, "temperature"),
    "temperature too high": ({"message": "hi", "temperature": 2.5}, "temperature"),
    "unknown field": ({"message": "hi", "max_tokens": 4}, "max_tokens"),
}

# A stand-in for chapter 10's app: the same routes, no model, a fixed "generation" time.
ECHO_APP = """
import time

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()
served = 0


class ChatRequest(BaseModel):
    message: str
    max_new_tokens: int = 8


@app.get("/health")
def health():
    return {"status": "ok", "requests_served": served}


@app.post("/chat")
def chat(request: ChatRequest):
    global served
    started = time.perf_counter()
    time.sleep(0.002)
    served += 1
    return {"reply": request.message[::-1], "seconds": time.perf_counter() - started}
"""


def chapter_app_source() -> str:
    """The app chapter 10 writes with %%writefile: the code its server runs."""
    notebook = json.loads((REPO / "notebooks" / "10_deployment.ipynb").read_text())
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        if source.startswith("%%writefile chat_api.py"):
            return source.split("\n", 1)[1]
    raise AssertionError("chapter 10 no longer writes chat_api.py")


@pytest.fixture(scope="module")
def chapter_app(tmp_path_factory):
    path = tmp_path_factory.mktemp("ch10") / "chat_api_under_test.py"
    path.write_text(chapter_app_source())
    spec = importlib.util.spec_from_file_location("chat_api_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("chat_api_under_test", None)


def test_chapter_app_answers_and_rejects_in_process(chapter_app):
    from fastapi.testclient import TestClient

    client = TestClient(chapter_app.app)
    assert client.get("/health").json()["status"] == "ok"
    good = client.post("/chat", json=GOOD)
    assert good.status_code == 200 and 1 <= good.json()["completion_tokens"] <= 4
    again = client.post("/chat", json=GOOD).json()
    assert again["reply"] == good.json()["reply"]  # greedy: the same message, the same reply
    for name, (payload, field) in BAD.items():
        response = client.post("/chat", json=payload)
        assert response.status_code == 422, name
        body = response.json()
        assert body["detail"][0]["field"] == field and body["message"].startswith("Invalid request."), name
    assert "whitespace" in client.post("/chat", json=BAD["blank message"][0]).json()["message"]
    broken = client.post("/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"][0]["field"] == "body"
    too_long = client.post("/chat", json={"message": "é " * 490, "max_new_tokens": 100})
    assert too_long.status_code == 422 and "context of 512 tokens" in too_long.json()["message"]
    rows = serving.request_schema_table(chapter_app.ChatRequest)
    assert [r["field"] for r in rows] == ["message", "max_new_tokens", "temperature"]
    assert rows[0]["default"] == "required" and "maxLength 1000" in rows[0]["limits"]


def test_only_loopback_by_default(tmp_path):
    assert serving.check_host("127.0.0.1") == "127.0.0.1"
    assert serving.check_host("::1") == "::1"
    with pytest.raises(CourseError, match="Refusing to bind 0.0.0.0"):
        serving.check_host("0.0.0.0")
    with pytest.raises(CourseError, match="IP address"):
        serving.check_host("example.com")
    with pytest.warns(serving.PublicBindWarning, match="reachable from other machines"):
        assert serving.check_host("0.0.0.0", allow_public=True) == "0.0.0.0"
    (tmp_path / "echo.py").write_text(ECHO_APP)
    with pytest.raises(CourseError, match="Refusing"):
        with serving.running_server("echo:app", host="0.0.0.0", app_dir=tmp_path):
            pass  # refused before any process starts
    with pytest.raises(CourseError, match="loopback"):
        serving.load_test("http://192.0.2.1:80", GOOD, requests=1)
    with pytest.raises(CourseError, match="Refusing"):  # the command line refuses too
        serving.serve_command(["echo:app", "--host", "0.0.0.0", "--port", "8000"])


def test_latency_summary_uses_linear_quantiles():
    summary = serving.latency_summary([0.4, 0.1, 0.3, 0.2])
    assert summary["p50 ms"] == 250.0 and summary["max ms"] == 400.0 and summary["mean ms"] == 250.0
    hundred = serving.latency_summary([i / 1000 for i in range(1, 101)])
    assert hundred["p95 ms"] == pytest.approx(95.05, abs=0.06)  # rounded to 0.1 ms
    assert serving.latency_summary([0.5])["p95 ms"] == 500.0  # one request: its own latency
    assert statistics.quantiles([1.0, 2.0, 3.0, 4.0], n=100, method="inclusive")[49] == 2.5
    with pytest.raises(ValueError):
        serving.latency_summary([])


def test_request_schema_table_lists_limits():
    class Request(BaseModel):
        text: str = Field(min_length=1, max_length=10)
        count: int = Field(3, ge=1, le=5)

    rows = serving.request_schema_table(Request)
    assert rows == [
        {"field": "text", "type": "string", "default": "required", "limits": "minLength 1, maxLength 10"},
        {"field": "count", "type": "integer", "default": 3, "limits": "minimum 1, maximum 5"},
    ]


def test_server_process_under_concurrent_load(tmp_path):
    (tmp_path / "echo.py").write_text(ECHO_APP)
    started = time.perf_counter()
    with serving.running_server("echo:app", app_dir=tmp_path) as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.post(f"{server.url}/chat", json={"message": "abc"}).json()["reply"] == "cba"
        load = serving.load_test(server.url, {"message": "Return the"}, requests=200, concurrency=8)
        assert load["ok"] == 200 and load["5xx"] == 0 and load["transport errors"] == 0, load
        assert 0 < load["generation p50 ms"] <= load["p50 ms"] and load["outside generation p50 ms"] > 0
        assert httpx.get(f"{server.url}/health").json()["requests_served"] == 201
        port = int(server.url.rsplit(":", 1)[1])
    assert server.returncode is not None and server.stopped_cleanly  # stopped when the block ended
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert time.perf_counter() - started < 120


def test_server_that_fails_to_start_reports_its_log(monkeypatch, tmp_path):
    with pytest.raises(CourseError, match="module:attribute"):
        with serving.running_server("no_such_file:app", app_dir=tmp_path):
            pass
    (tmp_path / "broken.py").write_text("raise RuntimeError('the app is broken')\n")
    with pytest.raises(CourseError, match="the app is broken"):
        with serving.running_server("broken:app", app_dir=tmp_path, startup_timeout=60):
            pass
    (tmp_path / "echo.py").write_text(ECHO_APP)
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a server process that dies at once
    with pytest.raises(CourseError, match="exited with code 1"):
        with serving.running_server("echo:app", app_dir=tmp_path, startup_timeout=30):
            pass


def test_exercise_checks():
    from pydantic import ConfigDict

    from course_lib.exercises import ch10

    class ChatRequest(BaseModel):  # the rules of chapter 10's ChatRequest
        model_config = ConfigDict(extra="forbid")
        message: str = Field(min_length=1, max_length=1000)
        max_new_tokens: int = Field(32, ge=1, le=128)
        temperature: float = Field(0.0, ge=0.0, le=2.0)

    good = {
        "empty message": {"message": ""},
        "too many tokens": {"message": "hi", "max_new_tokens": 999},
        "temperature out of range": {"message": "hi", "temperature": 5},
    }
    assert ch10.check_rejected_payloads(good, ChatRequest).passed
    mixed = dict(good, **{"too many tokens": {"message": "", "max_new_tokens": 999}})
    feedback = ch10.check_rejected_payloads(mixed, ChatRequest)
    assert not feedback.passed and "expected only 'max_new_tokens'" in feedback.message
    accepted = dict(good, **{"temperature out of range": {"message": "hi"}})
    assert "must be rejected" in ch10.check_rejected_payloads(accepted, ChatRequest).message

    def linear(values, q):
        ordered = sorted(values)
        position = (len(ordered) - 1) * q / 100
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    assert ch10.check_percentile(linear).passed
    assert not ch10.check_percentile(lambda values, q: values[int(len(values) * q / 100) - 1]).passed

    from concurrent.futures import ThreadPoolExecutor

    def parallel(url, payload, requests, concurrency):
        with httpx.Client() as http, ThreadPoolExecutor(concurrency) as pool:
            return list(
                pool.map(lambda _: http.post(url + "/chat", json=payload).status_code, range(requests))
            )

    def sequential(url, payload, requests, concurrency):
        with httpx.Client() as http:
            return [http.post(url + "/chat", json=payload).status_code for _ in range(requests)]

    assert ch10.check_concurrent_client(parallel).passed
    feedback = ch10.check_concurrent_client(sequential)
    assert not feedback.passed and "one after another" in feedback.message

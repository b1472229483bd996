import socket
import statistics
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from course_lib import serving
from course_lib.profiles import CourseError

GOOD = {"message": "Which module defines the function dumps?", "max_new_tokens": 4}
BAD = {
    "empty message": ({"message": ""}, "message"),
    "blank message": ({"message": "   \n"}, "message"),
    "message too long": ({"message": "x" * (serving.MAX_MESSAGE_CHARS + 1)}, "message"),
    "no message": ({"max_new_tokens": 4}, "message"),
    "zero tokens": ({"message": "hi", "max_new_tokens": 0}, "max_new_tokens"),
    "too many tokens": ({"message": "hi", "max_new_tokens": serving.MAX_NEW_TOKENS + 1}, "max_new_tokens"),
    "negative temperature": ({"message": "hi", "temperature": -0.1}, "temperature"),
    "temperature too high": ({"message": "hi", "temperature": 2.5}, "temperature"),
    "unknown field": ({"message": "hi", "max_tokens": 4}, "max_tokens"),
}


@pytest.fixture(scope="module")
def service():
    return serving.load_service("chat-model")


@pytest.fixture(scope="module")
def client(service):
    return TestClient(serving.create_app(service))


def test_request_validation_names_the_field():
    assert serving.validation_problems(GOOD) == []
    for name, (payload, field) in BAD.items():
        problems = serving.validation_problems(payload)
        assert [p["field"] for p in problems] == [field], name
    assert "whitespace" in serving.validation_problems(BAD["blank message"][0])[0]["problem"]
    rows = serving.request_schema_table()
    assert [r["field"] for r in rows] == ["message", "max_new_tokens", "temperature"]
    assert rows[0]["default"] == "required" and "maxLength 1000" in rows[0]["limits"]


def test_service_uses_the_chat_template(service):
    request = serving.ChatRequest(**GOOD)
    ids = service.prompt_ids(request)
    text = service.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    response = service.reply(request)
    assert response.prompt_tokens == len(ids) and 1 <= response.completion_tokens <= 4
    assert response == service.reply(request).model_copy(update={"seconds": response.seconds})  # greedy
    with pytest.raises(serving.PromptTooLong, match="context of 512 tokens"):
        service.reply(serving.ChatRequest(message="é " * 490, max_new_tokens=100))


def test_app_answers_and_rejects_in_process(client):
    health = client.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    good = client.post("/chat", json=GOOD)
    assert good.status_code == 200 and isinstance(good.json()["reply"], str)
    for name, (payload, field) in BAD.items():
        response = client.post("/chat", json=payload)
        assert response.status_code == 422, name
        body = response.json()
        assert body["detail"][0]["field"] == field and body["message"].startswith("Invalid request."), name
    broken = client.post("/chat", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code == 422 and "JSON" in broken.json()["message"]
    too_long = client.post("/chat", json={"message": "é " * 490, "max_new_tokens": 100})
    assert too_long.status_code == 422 and "context" in too_long.json()["message"]


def test_only_loopback_by_default():
    assert serving.check_host("127.0.0.1") == "127.0.0.1"
    assert serving.check_host("::1") == "::1"
    with pytest.raises(CourseError, match="Refusing to bind 0.0.0.0"):
        serving.check_host("0.0.0.0")
    with pytest.raises(CourseError, match="IP address"):
        serving.check_host("example.com")
    with pytest.warns(serving.PublicBindWarning, match="reachable from other machines"):
        assert serving.check_host("0.0.0.0", allow_public=True) == "0.0.0.0"
    with pytest.raises(CourseError, match="Refusing"):
        with serving.running_server(host="0.0.0.0"):
            pass  # refused before any process starts
    with pytest.raises(CourseError, match="loopback"):
        serving.load_test("http://192.0.2.1:80", GOOD, requests=1)
    with pytest.raises(CourseError, match="Refusing"):  # the command line refuses too
        serving.main(["--host", "0.0.0.0", "--port", "8000"])


def test_percentiles_match_numpy_method():
    values = [4.0, 1.0, 3.0, 2.0]
    assert serving.percentile(values, 50) == 2.5
    assert serving.percentile(values, 0) == 1.0 and serving.percentile(values, 100) == 4.0
    assert serving.percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    assert serving.percentile(values, 50) == statistics.median(values)
    with pytest.raises(ValueError):
        serving.percentile([], 50)
    summary = serving.latency_summary([0.1, 0.2, 0.3])
    assert summary["p50 ms"] == 200.0 and summary["max ms"] == 300.0


def test_server_process_under_concurrent_load():
    started = time.perf_counter()
    with serving.running_server("chat-model") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        assert httpx.post(f"{server.url}/chat", json=GOOD).status_code == 200
        bad = httpx.post(f"{server.url}/chat", json={"message": "", "temperature": 9})
        assert bad.status_code == 422 and {d["field"] for d in bad.json()["detail"]} == {"message", "temperature"}

        load = serving.load_test(server.url, {"message": "Return the", "max_new_tokens": 2},
                                 requests=200, concurrency=8)
        assert load["ok"] == 200 and load["5xx"] == 0 and load["transport errors"] == 0, load
        assert 0 < load["generation p50 ms"] <= load["p50 ms"] and load["outside generation p50 ms"] > 0
        after = httpx.get(f"{server.url}/health").json()
        assert after["status"] == "ok" and after["requests_served"] >= 201
        port = int(server.url.rsplit(":", 1)[1])
    assert server.returncode is not None and server.stopped_cleanly  # stopped when the block ended
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert time.perf_counter() - started < 240


def test_server_that_fails_to_start_reports_its_log(monkeypatch):
    with pytest.raises(CourseError, match="Unknown role"):
        with serving.running_server("no-such-role"):
            pass
    monkeypatch.setattr(sys, "executable", "/bin/false")  # a server process that dies at once
    with pytest.raises(CourseError, match="exited with code 1"):
        with serving.running_server("chat-model", startup_timeout=30):
            pass


def test_exercise_checks():
    from course_lib.exercises import ch10

    good = {"empty message": {"message": ""}, "too many tokens": {"message": "hi", "max_new_tokens": 999},
            "temperature out of range": {"message": "hi", "temperature": 5}}
    assert ch10.check_rejected_payloads(good).passed
    mixed = dict(good, **{"too many tokens": {"message": "", "max_new_tokens": 999}})
    feedback = ch10.check_rejected_payloads(mixed)
    assert not feedback.passed and "expected only 'max_new_tokens'" in feedback.message

    assert ch10.check_percentile(serving.percentile).passed
    assert not ch10.check_percentile(lambda values, q: values[int(len(values) * q / 100) - 1]).passed

    from concurrent.futures import ThreadPoolExecutor

    def parallel(url, payload, requests, concurrency):
        with httpx.Client() as http, ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda _: http.post(url + "/chat", json=payload).status_code, range(requests)))

    def sequential(url, payload, requests, concurrency):
        with httpx.Client() as http:
            return [http.post(url + "/chat", json=payload).status_code for _ in range(requests)]

    assert ch10.check_concurrent_client(parallel).passed
    feedback = ch10.check_concurrent_client(sequential)
    assert not feedback.passed and "one after another" in feedback.message

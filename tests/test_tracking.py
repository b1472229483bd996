"""Experiment tracking with trackio (chapter 3): everything stays on this machine, the metrics
read back through trackio's API, and the dashboard serves them on 127.0.0.1 to a real browser."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from course_lib.env import free_port

pytest.importorskip("trackio")
CHROMIUM = "/usr/bin/chromium"

# Logs two runs with wandb's three calls, renamed, while every connection that leaves the
# loopback address raises: trackio must not need the network.
LOG_RUNS = """\
import json, socket, sys

real_connect = socket.socket.connect
attempts = []

def loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if host not in ("127.0.0.1", "::1", "localhost"):
        attempts.append(str(address))
        raise OSError(f"network blocked in this test: {address}")
    return real_connect(self, address)

socket.socket.connect = loopback_only
import trackio
from trackio.sqlite_storage import SQLiteStorage

for name, losses in (("run-a", [2.0, 1.5, 1.0]), ("run-b", [2.0, 1.8, 1.7])):
    trackio.init(project="course-test", name=name, config={"lr": 0.1}, embed=False)
    for loss in losses:
        trackio.log({"train/loss": loss})
    trackio.finish()

runs = [run.name for run in trackio.Api().runs("course-test")]
logs = SQLiteStorage.get_logs("course-test", "run-a")
print(json.dumps({"runs": runs, "losses": [row["train/loss"] for row in logs],
                  "config": trackio.Api().runs("course-test")[0].config,
                  "attempts": attempts}))
"""


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trackio")
    env = os.environ | {"TRACKIO_DIR": str(folder), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_TOKEN", None)
    done = subprocess.run(
        [sys.executable, "-c", LOG_RUNS], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, json.loads(done.stdout.strip().splitlines()[-1])


def test_trackio_logs_locally_and_reads_back(logged):
    folder, result = logged
    assert result["attempts"] == [], "trackio tried to reach the network"
    assert sorted(result["runs"]) == ["run-a", "run-b"]
    assert result["losses"] == [2.0, 1.5, 1.0]
    assert result["config"]["lr"] == 0.1
    assert list(Path(folder).glob("*.db")), "no SQLite file in TRACKIO_DIR"


@pytest.fixture(scope="module")
def dashboard(logged):
    folder, _ = logged
    port = free_port()
    serve = (
        "import trackio; trackio.show(project='course-test', open_browser=False, "
        f"block_thread=True, host='127.0.0.1', server_port={port})"
    )
    env = os.environ | {"TRACKIO_DIR": str(folder), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", serve], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the trackio dashboard did not start: " + server.stderr.read().decode()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_trackio_dashboard_in_a_browser(dashboard):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI runs this test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(dashboard + "?project=course-test", wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_function("document.body.innerText.includes('run-a')", timeout=60_000)
            text = page.inner_text("body")
            assert "run-b" in text and "course-test" in text
            assert not errors, errors
        finally:
            browser.close()

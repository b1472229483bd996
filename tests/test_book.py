"""The whole book, as CI builds it: every chapter executed once with nbmake, from the course_lib
wheel installed in a fresh virtual environment outside the checkout (as a learner's runtime has it),
the book built from those outputs with warnings as errors, then every page opened in a real browser.

Runs on a copy of the book sources, so the committed notebooks stay without outputs.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TIMINGS

pytestmark = pytest.mark.book
# Two notebooks at a time, one thread each (see run_nbmake), the longest first so that neither
# worker ends the run alone on one: on 2 cores that gets through the book sooner than one
# notebook at a time on two threads. Each chapter's time alone on 2 cores, the one the budget
# is about, is what the book build (the README's first command) logs: it executes one at a time.
OFFLINE_WORKERS = 2
# The chapters that took longest offline in the last measured run (README, chapter times)
LONGEST_OFFLINE = (
    "08_sft_lora",
    "13_quantization_qlora",
    "09_evaluation",
    "05_peft_trl_tour",
    "14_scaling_out",
)
# Machines are noisy: only this fails (a hang, not a slow machine: a 2-core
# EPYC without AVX-512 ran chapter 8 offline in 278 s and its hub run's LoRA cell past 300 s)
HARD_TIMEOUT_SECONDS = 600
CHROMIUM = "/usr/bin/chromium"


def _toc_notebooks() -> list[str]:
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [
        c["file"] for part in toc["parts"] for c in part["chapters"] if c["file"].startswith("notebooks/")
    ]


@pytest.fixture(scope="module")
def book_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("book")
    for name in ("_toc.yml", "_static", "_ext", "book", "notebooks"):
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / name)
    config = yaml.safe_load((REPO / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"  # nbmake has already executed them
    (root / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def longest_first(longest: tuple[str, ...]) -> list[str]:
    """The toc's notebooks with those named in ``longest`` (bare names) first, so that neither
    worker of a two-at-a-time run ends it alone on one of them."""
    return sorted(_toc_notebooks(), key=lambda nb: nb.rpartition("/")[2] not in longest)


def run_nbmake(
    paths: list[Path], root: Path, env: dict[str, str], junit: Path, workers: int = 1
) -> tuple[int, str, list]:
    """Execute notebooks in place with nbmake (``python`` from ``env``'s PATH); return the exit code,
    the tail of the log and one row per notebook (name, seconds, ok or FAILED) from the JUnit report.

    ``workers > 1`` runs that many notebooks at a time (pytest-xdist), each kernel on one thread:
    on 2 cores two one-thread kernels get through more work than one two-thread kernel, but each
    notebook's time then says less about its time alone."""
    parallel = ["-n", str(workers)] if workers > 1 else []
    if workers > 1:
        env = env | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        ["python", "-m", "pytest", "--nbmake", "--overwrite", f"--nbmake-timeout={HARD_TIMEOUT_SECONDS}"]
        + parallel
        + ["-p", "no:cacheprovider", "-q", f"--junitxml={junit}", "--rootdir", str(root), *map(str, paths)],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
    )
    rows = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            failed = case.find("failure") is not None or case.find("error") is not None
            rows.append(
                {
                    "notebook": case.get("name", "?"),
                    "seconds": float(case.get("time", 0)),
                    "status": "FAILED" if failed else "ok",
                }
            )
    return result.returncode, result.stdout[-6000:] + result.stderr[-3000:], rows


@pytest.fixture(scope="module")
def executed(book_copy, wheel_venv) -> tuple[int, str]:
    """Execute every notebook of the toc once, in place in the copy (outside the checkout), with
    the wheel-installed course_lib: the one execution the page checks and the book build read."""
    paths = [book_copy / f"{nb}.ipynb" for nb in longest_first(LONGEST_OFFLINE)]
    start = time.perf_counter()
    code, log, rows = run_nbmake(
        paths, book_copy, wheel_venv, book_copy / "nbmake.xml", workers=OFFLINE_WORKERS
    )
    wall = round(time.perf_counter() - start, 1)
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps({"wall_seconds": wall, "notebooks": rows}, indent=1))
    return code, log


def test_every_notebook_executes_offline(executed):
    code, log = executed
    assert code == 0, log
    rows = json.loads(TIMINGS.read_text())["notebooks"]
    assert len(rows) == len(_toc_notebooks())
    assert all(r["seconds"] < HARD_TIMEOUT_SECONDS for r in rows)


def test_executed_pages_read_cleanly(book_copy, executed):
    """No long lines, library warnings, progress-bar debris, absolute paths, "..."-cut text or stray
    return values in any executed chapter (tests/page_checks.py says what each check looks for)."""
    from page_checks import problems

    if executed[0] != 0:
        pytest.fail("notebooks failed to execute; see test_every_notebook_executes_offline")
    found = []
    for notebook in _toc_notebooks():
        path = book_copy / f"{notebook}.ipynb"
        found += problems(json.loads(path.read_text()), path.name)
    assert not found, f"{len(found)} problems:\n" + "\n".join(found[:60])


@pytest.fixture(scope="module")
def built_html(book_copy, executed) -> Path:
    if executed[0] != 0:
        pytest.fail("notebooks failed to execute; see test_every_notebook_executes_offline")
    start = time.perf_counter()
    result = subprocess.run(
        ["jupyter-book", "build", str(book_copy), "-W", "--keep-going"], capture_output=True, text=True
    )
    print(f"book build: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    html = book_copy / "_build" / "html"
    shutil.rmtree(REPO / "_build" / "ci" / "html", ignore_errors=True)
    shutil.copytree(html, REPO / "_build" / "ci" / "html")
    return html


def test_book_builds_with_outputs(built_html):
    for notebook in _toc_notebooks():
        page = (built_html / f"{notebook}.html").read_text()
        assert "cell_output" in page, f"{notebook}: no executed outputs in the page"
    pilot = (built_html / "notebooks" / "01_models_tokenizers_pipelines.html").read_text()
    assert 'src="../_images/' in pilot, "the pilot chapter's plots are missing"
    assert (built_html / "book" / "intro.html").exists()
    # exercises numbered per chapter (_ext/exercise_numbers.py), in the title and the solution
    chapter8 = (built_html / "notebooks" / "08_sft_lora.html").read_text()
    numbers = re.findall(r"Exercise (\d+(?:\.\d+)?)", chapter8)
    assert numbers and set(numbers) == {"8.1", "8.2", "8.3"}, sorted(set(numbers))


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); CI runs this test")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(built_html):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(built_html))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_every_page_in_a_browser(built_html, site, browser):
    pages = sorted(
        p.relative_to(built_html).as_posix()
        for p in built_html.rglob("*.html")
        if not p.relative_to(built_html).parts[0].startswith(("_", "genindex", "search"))
    )
    notebooks = {f"{nb}.html" for nb in _toc_notebooks()}
    assert notebooks <= set(pages)
    shots = REPO / "_build" / "ci" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.startswith(site) else route.abort()
    )
    scrolling = []
    for name in pages:
        page.goto(f"{site}/{name}", wait_until="load")
        if name == "index.html":  # a redirect to the root page
            continue
        assert page.title().strip() and "404" not in page.title(), name
        body = page.inner_text("article")
        assert "Traceback (most recent call last)" not in body, f"{name} shows a traceback"
        assert page.locator(".output.traceback, .output.error").count() == 0, f"{name} shows an error output"
        scrolling += [f"{name}: {what}" for what in page.evaluate(SIDEWAYS_SCROLLERS)]
        if name in notebooks:
            stem = Path(name).stem
            colab = page.locator(
                f'a[href^="https://colab.research.google.com/github/"][href$="{stem}.ipynb"]'
            )
            assert colab.count() >= 1, f"{name}: no Colab launch link"
            page.screenshot(path=str(shots / f"{stem}.png"), full_page=False)
            if not stem[:2].isdigit():
                continue  # appendix pages have no exercises
            solutions = page.locator(".solution")
            assert solutions.count() == 3, f"{name}: expected 3 solutions"
            hidden_code = page.locator(".solution .cell_input")
            assert hidden_code.count() >= 3
            for i in range(hidden_code.count()):
                assert not hidden_code.nth(i).is_visible(), f"{name}: solution {i} starts expanded"
    context.close()
    assert not scrolling, f"{len(scrolling)} blocks scroll sideways at 1280x900:\n" + "\n".join(scrolling)


# Code blocks, outputs and tables in the article whose content is wider than their box.
SIDEWAYS_SCROLLERS = """() => {
  const found = [];
  for (const el of document.querySelectorAll('article pre, article table, article .cell_output')) {
    if (el.closest('.solution') && !el.offsetParent) continue;  // collapsed: measured when opened
    if (el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().right >
        document.querySelector('article').getBoundingClientRect().right + 1) {
      const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 70);
      found.push(`${el.tagName.toLowerCase()} ${el.scrollWidth}>${el.clientWidth}px: ${text}`);
    }
  }
  return found;
}"""

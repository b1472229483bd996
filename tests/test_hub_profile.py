"""Every chapter under the hub profile, executed offline against the synthetic Hub (issue 14).

`python -m course_lib hub build` writes models and datasets under their real repo ids into a folder
of the course cache; with its environment (HF_HUB_CACHE, HF_DATASETS_CACHE, COURSE_SYNTHETIC_HUB,
HF_HUB_OFFLINE=1, COURSE_PROFILE=hub) the chapters' real `from_pretrained(repo_id)` and
`load_dataset(repo_id)` calls read it. Random weights show no effects, so claim checks report
(COURSE_CLAIMS=report) instead of failing. Runs on a copy of the notebooks; per-chapter times go
to the CI report's "hub profile" section (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import HUB_TIMINGS, REPO
from test_book import _toc_notebooks, run_nbmake

HUB_RUN_ENV = "COURSE_HUB_RUN"
pytestmark = [
    pytest.mark.book,
    # Not yet in CI: every chapter under the hub profile takes about as long again as the offline
    # run, past the 30-minute CI budget, and some chapters still fail there (issue 14's note).
    pytest.mark.skipif(
        os.environ.get(HUB_RUN_ENV) != "1",
        reason=f"set {HUB_RUN_ENV}=1 to execute every chapter under the hub profile (about 15 minutes)",
    ),
]


@pytest.fixture(scope="module")
def hub_environment() -> dict[str, str]:
    from course_lib import synthetic_hub

    # narrow widths: the real ones make the training chapters too slow for 2 cores (README)
    return synthetic_hub.environment(synthetic_hub.build(narrow=True))


@pytest.fixture(scope="module")
def hub_executed(tmp_path_factory, hub_environment) -> tuple[int, str]:
    """Execute every toc chapter once with nbmake under the hub profile, in a copy of the notebooks."""
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    env = os.environ | hub_environment | {"COURSE_CLAIMS": "report", "PYTHONWARNINGS": ""}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this interpreter's python
    paths = [root / f"{nb}.ipynb" for nb in _toc_notebooks()]
    code, log, rows = run_nbmake(paths, root, env, root / "nbmake.xml")
    HUB_TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    HUB_TIMINGS.write_text(json.dumps(rows, indent=1))
    return code, log


def test_every_chapter_executes_under_the_hub_profile(hub_executed):
    code, log = hub_executed
    assert code == 0, log
    rows = json.loads(HUB_TIMINGS.read_text())
    assert len(rows) == len(_toc_notebooks())
    assert all(r["status"] == "ok" for r in rows)

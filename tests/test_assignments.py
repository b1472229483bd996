"""The instructor kit (course_lib.assignments): student notebooks from the chapters, hidden tests
that stay out of the package, and grading of the fixture submissions in instructor/fixtures."""

from __future__ import annotations

import ast
import csv
import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml

from course_lib import assignments

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(REPO.glob("notebooks/[0-9][0-9]_*.ipynb"))
GRADED = ("ch02", "ch06", "ch12")  # one chapter per part, with fixtures and hidden tests
CELL_TIMEOUT = 30  # the fixtures that loop forever cost this much each


# --- static analysis and stubs (fast) -----------------------------------------------------------


def test_names_reads_and_defines():
    code = "import re\nx = y + len(z)\ndef f(a):\n    return a + w\n%time x\nf(1)\nfor n in items:\n    print(n)\n"
    reads, defines = assignments.names(code)
    assert reads == {"y", "z", "w", "items"}  # f and n are bound before they are read
    assert defines == {"re", "x", "f", "n"}
    assert assignments.names("total = total + 1")[0] == {"total"}


def test_lesson_slice_follows_dependencies():
    lesson = ["import course_lib", "a = 1", "b = a + 1", "c = 5", "a = 10", "d = b * 2"]
    assert assignments.lesson_slice(lesson, {"d"}) == [1, 2, 5]  # the a that b read, not the later one
    assert assignments.lesson_slice(lesson, {"a", "nothing"}) == [4]
    cut = assignments.lesson_code_needed(
        ["m = load()\nprint(measure(m))\nn = 2", "k = m + 1\nshow(k)"], {"k"}
    )
    assert cut == {0: "m = load()", 1: "k = m + 1"}  # what follows the definitions is not run


def test_strip_checks_keeps_the_answer():
    code = "from course_lib.exercises import ch06\n\ndef f(x):\n    return x\n\n\nch06.check_f(f)\n"
    stripped = assignments.strip_checks(code)
    assert "check_f" not in stripped and "def f(x):" in stripped
    assert assignments.strip_checks("def broken(:\n") == "def broken(:\n"  # fails when executed instead


def test_unanswered_fails_clearly():
    value = assignments.unanswered("answer")
    for use in (lambda: value * 2, lambda: value.shape, lambda: list(value), lambda: value == 3):
        with pytest.raises(NotImplementedError, match="`answer` is not answered yet"):
            use()


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem[:2])
def test_every_chapter_has_three_exercises_with_a_public_check(path):
    chapter = assignments.parse_chapter(path)
    assert [e.label for e in chapter.exercises] == [f"{chapter.key}-ex{k}" for k in (1, 2, 3)]
    for exercise in chapter.exercises:
        calls = [
            s for s in ast.parse("\n".join(exercise.solution_code)).body if assignments._is_check_call(s)
        ]
        assert calls, f"{exercise.label}: the solution calls no public check"


def test_hidden_tests_are_well_formed():
    for key in GRADED:
        tests = assignments.read_hidden_tests(REPO / "instructor", key)
        assert {t.exercise for t in tests} == {1, 2, 3}, f"{key}: every exercise needs hidden tests"
        assert len(tests) >= 7 and all(t.doc != t.name for t in tests), f"{key}: give each test a docstring"


def test_hidden_tests_are_not_in_the_installed_package():
    from setuptools import find_packages

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert include == {"include": ["course_lib*"]}
    packages = find_packages(str(REPO), include=include["include"])
    assert packages and all(p.startswith("course_lib") for p in packages)
    assert not (REPO / "instructor" / "__init__.py").exists()
    names = {t.name for key in GRADED for t in assignments.read_hidden_tests(REPO / "instructor", key)}
    for path in (REPO / "course_lib").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not any(name in text for name in names), f"{path.name} holds a hidden test"


# --- build every chapter (otter assign), then grade the fixtures (otter run) ---------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("otter")
    out = tmp_path_factory.mktemp("assignments")
    plans = assignments.build(out)
    return out, {plan["chapter"]: plan for plan in plans}


def _text(notebook: dict) -> str:
    return "\n".join(assignments._source(cell) for cell in notebook["cells"])


def test_every_chapter_is_built(built):
    out, plans = built
    assert sorted(plans) == [assignments.chapter_key(p.stem) for p in CHAPTERS]
    for key in GRADED:
        assert not any(e["fallback"] for e in plans[key]["exercises"]), f"{key} lacks hidden tests"
    for path in CHAPTERS:
        key = assignments.chapter_key(path.stem)
        assert (out / "student" / path.name).exists() and (out / "solutions" / path.name).exists()
        assert (out / "autograder" / key / "autograder.zip").exists()
    assert len(json.loads((out / "autograder" / "ch06" / "plan.json").read_text())["exercises"]) == 3


def test_no_solution_code_in_any_student_notebook(built):
    out, plans = built
    for path in CHAPTERS:
        plan = plans[assignments.chapter_key(path.stem)]
        student = json.loads((out / "student" / path.name).read_text())
        text = _text(student)
        answers = assignments.answer_cells(student)
        assert sorted(answers) == [e["label"] for e in plan["exercises"]]
        for exercise, source in zip(plan["exercises"], assignments.parse_chapter(path).exercises):
            secret = exercise["solution_lines"]
            assert secret, f"{exercise['label']}: nothing to compare"
            leaked = [line for line in secret if line in text]
            assert not leaked, f"{exercise['label']}: solution code in the student notebook: {leaked}"
            assert "# your code here" in "\n".join(answers[exercise["label"]])
            assert "{solution-start}" not in text and "BEGIN SOLUTION" not in text
            for prose in source.solution_prose:
                assert prose not in text, f"{exercise['label']}: solution prose in the student notebook"
        assert "hidden: true" not in text and "def test_ex" not in text
        assert not re.search(r"\bch\d\d = unanswered", text), "a stub shadows the chapter's check module"


def test_solutions_notebook_holds_the_solutions(built):
    out, _ = built
    path = next(p for p in CHAPTERS if p.stem.startswith("06"))
    solutions = _text(json.loads((out / "solutions" / path.name).read_text()))
    for exercise in assignments.parse_chapter(path).exercises:
        assert exercise.solution_code[0].strip().splitlines()[-1] in solutions
    assert "BEGIN SOLUTION" not in solutions and "BEGIN PROMPT" not in solutions


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """Every fixture submission of the three chapters, graded as an instructor would."""
    out, _ = built
    results = {}
    for key in GRADED:
        spec = yaml.safe_load((REPO / "instructor" / "fixtures" / f"{key}.yaml").read_text())
        name = next(p.name for p in CHAPTERS if assignments.chapter_key(p.stem) == key)
        student = json.loads((out / "student" / name).read_text())
        solutions = json.loads((out / "solutions" / name).read_text())
        folder = tmp_path_factory.mktemp(f"submissions-{key}")
        for fixture, entry in spec.items():
            notebook = assignments.fill_answers(student, entry["answers"], solutions)
            (folder / f"{fixture}.ipynb").write_text(json.dumps(notebook))
        (folder / "not_a_notebook.ipynb").write_text("{ this is not json")
        report = tmp_path_factory.mktemp(f"grades-{key}")
        csv_path = assignments.grade(key, folder, report, assignments=out, jobs=2, cell_timeout=CELL_TIMEOUT)
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = {row["submission"][: -len(".ipynb")]: row for row in csv.DictReader(handle)}
        results[key] = (spec, rows, report)
    return results


@pytest.mark.parametrize("key", GRADED)
def test_fixture_submissions_get_exactly_their_grades(graded, key):
    spec, rows, report = graded[key]
    assert set(rows) == set(spec) | {"not_a_notebook"}
    for fixture, entry in spec.items():
        got = {label: int(rows[fixture][label]) for label in entry["expected"]}
        assert got == entry["expected"], f"{key} {fixture}: {got} != {entry['expected']}"
        assert int(rows[fixture]["total"]) == sum(got.values())
        assert rows[fixture]["status"] == "graded" and float(rows[fixture]["seconds"]) > 0
        feedback = (report / "feedback" / f"{fixture}.md").read_text()
        assert f"{sum(got.values())} / {rows[fixture]['possible']} points" in feedback
    assert int(rows["not_a_notebook"]["total"]) == 0
    assert "not a notebook" in (report / "feedback" / "not_a_notebook.md").read_text()


def test_feedback_explains_each_failure(graded):
    _, _, report = graded["ch06"]
    loops = (report / "feedback" / "loops_forever.md").read_text()
    assert "time limit per cell" in loops
    wrong = (report / "feedback" / "wrong_but_passes_public_check.md").read_text()
    assert "use attention_mask == 0" in wrong and "✅" in wrong
    assert "altered" in (report / "feedback" / "edits_a_hidden_test.md").read_text()
    assert "SyntaxError" in (report / "feedback" / "syntax_error.md").read_text()


# --- the student notebook runs offline, its exercises fail clearly (slow: the whole chapter) ----


@pytest.mark.book
def test_student_notebook_executes_and_its_exercises_fail_clearly(built):
    import nbformat
    from nbclient import NotebookClient

    out, _ = built
    path = next(p for p in CHAPTERS if p.stem.startswith("06"))
    notebook = nbformat.read(out / "student" / path.name, as_version=4)
    NotebookClient(
        notebook, timeout=600, allow_errors=True, resources={"metadata": {"path": str(out)}}
    ).execute()
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if cell.metadata.get("course_lib", {}).get("role") == "answer":
            assert errors and errors[0].ename == "NotImplementedError", cell.source
            assert "ch06-ex" in errors[0].evalue or "not answered yet" in errors[0].evalue
        else:
            assert not errors, f"lesson cell failed: {cell.source[:80]}"


def test_wrong_fixtures_pass_the_public_checks():
    """The "wrong but passes the public check" fixtures do pass it (so only hidden tests catch them)."""
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model

    from course_lib.env import CHECKPOINTING_RENAME
    from course_lib.exercises import ch02, ch06, ch12
    from course_lib.peft_methods import tiny_model

    def answer(key, label):
        spec = yaml.safe_load((REPO / "instructor" / "fixtures" / f"{key}.yaml").read_text())
        namespace = {}
        exec(assignments.strip_checks(spec["wrong_but_passes_public_check"]["answers"][label]), namespace)
        return namespace

    assert ch02.check_alpaca_formatter(answer("ch02", "ch02-ex2")["to_alpaca"]).passed
    assert ch06.check_labels(answer("ch06", "ch06-ex2")["make_labels"]).passed
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CHECKPOINTING_RENAME)
        model = get_peft_model(tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_B") and "default" in module.lora_B:
                module.lora_B["default"].weight.normal_()
    assert ch12.check_manual_merge(answer("ch12", "ch12-ex3")["merge"], model).passed

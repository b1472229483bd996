"""The instructor kit (course_lib.assignments): student notebooks from the chapters, hidden tests
that stay out of the package, and grading of the fixture submissions in instructor/fixtures."""

from __future__ import annotations

import ast
import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import tomllib
import yaml

from course_lib import assignments

REPO = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(REPO.glob("notebooks/[0-9][0-9]_*.ipynb"))
KEYS = tuple(assignments.chapter_key(p.stem) for p in CHAPTERS)  # every chapter has hidden tests
FIXTURES = ("ch02", "ch06", "ch12", "ch11")  # one chapter per part; ch11 graded by its public checks
PUBLIC_CHECKS_ONLY = "ch11"  # its fixtures are graded without its hidden tests (the fallback)
# A fixture that loops forever costs CELL_TIMEOUT (plus 5 s to save the answers): a short limit per
# answer cell, and a hidden test gets TEST_TIMEOUT (some load a model, on a machine busy grading).
CELL_TIMEOUT, TEST_TIMEOUT = 5, 60


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


def test_lesson_slice_runs_what_changes_a_needed_value():
    """What a statement changes without binding it counts: a trainer's training (ch07), files a
    call writes into a folder (ch04's tag), a module a %%writefile writes (ch10's chat_api)."""
    lesson = [
        "import os\nfrom pathlib import Path\nrepo = Path('lm')\nrun = 1",
        "trainer = make(run)\ntrainer.train()\nprint(trainer)",
        "first = commit(repo, tag='v1.0')\nshown = describe(repo / 'x')",
        "if logged_in:\n    upload(repo)\n    trainer.push()",
        "%%writefile chat_api.py\nimport os",
        "print(sorted(repo.iterdir()), len(repo.name))",
    ]
    assert assignments.lesson_code_needed(lesson, {"trainer"}) == {
        0: "import os\nfrom pathlib import Path\nrepo = Path('lm')\nrun = 1",
        1: "trainer = make(run)\ntrainer.train()",
    }
    assert sorted(assignments.lesson_code_needed(lesson, {"repo"})) == [0, 2]  # not 3 (a branch), 5 (shows)
    assert assignments.lesson_slice(lesson, assignments.slice_names("import chat_api")[0]) == [4]


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
    for key in KEYS:
        tests = assignments.read_hidden_tests(REPO / "instructor", key)
        assert {t.exercise for t in tests} == {1, 2, 3}, f"{key}: every exercise needs hidden tests"
        assert all(t.doc != t.name for t in tests), f"{key}: give each test a docstring"


def test_the_instructors_page_cites_tests_that_exist():
    """Each `test_...` the Instructors page cites as showing a statement is a test of this file or
    of test_remote_values.py, the judge's own tests (a parametrized one with an existing chapter)."""
    page = (REPO / "book" / "instructors.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(test_\w+)(?:\[(\w+)\])?`", page)
    tests = {name for name, value in globals().items() if name.startswith("test_") and callable(value)}
    judge_tests = ast.parse((REPO / "tests" / "test_remote_values.py").read_text(encoding="utf-8"))
    tests |= {node.name for node in judge_tests.body if isinstance(node, ast.FunctionDef)}
    assert len(cited) >= 10
    for name, parameter in cited:
        assert name in tests, f"instructors.md cites {name}, which is in neither test file"
        assert not parameter or parameter in KEYS, f"{name}[{parameter}]: no such chapter"


# Classic mistakes, each fitted to nothing but the public probes' shape: the hidden test must fail it.
WRONG_ANSWERS = {
    ("ch03", "test_ex2_other_predictions"): {
        "compute_metrics": "def compute_metrics(p):\n    import numpy as np\n    l = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions\n    pr = l.argmax(-1); y = p.label_ids\n    f = []\n    for c in np.unique(y):\n        tp = ((pr == c) & (y == c)).sum(); f.append(2 * tp / ((pr == c).sum() + (y == c).sum()))\n    return {'accuracy': float((pr == y).mean()), 'macro_f1': float(np.mean(f))}\n"
    },
    ("ch03", "test_ex3_threshold"): {
        "StopBelowLoss": "from transformers import TrainerCallback\nclass StopBelowLoss(TrainerCallback):\n    def __init__(self, t): self.t = t\n    def on_log(self, args, state, control, logs=None, **kw):\n        if logs and logs.get('loss', logs.get('eval_loss', 9)) < self.t: control.should_training_stop = True\n"
    },
    ("ch05", "test_ex2_other_pairs"): {
        "dpo_loss": "import torch\ndef dpo_loss(pc, pr, rc, rr, beta):\n    return -torch.nn.functional.logsigmoid(beta * ((pc - pr) - (rc - rr))).sum()\n"
    },
    ("ch07", "test_ex1_evaluations_after_the_loss"): {
        "last_perplexity": "import math\ndef last_perplexity(h):\n    return math.exp([v for e in h for k, v in e.items() if k.endswith('loss')][-1])\n"
    },
    ("ch09", "test_ex1_pooled_within_sequences"): {
        "distinct_2": "def distinct_2(seqs):\n    flat = [t for s in seqs for t in s]\n    b = list(zip(flat, flat[1:]))\n    return len(set(b)) / len(b)\n"
    },
    ("ch09", "test_ex3_only_the_generated_text"): {
        "StopAtNewline": "import torch\nfrom transformers import StoppingCriteria\nclass StopAtNewline(StoppingCriteria):\n    def __init__(self, tok, n): self.tok = tok\n    def __call__(self, ids, scores, **kw):\n        return torch.tensor(['\\n' in t for t in self.tok.batch_decode(ids)])\n"
    },
    ("ch10", "test_ex2_other_values"): {
        "percentile": "def percentile(v, q):\n    v = sorted(v)\n    return v[round((len(v) - 1) * q / 100)]\n"
    },
    ("ch11", "test_ex2_schedule"): {"factor": "def factor(step):\n    return min(1.0, step / 5)\n"},
    ("ch11", "test_ex3_other_model"): {
        "accumulate": "def accumulate(model, batch, n):\n    for part in batch.chunk(n):\n        model(input_ids=part, labels=part).loss.backward()\n"
    },
    ("ch13", "test_ex2_other_model"): {
        "valid_group_sizes": "from torch import nn\ndef valid_group_sizes(model, c):\n    s = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]\n    return [g for g in c if all(x % g == 0 for x in s)]\n"
    },
    ("ch13", "test_ex3_values_and_scales"): {
        "quantize": "import torch\ndef quantize(w):\n    s = w.abs().max() / 127\n    return torch.round(w / s).to(torch.int8), s.repeat(w.shape[0])\n",
        "dequantize": "def dequantize(q, s):\n    return q.float() * s[:, None]\n",
    },
    ("ch14", "test_ex3_other_sizes"): {
        "zero_gb": "def zero_gb(p, g, stage):\n    return 16 * p / 1e9 / (g if stage else 1)\n"
    },
    ("ch15", "test_ex3_uneven_split"): {
        "accumulate": "def accumulate(model, batch, n):\n    for part in batch.chunk(n):\n        (model(input_ids=part, labels=part).loss / n).backward()\n"
    },
}


@pytest.mark.parametrize("case", sorted(WRONG_ANSWERS), ids=lambda case: f"{case[0]}-{case[1][5:]}")
def test_hidden_tests_fail_wrong_answers(case):
    """A hidden test fails a classic wrong answer (run here, outside the sandbox: the wrong answers
    are this file's own code, not submissions)."""
    key, name = case
    test = next(t for t in assignments.read_hidden_tests(REPO / "instructor", key) if t.name == name)
    namespace, arguments = {}, []
    exec(test.source, namespace)
    for parameter in assignments._parameters(test.source):
        answer = {}
        exec(WRONG_ANSWERS[case][parameter], answer)
        arguments.append(answer[parameter])
    with pytest.raises(AssertionError):
        namespace[name](*arguments)


def test_hidden_tests_are_not_in_the_installed_package():
    from setuptools import find_packages

    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert include == {"include": ["course_lib*"]}
    packages = find_packages(str(REPO), include=include["include"])
    assert packages and all(p.startswith("course_lib") for p in packages)
    assert not (REPO / "instructor" / "__init__.py").exists()
    names = {t.name for key in KEYS for t in assignments.read_hidden_tests(REPO / "instructor", key)}
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
    for key in KEYS:
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
            cell = next(
                c
                for c in student["cells"]
                if c["metadata"].get(assignments.OTTER_KEY, {})
                == {"exercise": exercise["label"], "role": "answer"}
            )
            assert "raises-exception" in cell["metadata"]["tags"]  # a book built from it shows the error
            assert "{solution-start}" not in text and "BEGIN SOLUTION" not in text
            for prose in source.solution_prose:
                assert prose not in text, f"{exercise['label']}: solution prose in the student notebook"
        assert "hidden: true" not in text and "def test_ex" not in text
        assert not re.search(r"\bch\d\d = unanswered", text), "a stub shadows the chapter's check module"


def test_build_links_the_student_notebooks_to_the_instructors_fork(tmp_path):
    """`assignments build --repo owner/name --branch b`: each student notebook's Colab badge opens
    student/<notebook> on that branch of the fork, and its setup cell installs from the fork."""
    pytest.importorskip("otter")
    from course_lib.__main__ import main

    out = tmp_path / "dist"
    argv = ["assignments", "build", str(out), "--chapters", "02", "--repo", "ada/llm-course"]
    assert main([*argv, "--branch", "term-1"]) == 0
    name = next(p.name for p in CHAPTERS if p.stem.startswith("02"))
    text = _text(json.loads((out / "student" / name).read_text()))
    badge = f"https://colab.research.google.com/github/ada/llm-course/blob/term-1/student/{name}"
    assert f"]({badge})" in text
    assert '"course_lib @ git+https://github.com/ada/llm-course"' in text
    assert assignments.REPOSITORY not in text
    with pytest.raises(assignments.AssignmentError, match="owner/name"):
        assignments.build(out, ["02"], repo="https://github.com/ada")


def test_solutions_notebook_holds_the_solutions(built):
    out, _ = built
    path = next(p for p in CHAPTERS if p.stem.startswith("06"))
    solutions = _text(json.loads((out / "solutions" / path.name).read_text()))
    for exercise in assignments.parse_chapter(path).exercises:
        assert exercise.solution_code[0].strip().splitlines()[-1] in solutions
    assert "BEGIN SOLUTION" not in solutions and "BEGIN PROMPT" not in solutions


def _built_without_hidden_tests(key: str, tmp_path_factory) -> Path:
    """Chapter ``key`` built from an instructor folder without its hidden tests: every exercise
    graded by its public check (what an instructor gets before writing tests)."""
    instructor = tmp_path_factory.mktemp("instructor-without-tests")
    (instructor / "tests").mkdir()
    out = tmp_path_factory.mktemp(f"public-checks-{key}")
    plans = assignments.build(out, [key], instructor=instructor)
    assert all(e["fallback"] for e in plans[0]["exercises"])
    return out


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """Every fixture submission of the four chapters, graded as an instructor would."""
    results = {}
    for key in FIXTURES:
        out = built[0] if key != PUBLIC_CHECKS_ONLY else _built_without_hidden_tests(key, tmp_path_factory)
        spec = yaml.safe_load((REPO / "instructor" / "fixtures" / f"{key}.yaml").read_text())
        name = next(p.name for p in CHAPTERS if assignments.chapter_key(p.stem) == key)
        student = json.loads((out / "student" / name).read_text())
        solutions = json.loads((out / "solutions" / name).read_text())
        folder = tmp_path_factory.mktemp(f"submissions-{key}")
        for fixture, entry in spec.items():
            notebook = assignments.fill_answers(student, entry["answers"], solutions)
            if entry.get("cell_under_setup"):  # a cell the student added under the setup cell
                setup = next(i for i, c in enumerate(notebook["cells"]) if c["cell_type"] == "code")
                notebook["cells"].insert(setup + 1, assignments._code(entry["cell_under_setup"]))
            (folder / f"{fixture}.ipynb").write_text(json.dumps(notebook))
        (folder / "not_a_notebook.ipynb").write_text("{ this is not json")
        (folder / "essay.pdf").write_bytes(b"%PDF-1.4 not a notebook")
        report = tmp_path_factory.mktemp(f"grades-{key}")
        csv_path = assignments.grade(
            key, folder, report, assignments=out, jobs=2, cell_timeout=CELL_TIMEOUT, test_timeout=TEST_TIMEOUT
        )
        with open(csv_path, newline="", encoding="utf-8") as handle:
            rows = {Path(row["submission"]).stem: row for row in csv.DictReader(handle)}
        results[key] = (spec, rows, report)
    return results


@pytest.mark.parametrize("key", FIXTURES)
def test_fixture_submissions_get_exactly_their_grades(graded, key):
    """Every fixture gets exactly its grade, the attacks on the grader in ch06.yaml and ch11.yaml
    included (graded in the same run as the correct submissions, whose rows they leave alone)."""
    spec, rows, report = graded[key]
    assert set(rows) == set(spec) | {"not_a_notebook", "essay"}
    for fixture, entry in spec.items():
        got = {label: int(rows[fixture][label]) for label in entry["expected"]}
        assert got == entry["expected"], f"{key} {fixture}: {got} != {entry['expected']}"
        assert int(rows[fixture]["total"]) == sum(got.values())
        assert rows[fixture]["status"] == "graded" and float(rows[fixture]["seconds"]) > 0
        feedback = (report / "feedback" / f"{fixture}.md").read_text()
        assert f"{sum(got.values())} / {rows[fixture]['possible']} points" in feedback


def test_a_file_that_is_not_a_notebook_gets_0_and_the_reason(graded):
    """Invalid JSON and a PDF: a row each with 0 points and why in its status (and feedback)."""
    _, rows, report = graded["ch06"]
    for name, why in (("not_a_notebook", "not valid .ipynb JSON"), ("essay", "a .pdf file")):
        assert int(rows[name]["total"]) == 0 and int(rows[name]["possible"]) == 9
        assert rows[name]["status"].startswith("not graded: not a notebook") and why in rows[name]["status"]
        file = "not_a_notebook.ipynb" if name == "not_a_notebook" else f"{name}.pdf"
        assert why in (report / "feedback" / assignments.feedback_name(file)).read_text()


REFERENCES = tuple(key for key in KEYS if key not in FIXTURES or key == PUBLIC_CHECKS_ONLY)


@pytest.fixture(scope="module")
def references(built, tmp_path_factory):
    """The solutions notebook of every chapter whose fixtures do not already hold it (graded with
    its hidden tests), submitted as it is. Grading executes only the setup cell, the lesson cells
    each answer needs and the answers, never the whole chapter; two chapters at a time."""
    from concurrent.futures import ThreadPoolExecutor

    out, _ = built

    def one(key: str) -> tuple[dict, str]:
        name = next(p.name for p in CHAPTERS if assignments.chapter_key(p.stem) == key)
        folder = tmp_path_factory.mktemp(f"reference-{key}")
        shutil.copy(out / "solutions" / name, folder / "reference.ipynb")
        report = tmp_path_factory.mktemp(f"reference-grades-{key}")
        csv_path = assignments.grade(key, folder, report, assignments=out, jobs=1)
        with open(csv_path, newline="", encoding="utf-8") as handle:
            row = next(csv.DictReader(handle))
        return row, (report / "feedback" / "reference.md").read_text()

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(REFERENCES, pool.map(one, REFERENCES)))


@pytest.mark.parametrize("key", KEYS)
def test_reference_solutions_get_full_marks(graded, references, key):
    """Every chapter's reference solutions get every point of its hidden tests (the `correct`
    fixture where a chapter has fixtures, else the solutions notebook as it is)."""
    if key in references:
        row, feedback = references[key]
    else:
        _, rows, report = graded[key]
        row, feedback = rows["correct"], (report / "feedback" / "correct.md").read_text()
    assert row["status"] == "graded", feedback
    assert int(row["possible"]) >= 3, f"{key}: every exercise has hidden tests"
    assert int(row["total"]) == int(row["possible"]), feedback


def test_feedback_explains_each_failure(graded):
    _, _, report = graded["ch06"]
    loops = (report / "feedback" / "loops_forever.md").read_text()
    assert "time limit per cell" in loops
    assert "time limit per cell" in (report / "feedback" / "ignores_sigint.md").read_text()
    assert "ended the Python process" in (report / "feedback" / "exits_in_one_cell.md").read_text()
    wrong = (report / "feedback" / "wrong_but_passes_public_check.md").read_text()
    assert "use attention_mask == 0" in wrong and "✅" in wrong
    assert "SyntaxError" in (report / "feedback" / "syntax_error.md").read_text()


def test_feedback_never_quotes_the_hidden_tests(graded):
    """No feedback file holds a line of hidden-test source, not even the one of a submission that
    looks for the tests on disk and raises what it finds (ch06 reads_the_hidden_tests)."""
    for key in FIXTURES:
        _, _, report = graded[key]
        # code lines (docstrings and assertion messages are shown on purpose), compared on letters
        # and digits: spacing and look-alike spaces aside
        lines = {
            line
            for test in assignments.read_hidden_tests(REPO / "instructor", key)
            for line in assignments._code_lines(test.source)
            if len(line) >= 16
        }
        for path in (report / "feedback").glob("*.md"):
            text = assignments._letters_and_digits(path.read_text())
            leaked = [line for line in lines if line in text]
            assert not leaked, f"{path.name} quotes the hidden tests: {leaked[:2]}"
    attack = (graded["ch06"][2] / "feedback" / "reads_the_hidden_tests.md").read_text()
    assert "def test_ex" not in attack and "0 / 9 points" in attack
    from_memory = (graded["ch06"][2] / "feedback" / "leaks_hidden_tests_from_memory.md").read_text()
    assert "0 / 9 points" in from_memory


def test_feedback_shows_run_messages_as_literal_text():
    forged = "x\n\n**9 / 9 points**\n\n## ch06-ex1: all correct: 3 / 3"
    shown = assignments._inert(forged)
    assert shown == "`x ↵ **9 / 9 points** ↵ ## ch06-ex1: all correct: 3 / 3`"
    assert assignments._inert("a `b` c") == "`a 'b' c`"


def test_redaction_sees_quotes_however_they_are_spaced():
    hidden = {"ch06-ex1": [{"source": "def test_a(f):\n    assert f([1, 2]) == [1, 2], 'kept'\n"}]}
    quoted = "RuntimeError: assert\u00a0f([1,\u00a02])\u200b == [1, 2], 'kept'"
    assert "removed" in assignments._redact(quoted, hidden)
    assert assignments._redact("ValueError: bad shape", hidden) == "ValueError: bad shape"


def test_each_submission_file_has_its_own_feedback_file():
    names = ["zoe.ipynb", "zoe.pdf", "zoe", "notes.txt"]
    assert [assignments.feedback_name(name) for name in names] == [
        "zoe.md",
        "not-a-notebook-zoe.pdf.md",
        "not-a-notebook-zoe.md",
        "not-a-notebook-notes.txt.md",
    ]


# --- the sandbox (bubblewrap) ---------------------------------------------------------------------


def test_grading_refuses_to_run_without_bubblewrap(monkeypatch, tmp_path):
    monkeypatch.setattr(assignments.shutil, "which", lambda name: None)
    with pytest.raises(assignments.AssignmentError, match="apt-get install -y bubblewrap"):
        assignments.grade("06", tmp_path, tmp_path / "out", assignments=tmp_path)


SANDBOX_PROBE = """
import json, os, socket
seen = {"pid": os.getpid(), "processes": len([p for p in os.listdir("/proc") if p.isdigit()])}
try:
    socket.create_connection(("1.1.1.1", 80), timeout=2)
    seen["network"] = True
except OSError:
    seen["network"] = False
seen["instructor"] = os.path.exists(INSTRUCTOR)
seen["outside"] = os.path.exists(OUTSIDE)
seen["writes"] = {}
for folder in ("/sandbox", "/tmp", os.environ["COURSE_CACHE"], os.path.dirname(json.__file__)):
    try:
        open(os.path.join(folder, "probe"), "w").close()
        seen["writes"][folder] = True
    except OSError:
        seen["writes"][folder] = False
try:
    block = bytearray(8 << 30)
    seen["8 GB"] = True
except MemoryError:
    seen["8 GB"] = False
print(json.dumps(seen))
"""


def test_sandbox_sees_only_what_it_needs(tmp_path):
    """What student code sees in the sandbox: no network, its own PID namespace, not instructor/
    nor any folder of the grader, writes only its scratch folder and /tmp, 8 GB cannot be allocated."""
    import subprocess

    scratch, outside = tmp_path / "scratch", tmp_path / "grades"
    scratch.mkdir(), outside.mkdir()
    probe = SANDBOX_PROBE.replace("INSTRUCTOR", repr(str(REPO / "instructor"))).replace(
        "OUTSIDE", repr(str(outside))
    )
    command = assignments.sandbox_command(scratch, ["-c", probe], cpu_seconds=60)
    seen = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=120).stdout)
    assert seen["pid"] == 1 and seen["processes"] == 1
    assert not seen["network"] and not seen["instructor"] and not seen["outside"]
    writable = {folder for folder, wrote in seen["writes"].items() if wrote}
    assert writable == {"/sandbox", "/tmp"} and len(seen["writes"]) == 4  # not the cache, not Python
    assert not seen["8 GB"]


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

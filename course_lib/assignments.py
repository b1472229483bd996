"""Instructor kit: student notebooks, hidden tests and grading, built on otter-grader.

The chapter notebooks stay the single source. ``build`` reads each chapter's exercises (a
``{exercise}`` directive, then ``{solution-start}``, the solution code cells that call a public
check from :mod:`course_lib.exercises`, then ``{solution-end}``), writes an otter-grader master
notebook with otter's markers and the hidden tests from the repository's ``instructor/`` folder,
and runs ``otter assign`` on it: a student notebook (solution code replaced by a stub, the public
check kept), a solutions notebook and the autograder (hidden tests) per chapter.

``grade`` grades a folder of submitted notebooks, each in its own process with a time limit per
cell and per submission. It executes only what the answers need: the chapter's setup cell, the
lesson cells that define the names the answers read (found by static analysis, taken from the
instructor's copy, never from the submission) and the answer cells; ``otter run`` then runs the
hidden tests. It writes ``grades.csv`` and one feedback file per submission.

Hidden tests live in ``instructor/`` (not in this package): ``instructor/tests/chNN.py`` holds
functions ``test_exK_<what>(<names the test reads>)``, one point each, self-contained (imports
inside). An exercise without hidden tests is graded by its public check, re-run from a fresh copy
of the check's module so that patching ``course_lib.exercises`` cannot reach it.

Only :func:`unanswered` is meant for student notebooks; everything else is for instructors and
imports otter-grader (the ``test`` extra) when called.
"""

from __future__ import annotations

import ast
import builtins
import copy
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# ----------------------------------------------------------------------------------------------
# For students


class _Unanswered:
    """A placeholder that fails, clearly, whenever an unanswered exercise's value is used."""

    def __init__(self, name: str):
        object.__setattr__(self, "_name", name)

    def _fail(self, *args, **kwargs):
        raise NotImplementedError(
            f"`{object.__getattribute__(self, '_name')}` is not answered yet: "
            "replace `unanswered(...)` with your code."
        )

    def __repr__(self) -> str:
        return f"unanswered({object.__getattribute__(self, '_name')!r})"

    __getattr__ = __setattr__ = __call__ = __iter__ = __len__ = __bool__ = __getitem__ = _fail
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __floordiv__ = _fail
    __int__ = __float__ = __index__ = __contains__ = _fail


def unanswered(name: str) -> _Unanswered:
    """The value a student notebook starts with where an exercise asks for ``name``: using it
    raises ``NotImplementedError`` saying which name to fill in."""
    return _Unanswered(name)


# ----------------------------------------------------------------------------------------------
# Reading a chapter's exercises

DIRECTIVE = re.compile(r"```\{(exercise|solution-start|solution-end)\}([^\n]*)\n(.*?)```", re.DOTALL)
CHECK_PREFIX = "check_"
OTTER_KEY = "course_lib"  # cell metadata key the student notebook carries: {"exercise": label, "role": ...}
REPOSITORY = "hf-llm-course/course"
STUDENT_BRANCH = "assignments"


class AssignmentError(ValueError):
    """A chapter, an instructor file or a submission is not in the shape the kit expects."""


@dataclass
class Exercise:
    label: str  # "ch06-ex1"
    title: str  # "Exact deduplication (easy)"
    body: str  # the exercise text (markdown)
    solution_code: list[str] = field(default_factory=list)
    solution_prose: list[str] = field(default_factory=list)

    @property
    def number(self) -> int:
        return int(self.label.rsplit("ex", 1)[1])


@dataclass
class Chapter:
    path: Path
    notebook: dict
    lesson: list[dict]  # the cells before the first exercise (the last may be cut to its text)
    exercises: list[Exercise]

    @property
    def key(self) -> str:
        return chapter_key(self.path.stem)


def chapter_key(name: str) -> str:
    """``"06_data_preparation"``, ``"06"``, ``"6"`` or ``"ch06"`` -> ``"ch06"``."""
    match = re.match(r"(?:ch)?(\d+)", Path(name).stem)
    if not match:
        raise AssignmentError(f"{name!r} names no chapter: use its number, e.g. 06 or ch06.")
    return f"ch{int(match.group(1)):02d}"


def _source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def _markdown(text: str) -> dict:
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(text: str, metadata: dict | None = None) -> dict:
    return {
        "cell_type": "code",
        "metadata": metadata or {},
        "source": text,
        "outputs": [],
        "execution_count": None,
    }


def _raw(text: str) -> dict:
    return {"cell_type": "raw", "metadata": {}, "source": text}


def parse_chapter(path: Path) -> Chapter:
    """Split a chapter notebook into its lesson cells and its exercises (text, solution code, prose)."""
    path = Path(path)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    lesson: list[dict] = []
    exercises: list[Exercise] = []
    state = "lesson"  # lesson -> solution <-> between
    for cell in notebook["cells"]:
        text = _source(cell)
        if cell["cell_type"] == "code":
            if state == "lesson":
                lesson.append(cell)
            elif state == "solution":
                exercises[-1].solution_code.append(text)
            elif text.strip():
                raise AssignmentError(
                    f"{path.name}: a code cell outside a solution after the first exercise."
                )
            continue
        if cell["cell_type"] != "markdown":
            if state == "lesson":
                lesson.append(cell)
            continue
        position = 0
        for match in DIRECTIVE.finditer(text):
            before = text[position : match.start()].strip()
            position = match.end()
            if before:
                if state == "lesson":
                    lesson.append(_markdown(before))
                elif state == "solution":
                    exercises[-1].solution_prose.append(before)
            kind, argument, content = match.group(1), match.group(2).strip(), match.group(3)
            if kind == "exercise":
                label = re.search(r"^:label:\s*(\S+)", content, re.MULTILINE)
                if not label:
                    raise AssignmentError(f"{path.name}: an exercise without a :label:.")
                body = "\n".join(line for line in content.splitlines() if not line.startswith(":")).strip()
                exercises.append(Exercise(label.group(1), argument, body))
                state = "between"
            elif kind == "solution-start":
                if not exercises or exercises[-1].label != argument:
                    raise AssignmentError(
                        f"{path.name}: solution-start {argument!r} does not follow its exercise."
                    )
                state = "solution"
            else:
                state = "between"
        rest = text[position:].strip()
        if rest:
            if state == "lesson":
                lesson.append(cell if position == 0 else _markdown(rest))
            elif state == "solution":
                exercises[-1].solution_prose.append(rest)
    for exercise in exercises:
        if not exercise.solution_code:
            raise AssignmentError(f"{path.name}: exercise {exercise.label} has no solution code cell.")
    return Chapter(path, notebook, lesson, exercises)


# ----------------------------------------------------------------------------------------------
# Static analysis: which names a piece of code reads and defines

BUILTINS = set(dir(builtins)) | {"display", "get_ipython", "__file__"}


def _python(source: str) -> str:
    """IPython cell source -> plain Python (magics become function calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def _symbols(source: str) -> tuple[set[str], set[str]]:
    """``(reads, binds)`` of one piece of code, from its symbol table (nested scopes included)."""
    import symtable

    table = symtable.symtable(source, "<cell>", "exec")
    binds = {
        s.get_name() for s in table.get_symbols() if s.is_assigned() or s.is_imported() or s.is_namespace()
    }
    reads = {s.get_name() for s in table.get_symbols() if s.is_referenced()}

    def walk(child):
        for symbol in child.get_symbols():
            if symbol.is_global() and symbol.is_referenced():
                reads.add(symbol.get_name())
        for grandchild in child.get_children():
            walk(grandchild)

    for child in table.get_children():
        walk(child)
    return reads, binds


def names(source: str) -> tuple[set[str], set[str]]:
    """``(reads, defines)``: global names the code reads before binding them itself (builtins
    excluded) and names it binds at top level. Raises SyntaxError."""
    code = _python(source)
    reads, defines = set(), set()
    for statement in ast.parse(code).body:
        text = ast.unparse(statement)
        statement_reads, binds = _symbols(text)
        if isinstance(
            statement, (ast.For, ast.AsyncFor)
        ):  # the loop variable is bound before the body reads it
            statement_reads -= _symbols(ast.unparse(statement.target) + " = None")[1]
        reads |= statement_reads - defines
        defines |= binds
    return reads - BUILTINS, defines


def _is_check_call(node: ast.AST) -> bool:
    """Does ``node`` call a public check (``chNN.check_x(...)`` or ``check_x(...)``)?"""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call):
            func = sub.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name.startswith(CHECK_PREFIX):
                return True
    return False


def _statements(source: str) -> tuple[list[str], list[ast.stmt]]:
    """The source's lines and its top-level statements (``lineno`` 1-based into those lines)."""
    return source.splitlines(), ast.parse(source).body


def _segments(source: str) -> list[tuple[ast.stmt, str]]:
    """Each top-level statement with its source lines (comments above it included)."""
    lines, body = _statements(source)
    segments = []
    for index, statement in enumerate(body):
        start = 1 if index == 0 else body[index - 1].end_lineno + 1
        segments.append((statement, "\n".join(lines[start - 1 : statement.end_lineno])))
    return segments


def strip_checks(source: str) -> str:
    """The code without its top-level statements that call a public check (graded by hidden tests
    instead). Code that does not parse comes back unchanged (it fails when executed)."""
    try:
        segments = _segments(_python(source))
    except SyntaxError:
        return source
    return "\n".join(text for statement, text in segments if not _is_check_call(statement)).strip("\n")


def _truncate(text: str, wanted: set[str]) -> str:
    """A lesson cell cut after its last top-level statement that defines one of ``wanted`` (what
    follows, printing and measuring, is not needed to define them)."""
    try:
        segments = _segments(_python(text))
    except SyntaxError:
        return text
    defining = [i for i, (statement, _) in enumerate(segments) if names(ast.unparse(statement))[1] & wanted]
    last = max(defining, default=len(segments) - 1)
    return "\n".join(part for _, part in segments[: last + 1]).strip("\n")


def lesson_code_needed(lesson_code: list[str], needed: set[str]) -> dict[int, str]:
    """The lesson code that defines ``needed``: for each lesson cell that holds the latest
    definition of a needed name before the code that reads it, its index and its source cut
    after the last statement defining a needed name; the same for everything those read."""
    analysed = []
    for text in lesson_code:
        try:
            analysed.append(names(text))
        except SyntaxError:
            analysed.append((set(), set()))
    required: dict[int, set[str]] = {}
    pushed: dict[int, set[str]] = {}
    todo = [(name, len(lesson_code)) for name in needed]
    while todo:
        name, before = todo.pop()
        for index in range(before - 1, -1, -1):
            if name in analysed[index][1]:
                wanted = required.setdefault(index, set())
                if name not in wanted:
                    wanted.add(name)
                    try:
                        reads = names(_truncate(lesson_code[index], wanted))[0]
                    except SyntaxError:
                        reads = analysed[index][0]
                    new = reads - pushed.setdefault(index, set())
                    pushed[index] |= new
                    todo.extend((read, index) for read in new)
                break
    return {index: _truncate(lesson_code[index], wanted) for index, wanted in sorted(required.items())}


def lesson_slice(lesson_code: list[str], needed: set[str]) -> list[int]:
    """Indices of the lesson code cells that :func:`lesson_code_needed` runs, in notebook order."""
    return sorted(lesson_code_needed(lesson_code, needed))


# ----------------------------------------------------------------------------------------------
# Hidden tests (instructor/tests/chNN.py)


@dataclass
class HiddenTest:
    exercise: int
    name: str
    source: str  # the function definition
    doc: str


def read_hidden_tests(instructor: Path, key: str) -> list[HiddenTest]:
    """The hidden tests of chapter ``key``: functions ``test_exK_...`` in ``instructor/tests/<key>.py``."""
    path = Path(instructor) / "tests" / f"{key}.py"
    if not path.exists():
        return []
    source = path.read_text(encoding="utf-8")
    tests = []
    for statement in ast.parse(source).body:
        if isinstance(statement, ast.FunctionDef):
            match = re.match(r"test_ex(\d+)_", statement.name)
            if not match:
                raise AssignmentError(f"{path}: {statement.name} should be named test_exK_<what>.")
            function = ast.get_source_segment(source, statement)
            tests.append(
                HiddenTest(
                    int(match.group(1)),
                    statement.name,
                    function,
                    ast.get_docstring(statement) or statement.name,
                )
            )
        elif not isinstance(statement, (ast.Expr, ast.Import, ast.ImportFrom)):
            raise AssignmentError(
                f"{path}: only test functions (imports inside them) belong here; "
                f"found {type(statement).__name__} at line {statement.lineno}."
            )
    return tests


def _fallback_test(exercise: Exercise, call: str, module: str, alias: str) -> HiddenTest:
    """A test that re-runs the public check from a fresh copy of its module."""
    name = f"test_ex{exercise.number}_public_check"
    source = (
        f"def {name}(env):\n"
        f'    """The public check, from a fresh copy of {module}."""\n'
        "    import importlib.util\n"
        f"    spec = importlib.util.find_spec({module!r})\n"
        "    fresh = importlib.util.module_from_spec(spec)\n"
        "    spec.loader.exec_module(fresh)\n"
        f"    feedback = eval({call!r}, dict(env, **{{{alias!r}: fresh}}))\n"
        "    assert feedback.passed, feedback.message\n"
    )
    return HiddenTest(exercise.number, name, source, f"the public check ({call.split('(')[0]})")


# ----------------------------------------------------------------------------------------------
# The master notebook and otter assign


def _check_module(solution: str) -> tuple[str, str] | None:
    """``(module, alias)`` of the course_lib.exercises module the solution imports, if any."""
    for node in ast.walk(ast.parse(solution)):
        if isinstance(node, ast.ImportFrom) and node.module == "course_lib.exercises":
            for alias in node.names:
                return f"course_lib.exercises.{alias.name}", alias.asname or alias.name
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("course_lib.exercises.") and alias.asname:
                    return alias.name, alias.asname
    return None


SIMPLE_ARGUMENTS = (ast.Name, ast.Constant, ast.Attribute, ast.List, ast.Tuple, ast.Dict, ast.UnaryOp)


def _student_check(check: str, exercise: Exercise) -> str:
    """The public check as the student notebook shows it: the solution's call, unless one of its
    arguments computes the answer inline; then the call as the exercise's text writes it."""
    call = ast.parse(check).body[0]
    arguments = [a for node in ast.walk(call) if isinstance(node, ast.Call) for a in node.args] + [
        k.value for node in ast.walk(call) if isinstance(node, ast.Call) for k in node.keywords
    ]
    if all(isinstance(a, SIMPLE_ARGUMENTS) for a in arguments if not isinstance(a, ast.Call)):
        return check
    function = next(
        n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
        for n in ast.walk(call)
        if isinstance(n, ast.Call) and _is_check_call(n)
    )
    for span in re.findall(r"`([^`]+)`", exercise.body):
        if function in span:
            try:
                ast.parse(span)
            except SyntaxError:
                continue
            return span
    raise AssignmentError(
        f"{exercise.label}: the check call computes the answer in its arguments; show the call with a "
        "name for the answer in the exercise text (e.g. `chNN.check_x(answer)`)."
    )


def _stub(exercise: Exercise, solution: str, lesson_defines: set[str]):
    """Split a solution cell: ``(head, stub, body, solution checks, student checks)`` where the
    head holds the course_lib.exercises imports, the stub what a student starts from and the
    checks the public check statements (the student's keep them, minus any inline answer)."""
    head, body, checks = [], [], []
    for statement, text in _segments(solution):
        if isinstance(statement, ast.ImportFrom) and (statement.module or "").startswith(
            "course_lib.exercises"
        ):
            head.append(text)
        elif _is_check_call(statement):
            checks.append(text.strip("\n"))
        else:
            body.append((statement, text))
    student_checks = [_student_check(text, exercise) for text in checks]
    wanted = set()
    for text in student_checks:
        wanted |= names(text)[0]
    stubs, placeholders = [], []
    for statement, _ in body:
        if isinstance(statement, ast.FunctionDef) and statement.name in wanted:
            stubs.append(
                f"def {statement.name}({ast.unparse(statement.args)}):\n    # your code here\n"
                f'    raise NotImplementedError("{exercise.label}: write `{statement.name}`")\n'
            )
            wanted.discard(statement.name)
    bound = set()
    for statement, _ in body:
        bound |= names(ast.unparse(statement))[1]
    imported = set().union(*(names(text)[1] for text in head)) if head else set()
    placeholders = sorted((wanted & bound) | (wanted - lesson_defines - imported - bound))
    stubs += [f"{name} = unanswered({name!r})  # your code here\n" for name in placeholders]
    if placeholders:
        stubs.insert(0, "from course_lib.assignments import unanswered\n")
    stub = "\n\n".join(stubs) if stubs else "# your code here\n"
    return (
        "\n".join(t.strip("\n") for t in head),
        stub,
        "\n".join(text for _, text in body).strip("\n"),
        checks,
        student_checks,
    )


def master_notebook(chapter: Chapter, tests: list[HiddenTest]) -> tuple[dict, dict]:
    """The otter-grader master notebook of ``chapter`` and the grading plan (what ``grade`` needs)."""
    key = chapter.key
    config = (
        f"# ASSIGNMENT CONFIG\nname: {key}\ninit_cell: false\ncheck_all_cell: false\n"
        "export_cell: false\nrun_tests: false\ntests:\n  files: true\n  ok_format: false\n"
    )
    cells = [_raw(config)] + [copy.deepcopy(c) for c in chapter.lesson]
    for cell in cells:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    lesson_code = [_source(c) for c in chapter.lesson if c["cell_type"] == "code"]
    plan = {
        "chapter": key,
        "notebook": chapter.path.name,
        "lesson_code": lesson_code,
        "setup_cell": 0,
        "exercises": [],
    }
    found = None  # the course_lib.exercises module the solutions import (often only in the first)
    lesson_defines = set()
    for text in lesson_code:
        try:
            lesson_defines |= names(text)[1]
        except SyntaxError:
            pass
    for exercise in chapter.exercises:
        solution = "\n\n\n".join(c.strip("\n") for c in exercise.solution_code)
        found = _check_module(solution) or found
        head, stub, body, checks, student_checks = _stub(exercise, solution, lesson_defines)
        lesson_defines |= names(head)[1] if head else set()  # later exercises use these imports too
        same = checks == student_checks
        mine = [t for t in tests if t.exercise == exercise.number]
        check_reads: list[str] = []
        if not mine:
            if not found or len(checks) != 1:
                raise AssignmentError(
                    f"{exercise.label}: no hidden tests in instructor/tests/{key}.py "
                    "and no single public check call to fall back on."
                )
            call = ast.unparse(ast.parse(student_checks[0]).body[0].value)
            mine = [_fallback_test(exercise, call, *found)]
            check_reads = sorted(names(call)[0] - {found[1]})
        answer = "\n".join(
            (
                *([head, ""] + ([] if stub.startswith("from ") else [""]) if head else []),
                '""" # BEGIN PROMPT',
                stub.rstrip("\n"),
                *([] if same else ["", "", "\n\n".join(student_checks)]),
                '"""  # END PROMPT',
                "# BEGIN SOLUTION NO PROMPT",
                body,
                *([] if same else ["", "", "\n\n".join(checks)]),
                "# END SOLUTION",
                "",
                "",
                "\n\n".join(checks) if same else "",
            )
        )
        cells += [
            _raw(f"# BEGIN QUESTION\nname: {exercise.label}\npoints: {len(mine)}"),
            _markdown(f"### Exercise {exercise.number}: {exercise.title}\n\n{exercise.body}"),
            _raw("# BEGIN SOLUTION"),
            _code(answer.strip("\n") + "\n", {OTTER_KEY: {"exercise": exercise.label}}),
            _raw("# END SOLUTION"),
            _raw("# BEGIN TESTS"),
        ]
        cells += [
            _code(f'""" # BEGIN TEST CONFIG\nhidden: true\npoints: 1\n""" # END TEST CONFIG\n{t.source}')
            for t in mine
        ]
        cells += [_raw("# END TESTS"), _raw("# END QUESTION")]
        plan["exercises"].append(
            {
                "label": exercise.label,
                "title": exercise.title,
                "points": len(mine),
                "tests": [{"name": t.name, "doc": t.doc} for t in mine],
                "fallback": mine[0].name.endswith("_public_check"),
                "check_reads": check_reads,
                "solution_lines": _secret_lines(
                    body if same else "\n".join([body, *checks]),
                    lesson_code + [stub, exercise.body, *student_checks],
                ),
            }
        )
    notebook = {
        "cells": cells,
        "metadata": copy.deepcopy(chapter.notebook.get("metadata", {})),
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return notebook, plan


def _secret_lines(body: str, public_texts: list[str]) -> list[str]:
    """The solution's lines that give something away: longer than a keyword or a bracket, and not
    already public (in the lesson's code, the exercise text, the stub or the check)."""
    public = "\n".join(public_texts)
    secret = []
    for line in body.splitlines():
        stripped = line.strip() if line.strip().startswith(("'", '"')) else line.split("#", 1)[0].strip()
        if len(stripped) > 12 and stripped not in public:
            secret.append(stripped)
    return secret


def _student_notebook(path: Path, key: str, notebook_name: str) -> None:
    """Tidy otter's student notebook: the Colab badge points at the student version."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown" and "colab.research.google.com" in _source(cell):
            cell["source"] = _source(cell).replace(
                f"blob/main/notebooks/{notebook_name}", f"blob/{STUDENT_BRANCH}/student/{notebook_name}"
            )
        meta = cell.get("metadata", {})
        if cell["cell_type"] == "markdown" and _source(cell).startswith("### Exercise "):
            label = re.search(r"Exercise (\d+)", _source(cell)).group(1)
            meta[OTTER_KEY] = {"exercise": f"{key}-ex{label}", "role": "prompt"}
        if OTTER_KEY in meta and cell["cell_type"] == "code":
            meta[OTTER_KEY]["role"] = "answer"
            cell["source"] = _source(cell).strip("\n")
    path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _solutions_notebook(source: Path, target: Path) -> None:
    """otter's autograder notebook without the prompt strings and solution markers."""
    notebook = json.loads(source.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        text = re.sub(r'""" # BEGIN PROMPT\n.*?"""  # END PROMPT\n', "", _source(cell), flags=re.DOTALL)
        text = re.sub(r"^# (BEGIN SOLUTION NO PROMPT|END SOLUTION)\n", "", text, flags=re.MULTILINE)
        cell["source"] = re.sub(r"\n{4,}", "\n\n\n", text)
    target.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def repository_root() -> Path:
    """The checkout holding notebooks/ and instructor/: the current folder or this package's parent."""
    for candidate in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (candidate / "notebooks").is_dir():
            return candidate
    raise AssignmentError(
        "run this from a checkout of the course (a folder with notebooks/ and instructor/)."
    )


def chapter_notebooks(notebooks: Path) -> list[Path]:
    """The chapters with exercises (``NN_*.ipynb``; the appendix has none)."""
    return sorted(p for p in Path(notebooks).glob("[0-9][0-9]_*.ipynb"))


def _otter(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "otter", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssignmentError(
            f"otter {' '.join(args)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    return result


def build_chapter(path: Path, out: Path, instructor: Path) -> dict:
    """Build one chapter into ``out``: student/, solutions/, autograder/<chNN>/. Returns its plan."""
    chapter = parse_chapter(path)
    key = chapter.key
    master, plan = master_notebook(chapter, read_hidden_tests(instructor, key))
    with tempfile.TemporaryDirectory(prefix=f"assign-{key}-") as work:
        work = Path(work)
        (work / f"{key}.ipynb").write_text(json.dumps(master, indent=1, ensure_ascii=False), encoding="utf-8")
        _otter("assign", "--no-pdfs", f"{key}.ipynb", "dist", cwd=work)
        dist = work / "dist"
        for folder in ("student", "solutions", "autograder"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(dist / "student" / f"{key}.ipynb", out / "student" / path.name)
        _student_notebook(out / "student" / path.name, key, path.name)
        _solutions_notebook(dist / "autograder" / f"{key}.ipynb", out / "solutions" / path.name)
        grader = out / "autograder" / key
        if grader.exists():
            shutil.rmtree(grader)
        grader.mkdir(parents=True)
        shutil.copy(next((dist / "autograder").glob("*.zip")), grader / "autograder.zip")
        shutil.copytree(dist / "autograder" / "tests", grader / "tests")
    (grader / "plan.json").write_text(json.dumps(plan, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return plan


def build(
    out: Path, chapters: list[str] | None = None, root: Path | None = None, instructor: Path | None = None
) -> list[dict]:
    """Build every chapter's (or the ``chapters``') student notebook, solutions notebook and
    autograder into ``out``, plus ``out/student.zip`` to hand out."""
    root = Path(root) if root else repository_root()
    instructor = Path(instructor) if instructor else root / "instructor"
    out = Path(out)
    wanted = {chapter_key(c) for c in chapters} if chapters else None
    paths = [p for p in chapter_notebooks(root / "notebooks") if not wanted or chapter_key(p.stem) in wanted]
    with ThreadPoolExecutor(max_workers=2) as pool:  # otter assign runs in its own process
        plans = list(pool.map(lambda path: build_chapter(path, out, instructor), paths))
    with zipfile.ZipFile(out / "student.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for notebook in sorted((out / "student").glob("*.ipynb")):
            archive.write(notebook, notebook.name)
    return plans


# ----------------------------------------------------------------------------------------------
# Grading


def answer_cells(notebook: dict) -> dict[str, list[str]]:
    """The code a student wrote per exercise: every code cell from an exercise's prompt (or its
    answer cell) to the next exercise. Lesson cells are not taken from a submission."""
    answers: dict[str, list[str]] = {}
    current = None
    for cell in notebook.get("cells", []):
        mark = cell.get("metadata", {}).get(OTTER_KEY, {})
        if isinstance(mark, dict) and mark.get("exercise"):
            current = str(mark["exercise"])
            answers.setdefault(current, [])
        if current and cell.get("cell_type") == "code":
            answers[current].append(_source(cell))
    return answers


def fill_answers(student: dict, answers: dict[str, str | list[str]], solutions: dict | None = None) -> dict:
    """A copy of a student notebook with ``answers[label]`` (code, or a list of cells: the extra
    ones are inserted after it, without metadata, as a student would add them) in each exercise's
    answer cell. ``"solution"`` stands for the answer cell of the ``solutions`` notebook. Makes
    test submissions (``instructor/fixtures``)."""
    notebook = copy.deepcopy(student)
    reference = answer_cells(solutions) if solutions else {}
    cells = []
    for cell in notebook["cells"]:
        cells.append(cell)
        mark = cell.get("metadata", {}).get(OTTER_KEY, {})
        if cell["cell_type"] != "code" or mark.get("role") != "answer" or mark["exercise"] not in answers:
            continue
        code = answers[mark["exercise"]]
        code = reference[mark["exercise"]] if code == "solution" else code
        code = [code] if isinstance(code, str) else list(code)
        cell["source"] = code[0]
        cells += [_code(text) for text in code[1:]]
    notebook["cells"] = cells
    return notebook


def grading_notebook(plan: dict, submission: dict) -> tuple[dict, dict[str, list[str]]]:
    """The notebook otter executes: the setup cell, the lesson cells the answers need, then each
    exercise's answer cells (public checks removed) followed by its hidden tests."""
    answers = answer_cells(submission)
    lesson = plan["lesson_code"]
    needed: set[str] = set()
    cells_by_exercise = {}
    for exercise in plan["exercises"]:
        code = [strip_checks(text) for text in answers.get(exercise["label"], [])]
        cells_by_exercise[exercise["label"]] = code
        for text in code:
            try:
                needed |= names(text)[0]
            except SyntaxError:
                pass
        needed |= set(exercise["check_reads"])
    code = lesson_code_needed(lesson, needed)
    code[plan["setup_cell"]] = lesson[plan["setup_cell"]]  # always, and whole
    chosen = sorted(code)
    cells = [_code(code[i]) for i in chosen]
    for exercise in plan["exercises"]:
        code = cells_by_exercise[exercise["label"]] or ["pass"]
        for index, text in enumerate(code):
            meta = {OTTER_KEY: {"exercise": exercise["label"]}}
            if index == len(code) - 1:
                meta["otter"] = {"tests": [exercise["label"]]}
            cells.append(_code(text, meta))
    notebook = {
        "cells": cells,
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "otter": {"assignment_name": plan["chapter"]},
        },
    }
    return notebook, {"lesson_cells": chosen}


def _cell_errors(executed: dict) -> dict[str, str]:
    """The first error each exercise's cells raised while executing, as ``Name: message``."""
    errors = {}
    for cell in executed.get("cells", []):
        label = cell.get("metadata", {}).get(OTTER_KEY, {}).get("exercise")
        for output in cell.get("outputs", []):
            if label and output.get("output_type") == "error" and label not in errors:
                if output.get("ename") == "KeyboardInterrupt":  # what the time limit per cell raises
                    errors[label] = "TimeoutError: the cell ran over the time limit per cell and was stopped"
                else:
                    errors[label] = f"{output.get('ename')}: {output.get('evalue')}"[:500]
    return errors


def grade_one(autograder: Path, plan: dict, submission: Path, cell_timeout: int) -> dict:
    """Grade one submission in this process (``grade`` runs each in its own). Returns the scores,
    the hidden tests' messages and the errors the answers raised."""
    import nbconvert.preprocessors

    class TimedExecutePreprocessor(nbconvert.preprocessors.ExecutePreprocessor):
        """otter's executor with a time limit per cell: a cell over it is interrupted and fails."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.timeout = cell_timeout
            self.interrupt_on_timeout = True

    nbconvert.preprocessors.ExecutePreprocessor = TimedExecutePreprocessor  # otter imports it when grading
    import dill
    from otter.run.run_autograder import main as run_autograder

    result = {"scores": {e["label"]: 0 for e in plan["exercises"]}, "tests": {}, "errors": {}, "note": ""}
    try:
        submitted = json.loads(Path(submission).read_text(encoding="utf-8"))
        assert isinstance(submitted, dict) and isinstance(submitted.get("cells"), list)
    except Exception:  # a submission can be anything: grade it 0 with a reason
        result["note"] = "not a notebook (the file is not valid .ipynb JSON)"
        return result
    notebook, info = grading_notebook(plan, submitted)
    if not any(answer_cells(submitted).values()):
        result["note"] = (
            "no exercise cells found: submit the student notebook from `assignments build` "
            "with your answers in its exercise cells"
        )
    # What `otter run` does, plus a look at the hidden test files before they are deleted.
    with tempfile.TemporaryDirectory(prefix="grade-") as work:
        folder = Path(work) / "autograder"
        for sub in ("source", "submission", "results"):
            (folder / sub).mkdir(parents=True)
        (folder / "submission_metadata.json").write_text("{}", encoding="utf-8")
        with zipfile.ZipFile(autograder) as archive:
            archive.extractall(folder / "source")
            originals = {name: archive.read(name) for name in archive.namelist() if name.startswith("tests/")}
        (folder / "submission" / f"{plan['chapter']}.ipynb").write_text(
            json.dumps(notebook), encoding="utf-8"
        )
        run_autograder(str(folder), otter_run=True, logo=False, debug=False)
        with open(folder / "results" / "results.pkl", "rb") as handle:
            graded = dill.load(handle)
        altered = sorted(
            name
            for name, content in originals.items()
            if not (folder / "submission" / name).exists()
            or (folder / "submission" / name).read_bytes() != content
        )
    executed = graded.notebook if isinstance(graded.notebook, dict) else {}
    result["errors"] = _cell_errors(executed)
    result["lesson_cells"] = info["lesson_cells"]
    for exercise in plan["exercises"]:
        label = exercise["label"]
        test_file = graded.results.get(label)
        expected = [t["name"] for t in exercise["tests"]]
        if test_file is None:
            result["tests"][label] = [(name, False, "not run") for name in expected]
            continue
        outcomes = list(test_file.test_case_results)
        if (
            f"tests/{label}.py" in altered
            or len(outcomes) != len(expected)
            or [o.test_case.points for o in outcomes] != [1] * len(expected)
        ):
            result["tests"][label] = [
                (name, False, "the hidden tests were altered during grading") for name in expected
            ]
            continue
        rows = []
        for name, outcome in zip(expected, outcomes):
            message = "" if outcome.passed else _test_message(outcome.message)
            rows.append((name, bool(outcome.passed), message))
        result["tests"][label] = rows
        result["scores"][label] = sum(1 for _, passed, _ in rows if passed)
    return result


def _test_message(message: str) -> str:
    """The useful line of a failed otter test case: the exception and its message."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", line)]
    return (errors[-1] if errors else (lines[-1] if lines else "failed"))[:300]


def feedback_text(name: str, plan: dict, result: dict, seconds: float, status: str) -> str:
    """The feedback a student gets: points per exercise, each hidden test, the errors raised."""
    total = sum(result["scores"].values())
    possible = sum(e["points"] for e in plan["exercises"])
    lines = [
        f"# {plan['chapter']} feedback: {name}",
        "",
        f"**{total} / {possible} points** (graded in {seconds:.0f} s; {status})",
        "",
    ]
    if result.get("note"):
        lines += [f"Note: {result['note']}", ""]
    for exercise in plan["exercises"]:
        label = exercise["label"]
        lines += [
            f"## {label}: {exercise['title']}: {result['scores'].get(label, 0)} / {exercise['points']}",
            "",
        ]
        if label in result.get("errors", {}):
            lines += [f"Your code raised {result['errors'][label]}", ""]
        tests = {t["name"]: t["doc"] for t in exercise["tests"]}
        for test, passed, message in result.get("tests", {}).get(label, []):
            lines.append(
                f"- {'✅' if passed else '❌'} {tests.get(test, test)}" + ("" if passed else f": {message}")
            )
        lines.append("")
    return "\n".join(lines)


def _kill_tree(pid: int) -> None:
    """Kill a process and every process it started (kernels run in their own session)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


def _grade_in_process(args: tuple) -> tuple[str, dict, float, str]:
    autograder, plan_path, submission, cell_timeout, time_limit = args
    command = [
        sys.executable,
        "-m",
        "course_lib.assignments",
        "grade-one",
        str(autograder),
        str(plan_path),
        str(submission),
        str(cell_timeout),
    ]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        PYTHONHASHSEED="0",
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="submission-") as work:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            stdout, stderr = process.communicate(timeout=time_limit)
        except subprocess.TimeoutExpired:
            _kill_tree(process.pid)
            process.communicate()
            return submission.name, {}, time.perf_counter() - start, f"time limit ({time_limit} s) exceeded"
    seconds = time.perf_counter() - start
    marker = "COURSE_LIB_GRADE "
    for line in reversed(stdout.splitlines()):
        if line.startswith(marker):
            return submission.name, json.loads(line[len(marker) :]), seconds, "graded"
    return (
        submission.name,
        {},
        seconds,
        "grader error: " + (stderr.strip().splitlines() or ["no output"])[-1][:300],
    )


def grade(
    chapter: str,
    submissions: Path,
    out: Path,
    assignments: Path | None = None,
    jobs: int = 2,
    cell_timeout: int = 60,
    time_limit: int = 600,
    root: Path | None = None,
    instructor: Path | None = None,
) -> Path:
    """Grade every ``*.ipynb`` in ``submissions`` for ``chapter``: one process per submission, at
    most ``jobs`` at a time; writes ``out/grades.csv`` and ``out/feedback/<submission>.md``.
    ``assignments`` is a folder ``build`` wrote (built afresh for this chapter when omitted)."""
    key = chapter_key(chapter)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if assignments is None:
        root = Path(root) if root else repository_root()
        path = next((p for p in chapter_notebooks(root / "notebooks") if chapter_key(p.stem) == key), None)
        if path is None:
            raise AssignmentError(f"no chapter notebook for {key} in {root / 'notebooks'}.")
        assignments = out / "assignment"
        build_chapter(path, assignments, Path(instructor) if instructor else root / "instructor")
    grader = Path(assignments) / "autograder" / key
    if not (grader / "plan.json").exists():
        raise AssignmentError(
            f"{grader} has no plan.json: run `python -m course_lib assignments build` first."
        )
    plan = json.loads((grader / "plan.json").read_text(encoding="utf-8"))
    files = sorted(Path(submissions).glob("*.ipynb"))
    if not files:
        raise AssignmentError(f"no .ipynb files in {submissions}.")
    work = [
        (
            grader.resolve() / "autograder.zip",
            grader.resolve() / "plan.json",
            f.resolve(),
            cell_timeout,
            time_limit,
        )
        for f in files
    ]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(_grade_in_process, work))
    (out / "feedback").mkdir(exist_ok=True)
    labels = [e["label"] for e in plan["exercises"]]
    possible = sum(e["points"] for e in plan["exercises"])
    with open(out / "grades.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["submission", *labels, "total", "possible", "seconds", "status"])
        for name, result, seconds, status in results:
            result = result or {
                "scores": {label: 0 for label in labels},
                "tests": {},
                "errors": {},
                "note": status,
            }
            scores = [result["scores"].get(label, 0) for label in labels]
            writer.writerow([name, *scores, sum(scores), possible, f"{seconds:.1f}", status])
            (out / "feedback" / f"{Path(name).stem}.md").write_text(
                feedback_text(name, plan, result, seconds, status) + "\n", encoding="utf-8"
            )
    return out / "grades.csv"


def _main(argv: list[str]) -> int:
    """``python -m course_lib.assignments grade-one AUTOGRADER PLAN SUBMISSION CELL_TIMEOUT``
    (what ``grade`` runs per submission): prints one ``COURSE_LIB_GRADE {json}`` line."""
    if len(argv) != 5 or argv[0] != "grade-one":
        print(_main.__doc__, file=sys.stderr)
        return 2
    _, autograder, plan_path, submission, cell_timeout = argv
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    import contextlib
    import io

    noise = io.StringIO()
    with contextlib.redirect_stdout(noise):
        result = grade_one(Path(autograder), plan, Path(submission), int(cell_timeout))
    print("COURSE_LIB_GRADE " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

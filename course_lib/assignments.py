"""Instructor kit: student notebooks, hidden tests and grading, built on otter-grader.

The chapter notebooks stay the single source. ``build`` reads each chapter's exercises (a
``{exercise}`` directive, then ``{solution-start}``, the solution code cells that call a public
check from :mod:`course_lib.exercises`, then ``{solution-end}``), writes an otter-grader master
notebook with otter's markers and the hidden tests from the repository's ``instructor/`` folder,
and runs ``otter assign`` on it: a student notebook (solution code replaced by a stub, the public
check kept), a solutions notebook and the autograder (hidden tests) per chapter.

``grade`` grades a folder of submitted notebooks, each in its own bubblewrap sandbox (no network,
its own namespaces, read-only system, only a scratch folder writable; see ``sandbox_command``). In
it a runner that never executes student code forks one process per exercise: the chapter's setup
cell, the lesson cells the answer needs (found by static analysis, taken from the instructor's copy,
never from the submission), then the student's cells, under a time limit; the values the tests read
are saved. The hidden tests then enter the sandbox, each run by a judge process that never runs
student code: it calls the student's functions through handles answered by another process, and
reads those answers as data only (:mod:`course_lib.remote_values`). The grader writes ``grades.csv`` and one feedback file per submission from what
the runner reports on a pipe that student processes do not hold.

Hidden tests live in ``instructor/`` (not in this package): ``instructor/tests/chNN.py`` holds
functions ``test_exK_<what>(<names the test reads>)``, one point each, self-contained (imports
inside). An exercise without hidden tests is graded by its public check, called by a judge on the
arguments the student's cell passes it.

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
import unicodedata
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
HIDDEN_TESTS = "hidden_tests.json"  # per chapter in autograder/chNN/: what the test step runs


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


# Calls that do not change their arguments: a lesson statement that only shows a value is not
# needed to compute it.
SHOWING = {"print", "display", "table", "claim", "len", "repr", "str", "type", "isinstance"}
# Methods that read their object and write elsewhere (``model.save_pretrained(repo)`` changes
# ``repo``, not ``model``).
WRITING_ELSEWHERE = {"save_pretrained", "push_to_hub", "save", "generate"}


def _own_nodes(statement: ast.AST):
    """The nodes of ``statement`` that always run with it: not in the functions, classes and
    lambdas it defines, nor under an ``if`` (a branch such as "when logged in to the Hub" is not
    what the lesson's values come from)."""
    todo = [] if isinstance(statement, ast.If) else [statement]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.If)
            ):
                todo.append(child)


def _root(node: ast.AST) -> str | None:
    """``x`` for ``x``, ``x.a.b``, ``x[i].c``; None for anything else."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _changes(statement: ast.stmt, paths: set[str] = frozenset()) -> set[str]:
    """Names a statement may change without binding them, and the modules a ``%%writefile``
    writes (``"module chat_api"``): ``x`` for ``x.method(...)`` as a statement of its own
    (``trainer.train()``), ``x.a = ...`` and ``x[i] += ...``, and a path in ``paths`` passed as it
    is to a call that is not one of :data:`SHOWING` (the call may write files there:
    ``commit_folder(repo, tag="v1.0")``). The lesson slice runs these statements with the
    definitions they change."""
    changed = set()
    for node in _own_nodes(statement):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            function = node.value.func
            if isinstance(function, ast.Attribute) and function.attr not in WRITING_ELSEWHERE:
                changed.add(_root(function.value))
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for sub in ast.walk(target):
                    if isinstance(sub, (ast.Attribute, ast.Subscript)):
                        changed.add(_root(sub))
        elif isinstance(node, ast.Call):
            function = (
                node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            )
            if function == "run_cell_magic" and len(node.args) >= 2:  # %%writefile name.py
                magic, argument = (getattr(a, "value", None) for a in node.args[:2])
                if magic == "writefile" and str(argument).endswith(".py"):
                    changed.add(f"module {Path(str(argument).split()[-1]).stem}")
            elif function not in SHOWING:
                for argument in [*node.args, *(k.value for k in node.keywords)]:
                    if isinstance(argument, ast.Name) and argument.id in paths:
                        changed.add(argument.id)
    return changed - {None}


def _lesson_names(lesson_code: list[str]) -> tuple[set[str], set[str]]:
    """``(paths, modules)``: the names the lesson binds to a folder or file (``Path(...)``,
    ``tempfile.mkdtemp()`` or a path ``/`` something) and to an imported module or object."""
    modules: set[str] = set()
    paths: set[str] = set()
    for text in lesson_code:
        try:
            body = ast.parse(_python(text)).body
        except SyntaxError:
            continue
        for statement in body:
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                modules |= {(alias.asname or alias.name).split(".")[0] for alias in statement.names}
            if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
                value = statement.value
                calls = {
                    n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                    for n in ast.walk(value)
                    if isinstance(n, ast.Call)
                }
                divided = (
                    isinstance(value, ast.BinOp)
                    and isinstance(value.op, ast.Div)
                    and (_root(value.left) in paths)
                )
                if calls & {"Path", "mkdtemp"} or divided:
                    paths |= {t.id for t in statement.targets}
    return paths, modules


def _imported_modules(statement: ast.stmt) -> set[str]:
    """``"module x"`` for each top-level module an import statement reads (``import x.y``)."""
    if isinstance(statement, ast.Import):
        return {f"module {alias.name.split('.')[0]}" for alias in statement.names}
    if isinstance(statement, ast.ImportFrom) and statement.module and not statement.level:
        return {f"module {statement.module.split('.')[0]}"}
    return set()


def slice_names(
    source: str, paths: set[str] = frozenset(), modules: set[str] = frozenset()
) -> tuple[set[str], set[str]]:
    """:func:`names` for the lesson slice: also the names a statement changes (:func:`_changes`)
    count as defined, and the modules it imports as read. Raises SyntaxError."""
    code = _python(source)
    reads, defines = set(), set()
    body = ast.parse(code).body
    modules = {  # `sharing.write_space(...)` changes no module
        (alias.asname or alias.name).split(".")[0]
        for statement in body
        if isinstance(statement, (ast.Import, ast.ImportFrom))
        for alias in statement.names
    } | set(modules)
    for statement in body:
        statement_reads, binds = names(ast.unparse(statement))
        statement_reads |= _imported_modules(statement)
        reads |= statement_reads - defines
        defines |= binds | (_changes(statement, paths) - modules)
    return reads, defines


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


def _truncate(
    text: str, wanted: set[str], paths: set[str] = frozenset(), modules: set[str] = frozenset()
) -> str:
    """A lesson cell cut after its last top-level statement that defines one of ``wanted`` (what
    follows, printing and measuring, is not needed to define them)."""
    try:
        segments = _segments(_python(text))
    except SyntaxError:
        return text
    defining = [
        i
        for i, (statement, _) in enumerate(segments)
        if slice_names(ast.unparse(statement), paths, modules)[1] & wanted
    ]
    last = max(defining, default=len(segments) - 1)
    return "\n".join(part for _, part in segments[: last + 1]).strip("\n")


def lesson_code_needed(lesson_code: list[str], needed: set[str]) -> dict[int, str]:
    """The lesson code that defines ``needed``: for each lesson cell that holds the latest
    definition of a needed name before the code that reads it, its index and its source cut
    after the last statement defining a needed name; the same for everything those read."""
    paths, modules = _lesson_names(lesson_code)
    analysed = []
    for text in lesson_code:
        try:
            analysed.append(slice_names(text, paths, modules))
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
                        reads = slice_names(
                            _truncate(lesson_code[index], wanted, paths, modules), paths, modules
                        )[0]
                    except SyntaxError:
                        reads = analysed[index][0]
                    new = reads - pushed.setdefault(index, set())
                    pushed[index] |= new
                    todo.extend((read, index) for read in new)
                break
    return {
        index: _truncate(lesson_code[index], wanted, paths, modules)
        for index, wanted in sorted(required.items())
    }


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


def _stub(exercise: Exercise, solution: str, lesson_defines: set[str], tested: set[str] = frozenset()):
    """Split a solution cell: ``(head, stub, body, solution checks, student checks)`` where the
    head holds the course_lib.exercises imports, the stub what a student starts from (what the
    checks and the hidden tests, ``tested``, read) and the checks the public check statements
    (the student's keep them, minus any inline answer)."""
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
    wanted = set(tested)
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
        mine = [t for t in tests if t.exercise == exercise.number]
        tested = {name for t in mine for name in _parameters(t.source)}
        head, stub, body, checks, student_checks = _stub(exercise, solution, lesson_defines, tested)
        lesson_defines |= names(head)[1] if head else set()  # later exercises use these imports too
        same = checks == student_checks
        check_reads: list[str] = []
        check = None
        if not mine:
            if not found or len(checks) != 1:
                raise AssignmentError(
                    f"{exercise.label}: no hidden tests in instructor/tests/{key}.py "
                    "and no single public check call to fall back on."
                )
            call = ast.unparse(ast.parse(student_checks[0]).body[0].value)
            mine = [_fallback_test(exercise, call, *found)]
            check_reads = sorted(names(call)[0] - {found[1]})
            function = next(
                n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id
                for n in ast.walk(ast.parse(call))
                if isinstance(n, ast.Call) and _is_check_call(n)
            )
            check = {"module": found[0], "alias": found[1], "function": function, "call": call}
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
                "check": check,
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


def _student_notebook(
    path: Path, key: str, notebook_name: str, repo: str = REPOSITORY, branch: str = STUDENT_BRANCH
) -> None:
    """Tidy otter's student notebook: the Colab badge points at the student version on ``branch``
    of the GitHub repository ``repo`` (the instructor's fork), whose default branch the setup
    cell installs course_lib from."""
    notebook = json.loads(path.read_text(encoding="utf-8"))
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown" and "colab.research.google.com" in _source(cell):
            cell["source"] = _source(cell).replace(
                f"github/{REPOSITORY}/blob/main/notebooks/{notebook_name}",
                f"github/{repo}/blob/{branch}/student/{notebook_name}",
            )
        if cell["cell_type"] == "code" and f'git+https://github.com/{REPOSITORY}"' in _source(cell):
            cell["source"] = _source(cell).replace(
                f'git+https://github.com/{REPOSITORY}"', f'git+https://github.com/{repo}"'
            )
        meta = cell.get("metadata", {})
        if cell["cell_type"] == "markdown" and _source(cell).startswith("### Exercise "):
            label = re.search(r"Exercise (\d+)", _source(cell)).group(1)
            meta[OTTER_KEY] = {"exercise": f"{key}-ex{label}", "role": "prompt"}
        if OTTER_KEY in meta and cell["cell_type"] == "code":
            meta[OTTER_KEY]["role"] = "answer"
            cell["source"] = _source(cell).strip("\n")
            # unanswered, it raises: a book built from the student notebooks shows the error
            meta["tags"] = [*meta.get("tags", []), "raises-exception"]
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


def build_chapter(
    path: Path, out: Path, instructor: Path, repo: str = REPOSITORY, branch: str = STUDENT_BRANCH
) -> dict:
    """Build one chapter into ``out``: student/, solutions/, autograder/<chNN>/ (the student
    notebook's links point at ``branch`` of ``repo``). Returns its plan."""
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
        _student_notebook(out / "student" / path.name, key, path.name, repo, branch)
        _solutions_notebook(dist / "autograder" / f"{key}.ipynb", out / "solutions" / path.name)
        grader = out / "autograder" / key
        if grader.exists():
            shutil.rmtree(grader)
        grader.mkdir(parents=True)
        shutil.copy(next((dist / "autograder").glob("*.zip")), grader / "autograder.zip")
        shutil.copytree(dist / "autograder" / "tests", grader / "tests")
    (grader / "plan.json").write_text(json.dumps(plan, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    hidden = {
        exercise["label"]: [
            {"name": t.name, "source": t.source, "params": _parameters(t.source)}
            for t in read_hidden_tests(instructor, key)
            if t.exercise == int(exercise["label"].rsplit("ex", 1)[1])
        ]
        for exercise in plan["exercises"]
    }
    (grader / HIDDEN_TESTS).write_text(
        json.dumps(hidden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return plan


def _parameters(source: str) -> list[str]:
    """The names a hidden test reads from the student's notebook: its parameters."""
    function = ast.parse(source).body[0]
    return [a.arg for a in function.args.args]


def build(
    out: Path,
    chapters: list[str] | None = None,
    root: Path | None = None,
    instructor: Path | None = None,
    repo: str = REPOSITORY,
    branch: str = STUDENT_BRANCH,
) -> list[dict]:
    """Build every chapter's (or the ``chapters``') student notebook, solutions notebook and
    autograder into ``out``, plus ``out/student.zip`` to hand out. The student notebooks' Colab
    badges open ``student/<notebook>`` on ``branch`` of the GitHub repository ``repo``
    (``owner/name``: your fork) and their setup cell installs course_lib from it."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+", repo):
        raise AssignmentError(f"--repo {repo!r} is not a GitHub repository: write it as owner/name.")
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", branch) or ".." in branch:
        raise AssignmentError(f"--branch {branch!r} is not a branch name.")
    root = Path(root) if root else repository_root()
    instructor = Path(instructor) if instructor else root / "instructor"
    out = Path(out)
    wanted = {chapter_key(c) for c in chapters} if chapters else None
    paths = [p for p in chapter_notebooks(root / "notebooks") if not wanted or chapter_key(p.stem) in wanted]
    with ThreadPoolExecutor(max_workers=2) as pool:  # otter assign runs in its own process
        plans = list(pool.map(lambda path: build_chapter(path, out, instructor, repo, branch), paths))
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


# Grading runs student code only inside a bubblewrap sandbox, in two steps per submission:
#   1. the student step, once per exercise: the setup cell and the lesson cells the answer needs
#      (the instructor's copy), then the student's cells; it saves the values the hidden tests read.
#      It never sees the hidden tests, the grader's output, instructor/ or another submission.
#   2. the test step, per hidden test: an agent process loads the exercise's saved values and runs
#      the student's code when asked; a judge process reads the test's source (on standard input,
#      never as a file, after the agent exists) and runs it on handles to those values. The judge
#      never runs student code and reads the agent's answers as data only (remote_values), so no
#      answer can decide its own test. The judge's result comes back on a pipe only it holds.
# The parent alone writes grades, from the runner's pipe; nothing a student process prints counts.

SANDBOX = "/sandbox"  # the writable scratch folder inside the sandbox
CACHE = "/cache"  # the course cache (read-only) inside the sandbox
ANSWERS = "/answers"  # the student steps' saved values, read-only in the test step
EXPORT_SECONDS = 5  # after the answer cells: saving the values the tests read
MEMORY = 6 << 30  # address space per process (torch alone maps about 2.6 GB)
TMP_BYTES = 1 << 30  # the sandbox's private /tmp (RAM), per submission
MAX_VALUES_BYTES = 4 << 30  # the most an exercise's saved values may weigh
CHECK_NAME = "__check__"  # the arguments a fallback exercise's public check is called with


def sandbox_tools() -> tuple[str, str]:
    """The paths of ``bwrap`` and ``prlimit``; grading refuses to start without them."""
    bwrap, prlimit = shutil.which("bwrap"), shutil.which("prlimit")
    if not bwrap or not prlimit:
        raise AssignmentError(
            "grading runs each submission in a bubblewrap sandbox and "
            f"{'`bwrap`' if not bwrap else '`prlimit`'} is not installed. Install it "
            "(Debian/Ubuntu: `apt-get install -y bubblewrap util-linux`; Fedora: `dnf install bubblewrap`) "
            "and grade again: the kit never runs student code outside the sandbox."
        )
    return bwrap, prlimit


def sandbox_command(
    scratch: Path, argv: list[str], cpu_seconds: int, memory: int = MEMORY, answers: dict | None = None
) -> list[str]:
    """The command that runs ``python argv`` in a bubblewrap sandbox: no network, its own PID, IPC,
    UTS and user namespaces (uid 1000, no capabilities), killed with its parent; read-only binds
    of the system, the Python installation, course_lib and the course cache; a private /tmp;
    ``scratch`` as the only writable folder; ``answers`` (name -> folder) read-only under /answers."""
    import course_lib
    from course_lib.assets.cache import cache_root

    bwrap, prlimit = sandbox_tools()
    command = [
        prlimit,
        f"--as={memory}",
        f"--cpu={cpu_seconds}",
        "--core=0",
        f"--fsize={1 << 30}",
        "--",
        bwrap,
        "--unshare-all",
        "--as-pid-1",  # the runner is the PID namespace's init: no process in it can kill it
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            command += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            command += ["--ro-bind", str(path), str(path)]
    # The interpreter and its packages; course_lib alone, even when it is an editable install
    # inside a checkout (the checkout holds instructor/).
    for path in {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}:
        command += ["--ro-bind", str(path), str(path)]
    package = Path(course_lib.__file__).resolve().parent
    cache = cache_root()
    command += ["--ro-bind", str(package), str(package)]
    if cache.is_dir():
        command += ["--ro-bind", str(cache), f"{CACHE}/{cache.name}"]
    # /tmp is RAM: its size is capped apart from the address-space limit, which it escapes
    command += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    for name, folder in (answers or {}).items():
        command += ["--ro-bind", str(folder), f"{ANSWERS}/{name}"]
    command += ["--bind", str(scratch), SANDBOX, "--remount-ro", "/", "--chdir", SANDBOX, "--clearenv"]
    environment = {
        "HOME": "/tmp",
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "COURSE_CACHE": CACHE,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": "/tmp/huggingface",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "MPLBACKEND": "Agg",
        "COURSE_PROFILE": os.environ.get("COURSE_PROFILE", "offline"),
        # the course_lib the grader runs, also when another one is installed (the folder above it
        # holds nothing else in the sandbox)
        "PYTHONPATH": str(package.parent),
    }
    for key, value in environment.items():
        command += ["--setenv", key, value]
    return command + ["--", sys.executable, *argv]


def _extra_statements(source: str) -> str:
    """The imports and definitions of a cell (what later cells may use); nothing that computes."""
    try:
        segments = _segments(_python(source))
    except SyntaxError:
        return ""
    kept = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return "\n".join(text for statement, text in segments if isinstance(statement, kept)).strip("\n")


def _capture_check(source: str, check: dict) -> tuple[str, bool]:
    """A fallback exercise's cell with its call of the public check replaced by saving the call's
    arguments (the test step calls the check on them); other check calls removed."""
    try:
        segments = _segments(_python(source))
    except SyntaxError:
        return source, False
    out, found = [], False
    for statement, text in segments:
        call = next(
            (
                n
                for n in ast.walk(statement)
                if isinstance(n, ast.Call)
                and (n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", ""))
                == check["function"]
            ),
            None,
        )
        if call is not None and not any(isinstance(a, ast.Starred) for a in call.args):
            arguments = ast.Tuple([ast.Tuple(call.args, ast.Load()), _keywords(call)], ast.Load())
            out.append(f"{CHECK_NAME} = {ast.unparse(arguments)}")
            found = True
        elif not _is_check_call(statement):
            out.append(text)
    return "\n".join(out), found


def _keywords(call: ast.Call) -> ast.Dict:
    keywords = [k for k in call.keywords if k.arg]
    return ast.Dict(keys=[ast.Constant(k.arg) for k in keywords], values=[k.value for k in keywords])


def exercise_runs(plan: dict, submission: dict, hidden: dict) -> dict[str, dict]:
    """Per exercise, what its student step executes: ``lesson`` (the setup cell and the lesson
    cells the answer needs, the instructor's copy), ``answers`` (the imports and definitions of the
    cells a student added above the exercises and of the earlier exercises' cells, then this
    exercise's cells, public checks removed) and ``export`` (the names its tests read)."""
    answers = answer_cells(submission)
    lesson = plan["lesson_code"]
    added = []  # cells the student added or changed above the exercises: their imports and definitions
    for cell in submission.get("cells", []):
        if cell.get("metadata", {}).get(OTTER_KEY):
            break
        if cell.get("cell_type") == "code" and _source(cell).strip() not in {t.strip() for t in lesson}:
            added.append(_extra_statements(_source(cell)))
    runs, earlier = {}, []
    for exercise in plan["exercises"]:
        label, check = exercise["label"], exercise.get("check")
        cells = []
        for text in answers.get(label, []):
            if check:
                text, found = _capture_check(text, check)
                check = None if found else check
            else:
                text = strip_checks(text)
            cells.append(text)
        if check:  # the student's cells call no check: call it as the student notebook does
            call = ast.parse(check["call"]).body[0].value
            arguments = ast.Tuple([ast.Tuple(call.args, ast.Load()), _keywords(call)], ast.Load())
            cells.append(f"{CHECK_NAME} = {ast.unparse(arguments)}")
        before = [t for t in added + earlier if t]
        needed = set(exercise.get("check_reads", []))
        for text in before + cells:
            try:
                needed |= slice_names(text)[0]
            except SyntaxError:
                pass
        code = lesson_code_needed(lesson, needed)
        code[plan["setup_cell"]] = lesson[plan["setup_cell"]]  # always, and whole
        export = {CHECK_NAME} if exercise.get("check") else set()
        for test in hidden.get(label, []):
            export |= set(test["params"])
        runs[label] = {
            "lesson": [code[i] for i in sorted(code)],
            "answers": before + (cells or ["pass"]),
            "extra": len(before),
            "export": sorted(export),
        }
        earlier += [_extra_statements(text) for text in answers.get(label, [])]
    return runs


def _wait(pid: int, seconds: float) -> tuple[int | None, bool]:
    """Wait up to ``seconds`` for child ``pid``: ``(status, timed_out)``; killed when over."""
    import select

    pidfd = os.pidfd_open(pid)
    try:
        ready, _, _ = select.select([pidfd], [], [], max(0.0, seconds))
    finally:
        os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1], not ready


def _read_until(fd: int, marker: bytes | None, seconds: float, limit: int = 1 << 20) -> tuple[bytes, bool]:
    """Read ``fd`` until ``marker`` (a line), end of file or ``seconds``: ``(data, timed_out)``."""
    import select

    data, deadline = b"", time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, True
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return data, False
        data = (data + chunk)[:limit]
        if marker and (b"\n" + data).endswith(b"\n" + marker + b"\n"):
            return data, False


def _kill_others() -> None:
    """Kill every process of the sandbox but this one and its init (what a child left running)."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break


def _fork(report: int, keep_stdin: bool = False) -> tuple[int, int, int]:
    """Fork a child that cannot report for the runner: ``(pid, read end, write end)`` of its own
    pipe. In the child (pid 0) the runner's pipe is closed, and standard input unless
    ``keep_stdin`` (a judge reads its test there)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.close(report)
        if not keep_stdin:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
    else:
        os.close(write)
    return pid, read, write


def _student_child(shell, run: dict, pipe: int, out: Path) -> None:
    """In a forked child: the lesson cells, ``answers`` on the pipe (closed before any of the
    student's code runs), the student's cells, then the exported values (dill) and the first error."""
    sys.path.insert(0, "")  # as in a notebook: `import chat_api` after `%%writefile chat_api.py`
    for text in run["lesson"]:
        result = shell.run_cell(text, silent=True)
        if not result.success:
            error = result.error_in_exec or result.error_before_exec
            os.write(pipe, (f"lesson error {type(error).__name__}: {error}"[:400] + "\n").encode())
    os.write(pipe, b"answers\n")
    os.close(pipe)
    first_error = None
    for text in run["answers"]:
        result = shell.run_cell(text, silent=True)
        error = result.error_before_exec or result.error_in_exec
        if error is not None and first_error is None:
            first_error = f"{type(error).__name__}: {error}"
    import dill

    saved, unsaved = {}, {}
    for name in run["export"]:
        if name in shell.user_ns:
            try:
                saved[name] = dill.dumps(shell.user_ns[name], recurse=True)
            except Exception as error:  # noqa: BLE001 - any value can fail to pickle
                unsaved[name] = f"{type(error).__name__}: {error}"[:200]
    out.mkdir(parents=True, exist_ok=True)
    (out / "values.pkl").write_bytes(dill.dumps(saved))
    (out / "errors.json").write_text(json.dumps({"error": first_error, "unsaved": unsaved}))


def _keep_values(path: Path) -> int:
    """Open the values an exercise's child saved, then unlink the file: the runner keeps the only
    way to them (no later process can find them by path; the runner is not dumpable, so its
    descriptors cannot be reached through /proc either). -1 when there are none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return -1
    path.unlink(missing_ok=True)
    return fd


def _read_values(fd: int) -> bytes:
    """What ``_keep_values`` kept (read at its offset 0: a forked child shares the offset)."""
    if fd < 0:
        return b""
    size = os.fstat(fd).st_size
    if size > MAX_VALUES_BYTES:
        return b""
    chunks, offset = [], 0
    while offset < size:  # one read returns at most about 2 GiB
        chunk = os.pread(fd, min(size - offset, 1 << 30), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _close(descriptors) -> None:
    for fd in list(descriptors):
        if fd >= 0:
            os.close(fd)


def _private_datasets() -> None:
    """In the judge: every ``datasets.load_dataset`` builds in a folder of its own, made at the call,
    and reads the data into memory. The agent shares the sandbox's datasets cache and can rewrite
    it (a cached arrow file is reused without a check): the test's reference data must not come
    from it, nor from a file the agent can rewrite while the judge has it mapped."""

    def private(load):
        def load_dataset(*args, **kwargs):
            kwargs["cache_dir"] = tempfile.mkdtemp(prefix="judge-datasets-")
            kwargs["keep_in_memory"] = True
            return load(*args, **kwargs)

        return load_dataset

    if "datasets" in sys.modules:
        sys.modules["datasets"].load_dataset = private(sys.modules["datasets"].load_dataset)
        return

    import importlib.abc
    import importlib.util

    class PatchOnImport(importlib.abc.MetaPathFinder):  # importing datasets takes seconds: lazily
        def find_spec(self, name, path=None, target=None):
            if name != "datasets":
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                module.load_dataset = private(module.load_dataset)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, PatchOnImport())


def _judge(test: dict, link) -> dict:
    """In the judge (a forked child of the runner that never runs student code): one hidden test,
    or the public check, on handles to the student's values (:mod:`course_lib.remote_values`)."""
    from course_lib.remote_values import StudentCodeError

    _private_datasets()
    try:
        arguments = [link.value(name) for name in test["params"]]
        if test.get("check"):  # the public check, run by the judge on the student's arguments
            import importlib

            args, kwargs = arguments[0]
            module = importlib.import_module(test["check"]["module"])
            feedback = getattr(module, test["check"]["function"])(*args, **kwargs)
            return {"passed": feedback.passed is True, "message": str(feedback.message)[:300]}
        namespace = {"__name__": "hidden_test"}
        exec(compile(test.pop("source"), "<hidden test>", "exec"), namespace)
        namespace[test["name"]](*arguments)
    except StudentCodeError as error:
        return {"passed": False, "message": str(error)[:300]}
    except BaseException as error:  # noqa: BLE001 - any failure fails the test
        return {"passed": False, "message": f"{type(error).__name__}: {error}"[:300]}
    return {"passed": True, "message": ""}


def _read_test(index: int) -> dict:
    """In the judge: test ``index``, a line the grader writes on standard input when asked (the
    runner never reads it, so no agent forked from the runner holds any test's source)."""
    while True:
        line = b""
        while not line.endswith(b"\n"):
            byte = os.read(0, 1)
            if not byte:
                raise EOFError("the grader sent no test")
            line += byte
        test = json.loads(line)
        if test.get("index") == index:
            return test


def _agent(sock, values_fd: int) -> None:
    """In the agent (a forked child of the runner): the student's saved values, served to the judge."""
    import dill

    from course_lib.remote_values import serve

    os.chdir(tempfile.mkdtemp())
    values = _read_values(values_fd)
    try:
        saved = dill.loads(values) if values else {}
    except Exception:  # noqa: BLE001 - the saved values are the student's
        saved = {}
    serve(sock, saved if isinstance(saved, dict) else {})


def _ended(status: int, timed_out: bool, limit: float) -> str:
    if timed_out:
        return f"TimeoutError: the test ran over its time limit ({limit:.0f} s) calling your code"
    if os.WIFSIGNALED(status):
        return f"your code was killed by {signal.Signals(os.WTERMSIG(status)).name} during the test"
    return "your code ended the test's process (os._exit or similar) before the test finished"


def _runner(report: int) -> int:
    """Inside the sandbox, ``grade``'s runner for one submission. It never runs student code
    itself and no other process of the sandbox may trace it. It runs the setup cell, then forks
    one child per exercise (the lesson cells, then the student's cells; killed over its limits),
    kills whatever a child left and cleans the scratch folders. Then, per hidden test, an agent
    (the exercise's saved values and the student's code) and a judge (the test, which reaches the
    sandbox only now, on standard input, and is read by the judge alone) talk over a socket; the
    judge reports on a pipe of its own. Each line the runner writes on ``report`` is JSON;
    children close ``report`` first thing."""
    _set_not_dumpable()
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_IGN)  # as init, it gets only the signals it handles
    here = str(Path.cwd())
    sys.path[:] = [p for p in sys.path if p not in ("", here)]  # never import from the scratch folder
    spec = json.loads((Path(SANDBOX) / "spec.json").read_text(encoding="utf-8"))
    out = Path(SANDBOX) / "out"
    import dill  # noqa: F401 - loaded once, before any fork
    import torch  # noqa: F401
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell(spec["setup"], silent=True)

    def say(entry: dict) -> None:
        os.write(report, (json.dumps(entry) + "\n").encode())

    values: dict[str, int] = {}
    for run in spec["runs"]:
        pid, read, write = _fork(report)
        if pid == 0:
            _close(values.values())  # earlier exercises' values: out of this one's reach
            try:
                _student_child(shell, run, write, out / run["label"])
            finally:
                os._exit(0)
        data, timed_out = _read_until(read, b"answers", spec["time_limit"])
        phase = "lesson" if timed_out or not data.endswith(b"answers\n") else "answers"
        status, killed = _wait(pid, 0 if timed_out else run["answer_limit"])
        os.close(read)
        _kill_others()
        # Keep this exercise's values now, in the runner's memory: a later exercise's cells can
        # write into out/, and must not replace what this one saved.
        values[run["label"]] = _keep_values(out / run["label"] / "values.pkl")
        try:  # feedback only: what the child wrote before the next exercise can rewrite it
            saved_errors = (out / run["label"] / "errors.json").read_text()[:20000]
        except (OSError, UnicodeDecodeError):
            saved_errors = None
        lesson = [line for line in data.decode("utf-8", "replace").splitlines() if line.startswith("lesson")]
        say(
            {
                "label": run["label"],
                "phase": phase,
                "timed_out": timed_out or killed,
                "exit": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                "lesson_error": lesson[0] if lesson else "",
                "errors_json": saved_errors,
            }
        )
    # Nothing a student process left may reach the tests: no process survives (above), the scratch
    # folder is emptied, and the tests get a datasets cache of their own. /tmp stays: the saved
    # values may map dataset files the student's cells cached there.
    for path in Path(SANDBOX).iterdir():
        if path != out:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    cache = tempfile.mkdtemp(prefix="tests-datasets-")
    os.environ["HF_DATASETS_CACHE"] = cache
    if "datasets" in sys.modules:
        sys.modules["datasets"].config.HF_DATASETS_CACHE = Path(cache)
    # Each test runs in two processes: an agent that holds the student's values and runs the
    # student's code, and a judge that runs the test and never runs student code. The agent is
    # forked before the judge asks the grader for the test's source.
    from course_lib.remote_values import Link, agent_socket_pair

    outcomes = []
    for index, meta in enumerate(spec["tests"]):
        judge_end, agent_end = agent_socket_pair()
        agent, unused, _ = _fork(report)  # the agent answers on its socket, not on a pipe
        if agent == 0:
            try:
                judge_end.close()
                mine = values.get(meta["label"], -1)
                _close(fd for fd in values.values() if fd != mine)
                _agent(agent_end, mine)
            finally:
                os._exit(0)
        os.close(unused)
        agent_end.close()
        say({"next": index})
        judge, read, write = _fork(report, keep_stdin=True)
        if judge == 0:
            try:
                _close(values.values())
                os.chdir(tempfile.mkdtemp())
                outcome = _judge(_read_test(index), Link(judge_end))
            except BaseException as error:  # noqa: BLE001 - any failure fails the test
                outcome = {"passed": False, "message": f"{type(error).__name__}: {error}"[:300]}
            os.write(write, json.dumps(outcome).encode()[:60000])
            os._exit(0)
        judge_end.close()
        data, timed_out = _read_until(read, None, spec["test_timeout"])
        status, killed = _wait(judge, 0 if timed_out else 1)
        os.close(read)
        _kill_others()
        try:
            outcome = json.loads(data)
            outcome = {"passed": outcome.get("passed") is True, "message": str(outcome.get("message", ""))}
        except (ValueError, AttributeError):
            outcome = {"passed": False, "message": _ended(status, timed_out or killed, spec["test_timeout"])}
        outcomes.append(outcome)
    say({"outcomes": outcomes})
    return 0


def _set_not_dumpable() -> None:
    """No process of the same user may ptrace this one or open its /proc files."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4


def _run_message(entry: dict, cell_timeout: int) -> str | None:
    """What the runner saw happen to an exercise's child, in the student's terms."""
    if entry.get("timed_out") and entry.get("phase") == "answers":
        return (
            f"Your cells ran over the time limit per cell ({cell_timeout} s per answer cell) and were "
            "stopped (killed, not interrupted: a loop that ignores interrupts stops too)"
        )
    if entry.get("timed_out"):
        return "The chapter's lesson cells ran over the time limit: ask your instructor"
    if entry.get("signal"):
        name = signal.Signals(entry["signal"]).name
        return f"Your code's Python process was killed by {name} (a crash or the memory limit)"
    return None


def _letters_and_digits(text: str) -> str:
    """``text`` reduced to its lower-case letters and digits (after Unicode NFKC), so that spacing,
    look-alike spaces and invisible characters cannot hide a quotation."""
    return re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKC", text).lower())


def _redact(text: str, hidden: dict) -> str:
    """``text`` without anything that quotes the hidden tests: a message that holds one of their
    source lines, compared on letters and digits only, is replaced (a test's own assertion messages
    are evaluated strings, never source). Encoded text (base64 and the like) is not recognised."""
    found = _letters_and_digits(text)
    for tests in hidden.values():
        for test in tests:
            for line in _code_lines(test["source"]):
                if len(line) >= 12 and line in found:
                    return "(this message quoted the hidden tests and was removed)"
    return text


def _code_lines(source: str) -> list[str]:
    """A hidden test's lines, letters and digits only, without the lines that are only a string
    (its docstring and its assertion messages: the feedback shows those on purpose)."""
    literal = re.compile(r"""^[rbfu]*("|')""", re.I)
    return [_letters_and_digits(line) for line in source.splitlines() if not literal.match(line.strip())]


def grade_submission(
    grader: Path,
    plan: dict,
    hidden: dict,
    submission: Path,
    cell_timeout: int,
    time_limit: int,
    test_timeout: int | None = None,
) -> dict:
    """Grade one submission in one sandbox: a child per exercise, then the hidden tests in children
    where no answer cell ran. Returns the scores, the tests' messages and what each exercise's
    code did. Only the runner's reports count, never what a student process wrote."""
    result = {"scores": {e["label"]: 0 for e in plan["exercises"]}, "tests": {}, "errors": {}, "note": ""}
    try:
        submitted = json.loads(Path(submission).read_text(encoding="utf-8"))
        assert isinstance(submitted, dict) and isinstance(submitted.get("cells"), list)
    except Exception:  # a submission can be anything: grade it 0 with a reason
        result["note"] = "not a notebook (the file is not valid .ipynb JSON)"
        return result
    if not any(answer_cells(submitted).values()):
        result["note"] = (
            "no exercise cells found: submit the student notebook from `assignments build` "
            "with your answers in its exercise cells"
        )
    runs = exercise_runs(plan, submitted, hidden)
    setup = plan["lesson_code"][plan["setup_cell"]]
    spec = {"setup": setup, "time_limit": time_limit, "runs": []}
    for exercise in plan["exercises"]:
        run = dict(runs[exercise["label"]], label=exercise["label"])
        run["lesson"] = [text for text in run["lesson"] if text != setup]
        run["answer_limit"] = cell_timeout * (len(run["answers"]) - run.pop("extra")) + EXPORT_SECONDS
        spec["runs"].append(run)
    tests = []
    for exercise in plan["exercises"]:
        if exercise.get("check"):
            tests.append({"label": exercise["label"], "params": [CHECK_NAME], "check": exercise["check"]})
        else:
            tests += [dict(t, label=exercise["label"]) for t in hidden.get(exercise["label"], [])]
    test_timeout = test_timeout or cell_timeout
    spec["test_timeout"] = test_timeout
    spec["tests"] = [{"label": t["label"], "params": t["params"]} for t in tests]  # never the source
    limit = 60 + sum(time_limit + r["answer_limit"] for r in spec["runs"]) + (test_timeout + 1) * len(tests)
    reports = {}
    with tempfile.TemporaryDirectory(prefix="grade-") as work:
        scratch = Path(work)
        shutil.copy(submission, scratch / "submission.ipynb")  # the only submission it can see
        (scratch / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        read, write = os.pipe()
        with open(os.devnull, "w") as null:
            process = subprocess.Popen(
                sandbox_command(
                    scratch,
                    ["-m", "course_lib.assignments", "runner", str(write)],
                    cpu_seconds=int(limit),
                ),
                stdin=subprocess.PIPE,
                stdout=null,
                stderr=null,
                pass_fds=(write,),
            )
        os.close(write)
        outcomes, errors = None, {}
        try:
            for line in _lines(read, time.monotonic() + limit):
                entry = json.loads(line)
                if "label" in entry:
                    reports[entry["label"]] = entry
                elif type(entry.get("next")) is int and 0 <= entry["next"] < len(tests):
                    process.stdin.write(
                        (json.dumps(dict(tests[entry["next"]], index=entry["next"])) + "\n").encode()
                    )
                    process.stdin.flush()
                elif "outcomes" in entry:
                    outcomes = entry["outcomes"]
                    break
        except (ValueError, OSError):
            pass
        finally:
            process.kill()  # bwrap: --die-with-parent takes the sandbox's PID namespace down with it
            process.wait()
            os.close(read)
        for exercise in plan["exercises"]:
            try:  # written by the student's process: feedback only, never points
                saved = json.loads(reports.get(exercise["label"], {}).get("errors_json") or "")
                errors[exercise["label"]] = str(saved.get("error") or "")
                unsaved = saved.get("unsaved") or {}
                if unsaved and not errors[exercise["label"]]:  # defined, but not something a test can get
                    name, why = next(iter(unsaved.items()))
                    errors[exercise["label"]] = f"`{name}` could not be handed to the tests ({why})"
            except (OSError, ValueError, AttributeError):
                errors[exercise["label"]] = None
    for run in spec["runs"]:
        label, entry = run["label"], reports.get(run["label"], {})
        message = _run_message(entry, cell_timeout)
        if message is None and entry and errors[label] is None:
            message = (
                f"Your code ended the Python process (exit status {entry.get('exit')}) before its answers "
                "could be collected: remove os._exit, sys.exit or kill calls"
            )
        if message is None and errors[label]:
            raised = not errors[label].startswith("`")
            message = f"Your code raised {errors[label]}" if raised else errors[label]
        if message:
            result["errors"][label] = _redact(message, hidden)[:500]
        if entry.get("lesson_error"):
            result["note"] = "a lesson cell failed while grading: " + entry["lesson_error"][:300]
    if not isinstance(outcomes, list) or len(outcomes) != len(tests):
        outcomes = [{"passed": False, "message": "the tests could not run (grader error)"}] * len(tests)
        result["note"] = "grader error: the sandbox did not report; grade this submission by hand"
    for exercise in plan["exercises"]:
        label = exercise["label"]
        expected = [t["name"] for t in exercise["tests"]]
        mine = [o for t, o in zip(tests, outcomes) if t["label"] == label]
        if len(mine) != len(expected):
            result["tests"][label] = [(name, False, "not run") for name in expected]
            continue
        rows = [
            (name, bool(o.get("passed")), "" if o.get("passed") else _redact(str(o.get("message")), hidden))
            for name, o in zip(expected, mine)
        ]
        result["tests"][label] = rows
        result["scores"][label] = sum(1 for _, passed, _ in rows if passed)
    return result


def _lines(fd: int, deadline: float):
    """The lines written on ``fd`` until end of file or ``deadline``."""
    import select

    buffer = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        buffer += chunk
        if len(buffer) > 1 << 24:
            return
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8", "replace")


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
            lines += [_inert(result["errors"][label]), ""]
        tests = {t["name"]: t["doc"] for t in exercise["tests"]}
        for test, passed, message in result.get("tests", {}).get(label, []):
            lines.append(
                f"- {'✅' if passed else '❌'} {tests.get(test, test)}"
                + ("" if passed else f": {_inert(message)}")
            )
        lines.append("")
    return "\n".join(lines)


def _inert(message: str) -> str:
    """A message from a run (student code can choose its text) as one line of literal text in
    the feedback's markdown: line breaks shown as ↵, inside a code span (its backticks made ')."""
    one_line = " ↵ ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return f"`{one_line.replace('`', chr(39))}`" if one_line else ""


def _not_a_notebook(path: Path) -> str:
    """Why the file at ``path`` is not a Jupyter notebook ("" when it is one)."""
    if path.suffix != ".ipynb":
        return f"a {path.suffix or 'extension-less'} file; submit the .ipynb"
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return "the file is not valid .ipynb JSON"
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return "JSON without a list of cells"
    return ""


def feedback_name(submission: str) -> str:
    """``alice.ipynb`` -> ``alice.md``; any other file ``not-a-notebook-<its whole name>.md``, so a
    notebook's feedback is never replaced by another file's of the same stem."""
    path = Path(submission)
    return f"{path.stem}.md" if path.suffix == ".ipynb" else f"not-a-notebook-{path.name}.md"


def grade(
    chapter: str,
    submissions: Path,
    out: Path,
    assignments: Path | None = None,
    jobs: int = 2,
    cell_timeout: int = 60,
    test_timeout: int | None = None,
    time_limit: int = 600,
    root: Path | None = None,
    instructor: Path | None = None,
) -> Path:
    """Grade every file in ``submissions`` (dot files aside) for ``chapter``: a notebook exercise by
    exercise in its own sandboxed run (``jobs`` submissions at a time), anything else 0 points with
    the reason in its ``status``; writes ``out/grades.csv`` and
    ``out/feedback/<submission>.md``. ``cell_timeout`` limits each answer cell, ``test_timeout`` (default: the same) each hidden test,
    ``time_limit`` the lesson cells of each run. ``assignments`` is a folder ``build`` wrote (built
    afresh for this chapter when omitted). Refuses to grade without bubblewrap."""
    sandbox_tools()
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
    if not (grader / "plan.json").exists() or not (grader / HIDDEN_TESTS).exists():
        raise AssignmentError(
            f"{grader} has no plan.json or {HIDDEN_TESTS}: run `python -m course_lib assignments build` first."
        )
    plan = json.loads((grader / "plan.json").read_text(encoding="utf-8"))
    hidden = json.loads((grader / HIDDEN_TESTS).read_text(encoding="utf-8"))
    files = sorted(p for p in Path(submissions).iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise AssignmentError(f"no submissions in {submissions}.")

    def one(path: Path) -> tuple[str, dict, float, str]:
        start = time.perf_counter()
        why = _not_a_notebook(path)
        if why:  # a row with 0 points and the reason, never a grading run
            result = {"scores": {e["label"]: 0 for e in plan["exercises"]}, "tests": {}, "errors": {}}
            result["note"] = f"not graded: not a notebook ({why})"
            return path.name, result, time.perf_counter() - start, result["note"]
        try:
            result = grade_submission(
                grader, plan, hidden, path.resolve(), cell_timeout, time_limit, test_timeout
            )
            status = "graded"
        except Exception as error:  # noqa: BLE001 - one submission's failure must not stop the others
            result, status = {}, f"grader error: {type(error).__name__}: {error}"[:300]
        return path.name, result, time.perf_counter() - start, status

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, files))
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
            (out / "feedback" / feedback_name(name)).write_text(
                feedback_text(name, plan, result, seconds, status) + "\n", encoding="utf-8"
            )
    return out / "grades.csv"


def _main(argv: list[str]) -> int:
    """``python -m course_lib.assignments runner FD``: the runner ``grade`` starts inside the
    sandbox for each submission (never run it outside one); FD is the pipe it reports on."""
    if argv[:1] == ["runner"] and len(argv) == 2:
        return _runner(int(argv[1]))
    print(_main.__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

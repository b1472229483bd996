"""course_lib's modules form layers: every import, including one inside a function, points down.

A lazy import inside a function is still a dependency (it only hides it from import time), so this
reads every ``import`` statement in the file, wherever it stands.
"""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "course_lib"
# Lower layers first. A module may import only from layers strictly below its own.
LAYERS = [
    {"profiles", "results", "remote_values"},
    {"claims", "assets", "prep", "loop", "memory", "budget"},
    {"models", "data", "synthetic_hub", "llamafactory"},
    {"env", "dataset_ops"},
    {"evaluation", "training", "display"},
    {"generation", "finetune", "checks", "playground"},
    {"peft_methods", "serving", "pretraining"},
    {"quantization", "sharing", "distributed"},
    {"bench", "cheatsheets", "assignments"},
    {"exercises", "__main__", "__init__"},
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0] if parts else "__init__"


def _imports(path: Path) -> set[str]:
    """The top-level course_lib modules that ``path`` imports, anywhere in the file."""
    depth = len(path.relative_to(PACKAGE).parts)  # 1 for course_lib/x.py, 2 for course_lib/pkg/x.py
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("course_lib."):
                    found.add(node.module.split(".")[1])
                continue
            if node.level > depth:
                continue
            inside = path.relative_to(PACKAGE).parts[: depth - node.level]
            if inside:  # a relative import inside a subpackage
                found.add(inside[0])
            elif node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("course_lib."))
    return found - {"__version__"}


def test_every_module_has_a_layer():
    layered = set().union(*LAYERS)
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    assert modules <= layered, f"give these a layer in LAYERS: {sorted(modules - layered)}"


def test_imports_point_down():
    layer_of = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for target in _imports(path) - {module}:
            if target in layer_of and layer_of[target] >= layer_of.get(module, len(LAYERS)):
                upward.append(
                    f"{path.relative_to(REPO)} imports {target} (layer {layer_of[target]}"
                    f" >= {layer_of.get(module)})"
                )
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)

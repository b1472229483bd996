"""Model inputs go to the device of the model they feed (issue 15), checked without a GPU.

1. A repository check: an AST pass over ``course_lib/`` and the notebooks' code cells finds the
   tensors built for a model (``torch.tensor(``, ``torch.stack(``, ``torch.randint(``, ...; a
   tokenizer's ``return_tensors=`` output; a collator's batch) that reach a model call without a
   ``device=`` or a ``.to(...)`` on the way. Code that only ever runs on the CPU is listed in
   :data:`CPU_ONLY` with its reason.
2. Unit tests of the helpers that build inputs: given a model whose parameters live on the
   ``meta`` device (no GPU needed), the tensors they return are on that device.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_llama_config

# Calls that create a tensor on the default device (the CPU) unless given ``device=``.
BUILDERS = {
    "tensor",
    "as_tensor",
    "stack",
    "randint",
    "arange",
    "ones",
    "zeros",
    "full",
    "LongTensor",
    "rand",
    "randn",
}
# Functions that return a padded CPU batch (the course's collators) or call a collator object.
COLLATORS = re.compile(r"^(pad_features|collate|collate_causal)$|collat")
# What a model call looks like: ``model(...)``, ``peft_model(...)``, ``x.generate(...)``, ...
MODEL_CALL = re.compile(r"(^|_)(model|merged|qlora|policy|student|teacher)$|^generate$|^forward$")

# path (relative to the repository) :: function (or notebook) -> why its inputs may stay on the CPU.
CPU_ONLY: dict[str, str] = {
    "course_lib/assets/pretrain.py::pretrain": "the offline asset build trains the course LM on the CPU by design (new_model builds it there; "
    "the asset's content hash must not depend on the machine)",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _has_device(call: ast.Call) -> bool:
    return any(k.arg == "device" for k in call.keywords)


def _is_builder(node: ast.AST) -> bool:
    """A call that returns CPU tensors: torch builders without device=, tokenizers asked for
    tensors, collators."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    if isinstance(func, ast.Attribute) and _name(func.value) == "torch" and func.attr in BUILDERS:
        return not _has_device(node)
    if any(k.arg == "return_tensors" for k in node.keywords):
        return True  # tokenizer(..., return_tensors="pt") / apply_chat_template(..., return_tensors=)
    return bool(COLLATORS.search(_name(func)))


def _moved(node: ast.AST) -> bool:
    """``X(...).to(...)``, or ``{k: v.to(...) for k, v in X(...).items()}``."""
    parent = getattr(node, "parent", None)
    if isinstance(parent, ast.Attribute) and parent.attr in ("to", "cuda"):
        return True
    while parent is not None:
        if isinstance(parent, (ast.DictComp, ast.ListComp, ast.GeneratorExp)):
            return any(isinstance(n, ast.Attribute) and n.attr == "to" for n in ast.walk(parent))
        if isinstance(parent, (ast.stmt,)):
            return False
        parent = getattr(parent, "parent", None)
    return False


def _link_parents(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            child.parent = node


def _scopes(tree: ast.AST, label: str):
    """(scope name, body nodes) for the module level and every function (nested ones apart)."""
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    yield label, tree, functions
    for function in functions:
        inner = [
            n
            for n in ast.walk(function)
            if n is not function and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        yield function.name, function, inner


def _walk_scope(root: ast.AST, skip: list[ast.AST]):
    """Every node of ``root`` outside the functions nested in it."""
    skipped = {id(n) for n in skip}
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if id(child) not in skipped)


def _root_name(node: ast.AST) -> str:
    """``batch`` for ``batch``, ``batch["input_ids"]``, ``batch.input_ids``."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else ""


def unmoved_model_inputs(source: str, label: str) -> list[tuple[int, str, str, int]]:
    """(line, scope, what, line where it was built) for every CPU-built tensor that reaches a model
    call in ``source``."""
    tree = ast.parse(source)
    _link_parents(tree)
    found = []
    for scope, root, nested in _scopes(tree, label):
        nodes = list(_walk_scope(root, nested))
        cpu_names: dict[str, int] = {}
        moved_names: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Assign) and _is_builder(node.value) and not _moved(node.value):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        cpu_names[target.id] = node.lineno
            # ``x = x.to(device)``, ``x.to(device)`` passed on, or ``to_device_of(model, x)``
            if isinstance(node, ast.Attribute) and node.attr in ("to", "cuda") and _root_name(node.value):
                moved_names.add(_root_name(node.value))
            if isinstance(node, ast.Call) and _name(node.func) == "to_device_of":
                moved_names.update(_root_name(a) for a in node.args)
            if isinstance(node, (ast.DictComp, ast.ListComp, ast.GeneratorExp)) and any(
                isinstance(n, ast.Attribute) and n.attr == "to" for n in ast.walk(node)
            ):
                moved_names.update(_root_name(n) for n in ast.walk(node) if isinstance(n, ast.Name))
        for node in nodes:
            if not (isinstance(node, ast.Call) and MODEL_CALL.search(_name(node.func))):
                continue
            arguments = list(node.args) + [k.value for k in node.keywords]
            for argument in arguments:
                if isinstance(argument, ast.Starred):
                    argument = argument.value
                if _is_builder(argument) and not _moved(argument):
                    found.append((node.lineno, scope, ast.unparse(argument)[:60], node.lineno))
                    continue
                name = _root_name(argument)
                if name in cpu_names and name not in moved_names:
                    found.append((node.lineno, scope, name, cpu_names[name]))
    return found


def _sources():
    """(path, source, where) per file; a notebook's code cells form one source (names flow from
    cell to cell) and ``where(line)`` says which cell a line is in."""
    for path in sorted((REPO / "course_lib").rglob("*.py")):
        yield path.relative_to(REPO).as_posix(), path.read_text(), lambda line: f"line {line}"
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        texts, starts = [], []
        line = 1
        for number, cell in enumerate(cells):
            if cell["cell_type"] != "code":
                continue
            text = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            text = re.sub(r"(?m)^\s*[%!].*$", "", text)  # IPython magics and shell lines are not Python
            starts.append((line, number))
            texts.append(text)
            line += text.count("\n") + 2

        def where(found: int, starts=tuple(starts)) -> str:
            first, number = max((s for s in starts if s[0] <= found), default=(1, 0))
            return f"cell {number}, line {found - first + 1}"

        yield path.relative_to(REPO).as_posix(), "\n\n".join(texts), where


def test_model_inputs_are_put_on_the_model_device():
    problems, used = [], set()
    for path, source, where in _sources():
        label = Path(path).stem
        for line, scope, what, built in unmoved_model_inputs(source, label):
            key = f"{path}::{scope}"
            if key in CPU_ONLY:
                used.add(key)
                continue
            problems.append(
                f"{path} {where(line)}, in {scope}: {what} (built at {where(built)}) "
                "reaches a model without a device (.to(model.device))"
            )
    assert not problems, "\n".join(problems)
    assert not set(CPU_ONLY) - used, f"stale CPU_ONLY entries: {sorted(set(CPU_ONLY) - used)}"


@pytest.mark.parametrize(
    "snippet, flagged",
    [
        ("ids = torch.tensor([[1, 2]])\nmodel(input_ids=ids)", True),
        ("ids = torch.tensor([[1, 2]], device=model.device)\nmodel(input_ids=ids)", False),
        ("ids = torch.tensor([[1, 2]]).to(model.device)\nmodel(input_ids=ids)", False),
        ("model(torch.stack(rows))", True),
        ("batch = tokenizer(texts, return_tensors='pt')\nmodel.generate(**batch)", True),
        ("batch = tokenizer(texts, return_tensors='pt').to(model.device)\nmodel.generate(**batch)", False),
        ("batch = collate(rows, 0)\nloss = peft_model(**batch).loss", True),
        ("batch = collate(rows, 0)\nbatch = {k: v.to(dev) for k, v in batch.items()}\nmodel(**batch)", False),
        ("batch = pad_features(rows, 0)\nmodel(input_ids=batch['input_ids'])", True),
        ("weights = torch.tensor([1.0, 2.0])\nloss_fn(weights)", False),
    ],
)
def test_the_check_itself(snippet, flagged):
    assert bool(unmoved_model_inputs(snippet, "snippet")) == flagged


# --------------------------------------------------------------------------- the helpers themselves


@pytest.fixture(scope="module")
def meta_llama():
    """A tiny Llama whose weights live on the ``meta`` device: it says where inputs must go
    without any GPU (it cannot compute anything)."""
    from transformers import LlamaForCausalLM

    config = tiny_llama_config(num_hidden_layers=1, pad_token_id=0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert model.device.type == "meta"
    return model


def test_device_of_reads_model_or_parameters(meta_llama):
    from course_lib.models import device_of, to_device_of

    assert device_of(meta_llama).type == "meta"
    plain = torch.nn.Linear(2, 2, device="meta")  # no .device attribute: its parameters say
    assert device_of(plain).type == "meta"
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")
    moved = to_device_of(meta_llama, {"input_ids": torch.tensor([[1, 2]]), "note": "kept"})
    assert moved["input_ids"].device.type == "meta" and moved["note"] == "kept"


def test_peft_batches_go_to_the_model_device(meta_llama):
    from course_lib import peft_methods

    batch = peft_methods.model_batch(
        meta_llama, [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert {tensor.device.type for tensor in batch.values()} == {"meta"}
    assert batch["input_ids"].shape == (2, 3)


def test_bench_inputs_go_to_the_model_device(meta_llama):
    from course_lib import bench

    ids = bench.random_ids(meta_llama, (2, 5))
    assert ids.device.type == "meta" and ids.shape == (2, 5)


class _Fed(Exception):
    """Raised by :class:`_Recorder` with the devices of the tensors it was given."""


class _Recorder(torch.nn.Module):
    """A model that reports the devices of its inputs instead of computing anything."""

    config = type("Config", (), {"pad_token_id": 0})()

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))

    def forward(self, **inputs):
        raise _Fed({tensor.device.type for tensor in inputs.values()})


@pytest.mark.parametrize("helper", ["train_steps", "answer_metrics"])
def test_training_and_scoring_feed_the_model_on_its_device(monkeypatch, helper):
    from course_lib import peft_methods

    # the model says it lives on the meta device; what reaches forward must be there too
    monkeypatch.setattr(peft_methods, "device_of", lambda model: torch.device("meta"))
    examples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]
    run = {
        "train_steps": lambda m: peft_methods.train_steps(m, examples, steps=1, lr=1e-3, batch_size=1),
        "answer_metrics": lambda m: peft_methods.answer_metrics(m, examples),
    }[helper]
    with pytest.raises(_Fed) as fed:
        run(_Recorder())
    assert fed.value.args[0] == {"meta"}

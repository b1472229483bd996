"""A corpus of real English text that every Python install carries.

Two sources, both read without importing anything:

* ``pydoc_data.topics``: the language reference chapters that ``help()`` shows;
* the docstrings of the standard library's pure-Python modules, read with
  :mod:`ast` from the source files, laid out the way ``help()`` prints them
  (``function json.dumps(obj, *, skipkeys=False, ...)`` followed by its text).

One document per topic or per module file. Documents are assigned to
train/validation/test by a hash of their id, so a document never straddles
two splits and the split of a document never changes when others are added.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
# Folders of the standard library that are tests, GUIs, vendored tools or not docs.
_SKIP_TOP = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "site-packages",
    "dist-packages",
    "venv",
    "pydoc_data",
    "__pycache__",
    "turtle",
}


@dataclass(frozen=True)
class Document:
    """One corpus document: a pydoc topic or one module's docstrings."""

    id: str
    source: str  # "topic" or "module"
    text: str
    split: str


@dataclass(frozen=True)
class ApiEntry:
    """A documented public function or class of the standard library."""

    module: str
    qualname: str
    kind: str  # "function", "method" or "class"
    signature: str
    docstring: str

    @property
    def summary(self) -> str:
        """The docstring's first sentence (or first line), as the docs would quote it."""
        return first_sentence(self.docstring)


def first_sentence(text: str) -> str:
    """First sentence of a docstring's first paragraph, whitespace-normalised."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    for end in (". ", "? ", "! "):
        cut = paragraph.find(end)
        if cut != -1:
            paragraph = paragraph[: cut + 1]
    return paragraph


def split_of(doc_id: str) -> str:
    """Deterministic split for a document id: 90% train, 5% validation, 5% test."""
    bucket = int(hashlib.sha256(doc_id.encode()).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def _module_files() -> Iterator[tuple[str, Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for root, dirs, files in os.walk(stdlib):
        rel = Path(root).relative_to(stdlib)
        parts = rel.parts
        if parts and (
            parts[0] in _SKIP_TOP
            or parts[0].startswith(("config-", "_"))
            or any(p in ("test", "tests") for p in parts)
        ):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(files):
            if not name.endswith(".py") or (not parts and name.startswith("_")):
                continue
            stem = name[:-3]
            if not parts and stem in _SKIP_TOP:
                continue
            dotted = ".".join(parts + (() if stem == "__init__" else (stem,)))
            yield dotted, Path(root) / name


def _public(name: str) -> bool:
    return not name.startswith("_")


def _entries(module: str, tree: ast.Module) -> Iterator[ApiEntry]:
    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> Iterator[ApiEntry]:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _public(node.name):
                doc = ast.get_docstring(node)
                if doc:
                    args = node.args
                    if in_class and args.args and args.args[0].arg in ("self", "cls"):
                        args = ast.arguments(
                            posonlyargs=args.posonlyargs,
                            args=args.args[1:],
                            vararg=args.vararg,
                            kwonlyargs=args.kwonlyargs,
                            kw_defaults=args.kw_defaults,
                            kwarg=args.kwarg,
                            defaults=args.defaults,
                        )
                    yield ApiEntry(
                        module,
                        prefix + node.name,
                        "method" if in_class else "function",
                        f"({ast.unparse(args)})",
                        doc,
                    )
            elif isinstance(node, ast.ClassDef) and _public(node.name):
                doc = ast.get_docstring(node)
                if doc:
                    bases = ", ".join(ast.unparse(b) for b in node.bases)
                    yield ApiEntry(module, prefix + node.name, "class", f"({bases})", doc)
                yield from visit(node.body, prefix + node.name + ".", True)

    yield from visit(tree.body, "", False)


def _render_module(module: str, doc: str | None, entries: list[ApiEntry]) -> str:
    parts = [f"Help on module {module}:"]
    if doc:
        parts.append(doc)
    for entry in entries:
        parts.append(f"{entry.kind} {module}.{entry.qualname}{entry.signature}\n{entry.docstring}")
    return "\n\n".join(parts)


def read_stdlib() -> tuple[list[Document], list[ApiEntry]]:
    """All corpus documents and all documented API entries, in a fixed order."""
    from pydoc_data.topics import topics

    documents = [
        Document(f"topic:{name}", "topic", topics[name].strip(), split_of(f"topic:{name}"))
        for name in sorted(topics)
    ]
    api: list[ApiEntry] = []
    for module, path in _module_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        entries = list(_entries(module, tree))
        module_doc = ast.get_docstring(tree)
        if not entries and not module_doc:
            continue
        doc_id = f"module:{module}"
        documents.append(
            Document(doc_id, "module", _render_module(module, module_doc, entries), split_of(doc_id))
        )
        api.extend(entries)
    return documents, api


def write_corpus(folder: Path) -> dict:
    """Write ``{split}.jsonl`` files and ``api.jsonl`` into ``folder``; return their sizes."""
    documents, api = read_stdlib()
    stats: dict = {"documents": {}, "characters": {}}
    for split in SPLITS:
        chosen = [d for d in documents if d.split == split]
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as handle:
            for doc in chosen:
                handle.write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
        stats["documents"][split] = len(chosen)
        stats["characters"][split] = sum(len(d.text) for d in chosen)
    with open(folder / "api.jsonl", "w", encoding="utf-8") as handle:
        for entry in api:
            row = asdict(entry) | {"split": split_of(f"module:{entry.module}")}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats["api_entries"] = len(api)
    return stats

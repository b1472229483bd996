"""The asset cache: one folder per asset, each with a manifest of content hashes.

An asset is *valid* when its manifest exists, its recipe matches the recipe
the code would build now, and every file listed hashes to the recorded value.
Anything else (missing, partial, edited, built by an older recipe) is rebuilt,
never silently used. Builds happen in a temporary folder under a file lock and
are moved into place atomically, so an interrupted build leaves no half asset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "COURSE_CACHE"
MANIFEST = "manifest.json"


def cache_root() -> Path:
    """Where assets live: ``$COURSE_CACHE`` or ``~/.cache/course_lib``, per Python version.

    The corpus comes from the running Python's own docs, so each minor version
    gets its own folder.
    """
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "course_lib"
    )
    return Path(base) / f"py{sys.version_info.major}{sys.version_info.minor}"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: dict[str, str]) -> str:
    """One short hash for a whole asset, from its per-file hashes."""
    joined = "\n".join(f"{name}:{digest}" for name, digest in sorted(files.items()))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def read_manifest(folder: Path) -> dict | None:
    """The manifest of an asset folder, or None when absent or unreadable."""
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def problems(folder: Path, recipe: dict) -> list[str]:
    """Why ``folder`` is not a valid build of ``recipe`` (empty list: it is valid)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return ["no readable manifest.json (never built, or the build was interrupted)"]
    if manifest.get("recipe") != recipe:
        return ["built by a different recipe (course_lib changed since)"]
    found = []
    for name, digest in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            found.append(f"{name} is missing")
        elif file_sha256(path) != digest:
            found.append(f"{name} does not match its recorded hash (corrupted or edited)")
    return found


@contextmanager
def _locked(root: Path, name: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure(
    name: str, recipe: dict, build: Callable[[Path], dict], log: Callable[[str], None] = print
) -> Path:
    """Return the folder of a valid asset ``name``, building it first if needed.

    ``build(tmp_folder)`` writes the asset's files into ``tmp_folder`` and
    returns extra manifest fields (sizes, metrics). Hashes are recorded here.
    """
    root = cache_root()
    folder = root / name
    if not problems(folder, recipe):
        return folder
    with _locked(root, name):
        found = problems(folder, recipe)  # another process may have built it meanwhile
        if not found:
            return folder
        if folder.exists():
            log(f"[course_lib] asset '{name}' is not usable ({'; '.join(found)}): rebuilding it.")
        else:
            log(f"[course_lib] building asset '{name}' (first use; cached in {root}) ...")
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            extra = build(tmp)
            files = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {
                "name": name,
                "recipe": recipe,
                "files": files,
                "content_hash": content_hash(files),
                "build_seconds": round(time.perf_counter() - start, 1),
                "python": sys.version.split()[0],
                **extra,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log(f"[course_lib] built '{name}' in {manifest['build_seconds']} s.")
    return folder

"""Keep executed chapters between book builds, and execute a chapter again when anything its
outputs depend on changes.

myst-nb's cache (``execute_notebooks: cache``) is keyed by the notebook's cells only, but every
chapter's outputs also depend on the installed course_lib (every setup cell imports it), the
built assets, the installed packages and the course's environment variables (the profile). This
extension names the cache folder after a fingerprint of all four, so a build reuses an execution
only when none of them changed; otherwise the whole book executes again into a fresh folder
(every chapter imports course_lib, so a change there concerns them all). Delete
``_build/.jupyter_cache`` to drop old executions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config

ENVIRONMENT = ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_HOME")


def course_lib_files() -> list[Path]:
    spec = importlib.util.find_spec("course_lib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("course_lib is not installed: run the README's install command first.")
    root = Path(next(iter(spec.submodule_search_locations)))
    return sorted(path for path in root.rglob("*") if path.is_file() and "__pycache__" not in path.parts)


def fingerprint() -> str:
    """A hash of course_lib's files, the assets' content hashes, the installed distributions and
    the course's environment variables."""
    from course_lib import assets

    digest = hashlib.sha256()
    for path in course_lib_files():
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    for row in assets.asset_status():
        digest.update(f"{row['asset']}={row['content_hash']}\n".encode())
    installed = sorted(
        f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
    )
    digest.update("\n".join(installed).encode())
    for name in sorted(os.environ):
        if name.startswith("COURSE_") or name in ENVIRONMENT:
            digest.update(f"{name}={os.environ[name]}\n".encode())
    return digest.hexdigest()[:16]


def cache_in_fingerprint_folder(app: Sphinx, config: Config) -> None:
    if config.nb_execution_mode != "cache" or config.nb_execution_cache_path:
        return  # not caching, or a folder chosen explicitly (execute.cache in _config.yml)
    folder = Path(app.outdir).parent / ".jupyter_cache" / fingerprint()
    config.nb_execution_cache_path = str(folder)


def setup(app: Sphinx) -> dict:
    app.connect("config-inited", cache_in_fingerprint_folder)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""Sharing a model: the repository layout the Hub expects, model cards filled from measured results,
versions kept with git, uploads that run only when a token and a network exist, and a Gradio Space.

Chapter 4 writes the lesson itself: ``save_pretrained``, the ``ModelCard``/``ModelCardData``, the
Gradio app, the ``upload_folder``/``push_to_hub`` calls and the ``gradio_client.Client``. This module
holds what is not the lesson: checks, measurements, git plumbing and the local server.

Model repository
    :func:`repo_files` says what each file is for; :func:`check_model_repo` lists what the Hub (and
    ``from_pretrained``) would miss or refuse.
Model card
    :func:`card_measurements` measures held-out perplexity with its baselines (the numbers a card
    reports); :func:`card_problems` validates a card offline and :func:`validate_card` adds the
    Hub's own validator when it can be reached.
Versions
    :func:`commit_folder` commits (and tags) a folder with git; :func:`revisions` lists the history;
    :func:`checkout_revision` / :func:`load_revision` load the files of any tag or commit. On the Hub,
    ``from_pretrained(repo_id, revision="v1.0")`` does the same in one argument.
Uploads
    :func:`hub_access` says whether a token and the Hub are both available (it never returns or prints
    the token): the chapter uploads only when it says so. Nothing is ever faked.
Space
    :func:`write_space` writes ``requirements.txt`` and a ``README.md`` with the Space front matter
    beside the ``app.py`` the chapter writes; :func:`running_space` runs that very ``app.py`` on
    127.0.0.1 and closes it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .profiles import CourseError, hub_is_offline

# What each file of a transformers model repository is for.
FILE_ROLES = {
    "config.json": "architecture and sizes (read first by from_pretrained)",
    "generation_config.json": "default generation settings",
    "model.safetensors": "weights (safetensors: no code runs on load)",
    "model.safetensors.index.json": "which shard holds which weight (large models)",
    "tokenizer.json": "the tokenizer (vocabulary, merges, special tokens)",
    "tokenizer_config.json": "tokenizer class and special-token settings",
    "special_tokens_map.json": "special tokens (older tokenizers)",
    "chat_template.jinja": "chat template used by apply_chat_template",
    "README.md": "the card: YAML metadata + documentation",
    ".gitattributes": "which files git stores with LFS",
    "app.py": "the Space's application (Gradio)",
    "requirements.txt": "pip packages the Space installs",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
GIT_IDENTITY = (
    "-c",
    "user.name=course",
    "-c",
    "user.email=course@example.invalid",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "tag.gpgsign=false",
)
# Fixed commit dates make commit hashes depend on content only: the same build prints the same hashes.
FIXED_GIT_DATE = "2026-01-01T00:00:00+00:00"


# --- model repository ---------------------------------------------------------------------------


def repo_files(folder: str | Path) -> list[dict]:
    """The files of a repository folder (``.git`` excluded) with size and what each is for."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CourseError(f"{folder} is not a folder; save a model there first (save_pretrained).")
    rows = []
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts
    ):
        name = str(path.relative_to(folder))
        role = FILE_ROLES.get(
            name, "pickle weights: unsafe to load" if name.endswith(PICKLE_SUFFIXES) else "other"
        )
        rows.append({"file": name, "kB": round(path.stat().st_size / 1e3, 1), "role": role})
    return rows


def check_model_repo(folder: str | Path, require_card: bool = True) -> list[str]:
    """What a model repository lacks for ``from_pretrained`` and the Hub: config, safetensors weights
    (no pickles), tokenizer files and, unless ``require_card=False``, a README.md model card."""
    names = {row["file"] for row in repo_files(folder)}
    problems = []
    if "config.json" not in names:
        problems.append("config.json is missing: save with model.save_pretrained(folder).")
    if not ({"model.safetensors", "model.safetensors.index.json"} & names):
        problems.append(
            "no safetensors weights (model.safetensors or its index): save with save_pretrained, "
            "whose default is safetensors."
        )
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        problems.append(
            f"pickle files {pickles}: loading them can run arbitrary code; convert to safetensors."
        )
    if (
        not ({"tokenizer.json", "tokenizer.model", "vocab.txt"} & names)
        or "tokenizer_config.json" not in names
    ):
        problems.append("tokenizer files are missing: also call tokenizer.save_pretrained(folder).")
    if require_card and "README.md" not in names:
        problems.append("README.md (the model card) is missing: ModelCard(...).save(path).")
    return problems


# --- model card ---------------------------------------------------------------------------------


def card_measurements(model, tokenizer, split: str = "validation", max_blocks: int | None = 40) -> list[dict]:
    """Held-out perplexity of ``model`` and its baselines (untrained copy, bigram counts), measured
    now on the course corpus: the numbers a model card reports (offline profile)."""
    from .evaluation import perplexity_baselines

    rows = perplexity_baselines(model, tokenizer, split=split, max_blocks=max_blocks)
    return [row | {"split": split} for row in rows]


def perplexity_of(measurements: list[dict], model: str = "pretrained") -> float:
    """The perplexity of the row of :func:`card_measurements` whose ``model`` starts with ``model``."""
    matches = [row["perplexity"] for row in measurements if row["model"].startswith(model)]
    if len(matches) != 1:
        raise CourseError(
            f"{len(matches)} rows match {model!r}; models: {[row['model'] for row in measurements]}."
        )
    return matches[0]


def card_problems(card, expected: dict[str, float] | None = None) -> list[str]:
    """Validate a model card offline: its text parses back into a card whose metadata has a license,
    a language, a library, a pipeline tag and evaluation results; with ``expected`` (metric type ->
    value) the reported values must equal the measured ones."""
    from huggingface_hub import ModelCard

    try:
        parsed = ModelCard(str(card))
    except Exception as error:  # the library raises ValueError for malformed YAML headers
        return [f"the card does not parse: {error}"]
    data = parsed.data
    problems = [
        f"metadata has no {field}"
        for field in ("license", "language", "library_name", "pipeline_tag")
        if not getattr(data, field, None)
    ]
    results = data.eval_results or []
    if not results:
        problems.append("metadata has no evaluation results (model-index): report measured metrics.")
    reported = {r.metric_type: r.metric_value for r in results}
    for metric, value in (expected or {}).items():
        if metric not in reported:
            problems.append(f"{metric} is not reported.")
        elif abs(float(reported[metric]) - float(value)) > 1e-9:
            problems.append(f"{metric} reported as {reported[metric]}, but {value} was measured.")
    return problems


def validate_card(card, expected: dict[str, float] | None = None) -> dict:
    """:func:`card_problems`, plus the Hub's own validator (``ModelCard.validate``, an HTTP call) when
    :func:`hub_access` finds the Hub reachable; otherwise that step is reported as skipped."""
    report = {"local problems": card_problems(card, expected)}
    access = hub_access(need_token=False)
    if access["ok"]:
        try:
            card.validate()
            report["hub validation"] = "passed"
        except ValueError as error:
            report["hub validation"] = f"failed: {error}"
    else:
        report["hub validation"] = f"skipped: {access['reason']}"
    return report


# --- versions with git --------------------------------------------------------------------------


def _git(folder: str | Path, *args: str) -> str:
    if shutil.which("git") is None:
        raise CourseError("git is not installed; install it (e.g. `apt-get install git`) to version a model.")
    env = os.environ | {"GIT_AUTHOR_DATE": FIXED_GIT_DATE, "GIT_COMMITTER_DATE": FIXED_GIT_DATE}
    result = subprocess.run(
        ["git", *GIT_IDENTITY, "-C", str(folder), *args], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise CourseError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def commit_folder(folder: str | Path, message: str, tag: str | None = None) -> str:
    """Commit everything in ``folder`` (``git init`` on first use) and optionally tag it; returns the
    commit hash. Hub repositories are git repositories too: this is the same history, kept locally."""
    folder = Path(folder)
    if not (folder / ".git").exists():
        _git(folder, "init", "-q", "-b", "main")
    _git(folder, "add", "-A")
    _git(folder, "commit", "-q", "--allow-empty", "-m", message)
    if tag:
        _git(folder, "tag", tag)
    return _git(folder, "rev-parse", "HEAD")


def revisions(folder: str | Path) -> list[dict]:
    """The commits of ``folder``, newest first: short hash, tags and message."""
    rows = []
    for line in _git(folder, "log", "--format=%H%x09%D%x09%s").splitlines():
        sha, refs, message = line.split("\t", 2)
        tags = [ref.removeprefix("tag: ") for ref in refs.split(", ") if ref.startswith("tag: ")]
        rows.append({"commit": sha[:10], "tags": ", ".join(tags), "message": message})
    return rows


def checkout_revision(folder: str | Path, revision: str, into: str | Path) -> Path:
    """Write the files of ``revision`` (a tag, branch or commit of ``folder``) into the folder ``into``
    with ``git archive``; the repository and its working tree stay as they are."""
    into = Path(into)
    into.mkdir(parents=True, exist_ok=True)
    _git(folder, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    archive = subprocess.run(
        ["git", "-C", str(folder), "archive", "--format=tar", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def load_revision(folder: str | Path, revision: str, auto_class=None, **kwargs: Any):
    """Load the model saved at ``revision`` of the local git repository ``folder``.

    ``from_pretrained`` on a local folder has no ``revision=``: it reads whatever the folder holds.
    So the files of that revision are checked out into a temporary folder first. For a Hub repo,
    ``from_pretrained(repo_id, revision=revision)`` does exactly this for you.
    """
    from transformers import AutoModelForCausalLM

    auto_class = auto_class or AutoModelForCausalLM
    with tempfile.TemporaryDirectory(prefix="revision-") as tmp:
        checkout_revision(folder, revision, tmp)
        kwargs.setdefault("use_safetensors", True)
        kwargs.setdefault("trust_remote_code", False)
        return auto_class.from_pretrained(tmp, **kwargs).eval()


def revision_summary(folder: str | Path, revision: str, reference_model, tokenizer, texts: list[str]) -> dict:
    """Load ``revision`` of ``folder`` and describe it: commit, dtype, size of its weights file, and the
    largest logit difference from ``reference_model`` on ``texts`` (0.0: the same model)."""
    from .finetune import max_logit_difference

    with tempfile.TemporaryDirectory(prefix="revision-") as tmp:
        checkout_revision(folder, revision, tmp)
        weights = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
    model = load_revision(folder, revision)
    return {
        "revision": revision,
        "commit": _git(folder, "rev-parse", "--short=10", revision),
        "dtype": str(model.dtype).removeprefix("torch."),
        "weights MB": round(weights / 1e6, 2),
        "max |logit difference| vs fp32 model": round(
            max_logit_difference(model, reference_model, tokenizer, texts), 4
        ),
    }


# --- uploads ------------------------------------------------------------------------------------


def _hub_reachable(timeout: float = 3.0) -> bool:
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout, follow_redirects=True)
        return True
    except httpx.HTTPError:
        return False


def hub_access(need_token: bool = True) -> dict:
    """Whether uploading can work now: ``ok``, a ``reason`` when it cannot, and the account name when
    a token is found (``HF_TOKEN`` or a ``huggingface_hub.login()``). The token itself is never returned."""
    from huggingface_hub import get_token

    if hub_is_offline():
        return {"ok": False, "reason": "HF_HUB_OFFLINE is set, so no request goes to the Hub."}
    token = get_token()
    if need_token and not token:
        return {"ok": False, "reason": "no Hugging Face token: set HF_TOKEN or run huggingface_hub.login()."}
    if not _hub_reachable():
        return {"ok": False, "reason": "the Hub cannot be reached from this machine (no network)."}
    if not token:
        return {"ok": True, "reason": "", "user": None}
    from huggingface_hub import HfApi

    try:
        user = HfApi().whoami(token=token)["name"]
    except Exception as error:  # an invalid or expired token; the message does not contain the token
        return {"ok": False, "reason": f"the token was rejected ({type(error).__name__}); log in again."}
    return {"ok": True, "reason": "", "user": user}


def repo_id(name: str, access: dict | None = None) -> str:
    """``<user>/<name>`` for the logged-in account, or ``your-username/<name>`` when there is none."""
    access = access if access is not None else hub_access()
    return f"{access.get('user') or 'your-username'}/{name}"


# --- a Gradio Space -----------------------------------------------------------------------------


def write_space(
    folder: str | Path,
    model_id: str,
    title: str = "Course LM",
    description: str = "A 1.4M-parameter Llama-style model trained on the Python docs.",
    emoji: str = "🐍",
    short_description: str = "Greedy text continuation with a tiny course LM",
) -> Path:
    """Write the packaging of a Gradio Space beside its ``app.py`` in ``folder``: ``requirements.txt``
    (pinned to the versions installed here) and ``README.md`` with the Space's YAML front matter
    (SDK and version, entry file, the model it uses). The Hub limits ``short_description`` to 60
    characters."""
    from huggingface_hub import SpaceCard, SpaceCardData

    if len(short_description) > 60:
        raise CourseError(f"short_description has {len(short_description)} characters; the Hub allows 60.")
    folder = Path(folder)
    if not (folder / "app.py").is_file():
        raise CourseError(f"No app.py in {folder}: write the Gradio app there first (%%writefile).")
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("transformers", "safetensors")]
    (folder / "requirements.txt").write_text("\n".join(pins + ["torch"]) + "\n")
    data = SpaceCardData(
        title=title,
        sdk="gradio",
        sdk_version=importlib.metadata.version("gradio"),
        app_file="app.py",
        license="apache-2.0",
        models=[model_id],
        emoji=emoji,
        colorFrom="blue",
        colorTo="yellow",
        pinned=False,
        short_description=short_description,
    )
    SpaceCard.from_template(
        data,
        template_str="---\n{{ card_data }}\n---\n\n# {{ title }}\n\n{{ description }}\n",
        title=title,
        description=description,
    ).save(folder / "README.md")
    return folder


def space_front_matter(folder: str | Path) -> dict:
    """The YAML front matter of a Space's README.md, parsed."""
    from huggingface_hub import SpaceCard

    readme = Path(folder) / "README.md"
    if not readme.is_file():
        raise CourseError(f"No README.md in {folder}; write the Space with write_space(...).")
    return SpaceCard.load(readme).data.to_dict()


@contextlib.contextmanager
def running_demo(demo, host: str = "127.0.0.1") -> Iterator[str]:
    """Launch a Gradio app (``Blocks``/``Interface``) on a free loopback port; yields its URL and closes
    it when the ``with`` block ends. ``share=False``: no public tunnel; analytics off."""
    from .env import free_port
    from .serving import check_host

    check_host(host)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    demo.analytics_enabled = False
    demo.launch(
        server_name=host,
        server_port=free_port(host),
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        inline=False,
        show_error=True,
    )
    try:
        yield demo.local_url.rstrip("/")
    finally:
        with contextlib.redirect_stdout(io.StringIO()):  # "Closing server running on port: ..."
            demo.close()


@contextlib.contextmanager
def running_space(space_folder: str | Path, model_dir: str | Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the Space's own ``app.py`` locally with ``MODEL_ID=model_dir``; yields its URL.

    Binds a loopback address only (``share=False``: no public tunnel), with Gradio's analytics off so
    nothing tries to reach the internet, and closes the server when the ``with`` block ends.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read when gradio is imported: no usage pings
    app_path = Path(space_folder) / "app.py"
    if not app_path.is_file():
        raise CourseError(f"No app.py in {space_folder}: write the Gradio app there first (%%writefile).")
    module_name = f"course_space_{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("MODEL_ID")
    os.environ["MODEL_ID"] = str(model_dir)
    try:
        spec = importlib.util.spec_from_file_location(module_name, app_path)
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
    finally:
        if previous is None:
            os.environ.pop("MODEL_ID", None)
        else:
            os.environ["MODEL_ID"] = previous
    try:
        with running_demo(app.demo, host) as url:
            yield url
    finally:
        sys.modules.pop(module_name, None)

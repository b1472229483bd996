"""Profiles and the registry of named roles.

A notebook never names a model or a dataset directly: it asks for a *role*
("causal-lm", "sft-data", ...). The active profile decides what the role means:

* ``offline`` (the default): assets that ``course_lib`` builds itself from the
  Python standard library's documentation, cached on disk, no network needed.
* ``hub``: real models and datasets from the Hugging Face Hub, sized for a free
  Colab T4 GPU. ``colab`` is an alias of ``hub``.

Switch with the ``COURSE_PROFILE`` environment variable.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

PROFILE_ENV = "COURSE_PROFILE"
# Set (with HF_HUB_CACHE and HF_DATASETS_CACHE) by course_lib.synthetic_hub.environment(): the hub
# profile then reads a synthetic Hub on disk, so HF_HUB_OFFLINE does not stop it.
SYNTHETIC_HUB_ENV = "COURSE_SYNTHETIC_HUB"
OFFLINE = "offline"
HUB = "hub"
_ALIASES = {"colab": HUB, "gpu": HUB, "local": OFFLINE}


class CourseError(RuntimeError):
    """An error whose message says what the user should do next."""


@dataclass(frozen=True)
class RoleSpec:
    """What a role resolves to under one profile.

    ``source`` is a Hub repo id (hub profile) or the name of a local asset
    (offline profile). ``kind`` says which loader understands it.
    """

    role: str
    kind: str  # "model", "tokenizer" or "dataset"
    source: str
    profile: str
    config_name: str | None = None  # dataset configuration on the Hub
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.profile == OFFLINE


# role -> (kind, offline asset, hub repo id, hub config, notes)
_REGISTRY: dict[str, tuple[str, str | None, str, str | None, str]] = {
    "causal-lm": ("model", "lm", "HuggingFaceTB/SmolLM2-135M", None, "small Llama-style decoder"),
    "instruct-lm": (
        "model",
        "instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        None,
        "real pretrained instruct LM (SmolLM2-135M-Instruct)",
    ),
    "encoder": (
        "model",
        "encoder",
        "sentence-transformers/all-MiniLM-L6-v2",
        None,
        "BERT-style encoder (MiniLM)",
    ),
    "pretraining-corpus": (
        "dataset",
        "corpus",
        "Salesforce/wikitext",
        "wikitext-2-raw-v1",
        "plain English text, column 'text'",
    ),
    "sft-data": ("dataset", "tasks/sft", "tatsu-lab/alpaca", None, "instruction/input/output pairs"),
    "preference-data": (
        "dataset",
        "tasks/preference",
        "trl-lib/ultrafeedback_binarized",
        None,
        "prompt/chosen/rejected",
    ),
    "classification-data": ("dataset", "tasks/classification", "stanfordnlp/imdb", None, "text/label"),
    # Hub only: no offline asset can serve these tasks (the offline encoder has no task heads).
    "fill-mask-model": ("model", None, "distilbert/distilbert-base-uncased", None, "masked LM (hub only)"),
    "qa-model": (
        "model",
        None,
        "distilbert/distilbert-base-cased-distilled-squad",
        None,
        "extractive QA (hub only)",
    ),
}


def roles() -> list[str]:
    """All role names the registry knows, sorted."""
    return sorted(_REGISTRY)


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules


def active_profile() -> str:
    """The profile in force: ``$COURSE_PROFILE``, else ``hub`` in Colab, else ``offline``."""
    raw = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not raw:
        return HUB if in_colab() else OFFLINE
    name = _ALIASES.get(raw, raw)
    if name not in (OFFLINE, HUB):
        raise CourseError(
            f"Unknown {PROFILE_ENV}={raw!r}. Use 'offline' (local assets, no network) "
            f"or 'hub' (real Hub models; alias 'colab')."
        )
    return name


def hub_is_offline() -> bool:
    """True when the environment forbids Hub access (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def synthetic_hub_active() -> bool:
    """True when ``$COURSE_SYNTHETIC_HUB`` names a built synthetic Hub (``python -m course_lib hub build``)."""
    folder = os.environ.get(SYNTHETIC_HUB_ENV, "").strip()
    return bool(folder) and os.path.isfile(os.path.join(folder, "manifest.json"))


def resolve(role: str, profile: str | None = None) -> RoleSpec:
    """Map a role to what it means under ``profile`` (default: the active one).

    Raises :class:`CourseError` for an unknown role, or for a Hub role while
    ``HF_HUB_OFFLINE`` is set (unless a synthetic Hub is active), with the fix in the message.
    """
    if role not in _REGISTRY:
        raise CourseError(f"Unknown role {role!r}. Known roles: {', '.join(roles())}.")
    profile = profile or active_profile()
    kind, local, hub_id, config_name, notes = _REGISTRY[role]
    if profile == HUB:
        if hub_is_offline() and not synthetic_hub_active():
            raise CourseError(
                f"Role {role!r} maps to the Hub repo {hub_id!r} under the 'hub' profile, but "
                "HF_HUB_OFFLINE is set. Unset HF_HUB_OFFLINE to download it, or run with "
                f"{PROFILE_ENV}=offline to use the course's local assets."
            )
        return RoleSpec(role, kind, hub_id, HUB, config_name, notes)
    if local is None:
        raise CourseError(
            f"Role {role!r} has no offline asset: it needs a real Hub model ({hub_id!r}). "
            f"Run with {PROFILE_ENV}=hub (and network access) to use it."
        )
    return RoleSpec(role, kind, local, OFFLINE, None, notes)


def registry_table() -> list[dict[str, str]]:
    """One row per role: what it resolves to offline and on the Hub (for display)."""
    rows = []
    for role in roles():
        kind, local, hub_id, config_name, notes = _REGISTRY[role]
        rows.append(
            {
                "role": role,
                "kind": kind,
                "offline asset": local or "(none)",
                "hub": hub_id + (f" ({config_name})" if config_name else ""),
                "notes": notes,
            }
        )
    return rows

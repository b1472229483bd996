"""Load datasets by role with 🤗 datasets, from local JSONL files or from the Hub."""

from __future__ import annotations

from typing import Any

from . import assets
from .profiles import CourseError, RoleSpec, resolve

DATASET_ROLES = ("pretraining-corpus", "sft-data", "preference-data", "classification-data")


def data_files(spec: RoleSpec) -> dict[str, str]:
    """Split name -> local JSONL path for an offline dataset role."""
    asset, _, sub = spec.source.partition("/")
    folder = assets.BUILDERS[asset]()
    if sub:
        folder = folder / sub
    return {split: str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")}


def load_role_dataset(role: str, split: str | None = None, profile: str | None = None, **kwargs: Any):
    """``datasets.load_dataset`` for a dataset role: a ``DatasetDict``, or one split.

    Offline the role is the course's JSONL files (train/validation/test);
    on the Hub profile it is the registry's repo id, with its own splits.
    ``profile="offline"`` pins the course's own data under any profile (for a
    section that needs its columns, e.g. the ``task`` of sft-data rows).
    """
    from datasets import load_dataset

    spec = resolve(role, profile)
    if spec.kind != "dataset":
        raise CourseError(
            f"Role {role!r} is a {spec.kind}, not a dataset. Dataset roles: {', '.join(DATASET_ROLES)}."
        )
    if spec.is_local:
        files = data_files(spec)
        if split is not None and split not in files:
            raise CourseError(f"Unknown split {split!r} for {role!r}; use one of {sorted(files)}.")
        return load_dataset("json", data_files=files, split=split, **kwargs)
    return load_dataset(spec.source, spec.config_name, split=split, **kwargs)

import pytest

from course_lib.data import load_role_dataset
from course_lib.profiles import CourseError


def test_offline_roles_load_as_dataset_dicts():
    corpus = load_role_dataset("pretraining-corpus")
    assert set(corpus) == {"train", "validation", "test"}
    assert {"id", "text", "split"} <= set(corpus["train"].column_names)
    sft = load_role_dataset("sft-data", split="validation")
    assert {"instruction", "input", "output"} <= set(sft.column_names)
    assert {"prompt", "chosen", "rejected"} <= set(
        load_role_dataset("preference-data", split="test").column_names
    )


def test_bad_split_and_model_role_fail_clearly():
    with pytest.raises(CourseError, match="Unknown split"):
        load_role_dataset("sft-data", split="dev")
    with pytest.raises(CourseError, match="not a dataset"):
        load_role_dataset("causal-lm")


def test_hub_profile_passes_repo_and_config(monkeypatch):
    import datasets

    seen = {}
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: seen.update(args=a, kwargs=k) or "ds")
    assert load_role_dataset("pretraining-corpus", split="train") == "ds"
    assert seen["args"] == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert seen["kwargs"]["split"] == "train"

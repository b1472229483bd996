import pytest

from course_lib.profiles import CourseError, active_profile, registry_table, resolve, roles

EXPECTED_ROLES = {
    "causal-lm",
    "instruct-lm",
    "encoder",
    "pretraining-corpus",
    "sft-data",
    "preference-data",
    "classification-data",
    "fill-mask-model",
    "qa-model",
}


def test_registry_has_every_role_in_both_profiles():
    assert set(roles()) == EXPECTED_ROLES
    assert {row["role"] for row in registry_table()} == EXPECTED_ROLES


@pytest.mark.parametrize("role", ["fill-mask-model", "qa-model"])
def test_hub_only_roles_say_how_to_use_them_offline(monkeypatch, role):
    monkeypatch.setenv("COURSE_PROFILE", "offline")
    with pytest.raises(CourseError, match="COURSE_PROFILE=hub"):
        resolve(role)


def test_offline_is_the_default(monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert active_profile() == "offline"
    assert resolve("causal-lm").is_local


@pytest.mark.parametrize("alias", ["hub", "colab", "HUB"])
def test_hub_aliases(monkeypatch, alias):
    monkeypatch.setenv("COURSE_PROFILE", alias)
    assert active_profile() == "hub"


def test_colab_runtime_defaults_to_hub(monkeypatch):
    import sys
    import types

    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert active_profile() == "hub"


def test_unknown_profile_says_what_to_use(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "cloud")
    with pytest.raises(CourseError, match="offline.*hub"):
        active_profile()


def test_unknown_role_lists_known_roles():
    with pytest.raises(CourseError, match="Known roles: causal-lm"):
        resolve("llm")


def test_hub_role_while_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CourseError, match="COURSE_PROFILE=offline"):
        resolve("causal-lm", profile="hub")


def test_hub_specs_name_real_repos(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    spec = resolve("pretraining-corpus", profile="hub")
    assert (spec.source, spec.config_name) == ("Salesforce/wikitext", "wikitext-2-raw-v1")
    assert resolve("causal-lm", profile="hub").source == "HuggingFaceTB/SmolLM2-135M"

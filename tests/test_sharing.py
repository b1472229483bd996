import copy
import os
import types

import pytest
import torch

from course_lib import sharing
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def measured(course_lm):
    model, tokenizer = course_lm
    return sharing.card_measurements(model, tokenizer, max_blocks=4)


@pytest.fixture
def repo(course_lm, tmp_path):
    model, tokenizer = course_lm
    return sharing.save_model_repo(model, tokenizer, tmp_path / "course-lm")


def test_repository_layout_checks(repo):
    names = {row["file"] for row in sharing.repo_files(repo)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sharing.check_model_repo(repo, require_card=False) == []
    assert any("README.md" in p for p in sharing.check_model_repo(repo))
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "tokenizer.json").unlink()
    problems = " ".join(sharing.check_model_repo(repo, require_card=False))
    assert "pickle" in problems and "tokenizer" in problems
    assert next(r for r in sharing.repo_files(repo) if r["file"] == "pytorch_model.bin")["role"].startswith("pickle")
    with pytest.raises(CourseError, match="not a folder"):
        sharing.repo_files(repo / "missing")


def test_model_card_reports_measured_numbers(course_lm, measured):
    model, _ = course_lm
    assert [row["model"].split()[0] for row in measured] == ["untrained", "bigram", "pretrained"]
    own = sharing.perplexity_of(measured, "pretrained")
    card = sharing.build_model_card(model, measured, "course-lm", repo_id="me/course-lm", description="tiny")
    text = str(card)
    assert f"value: {own}" in text and "1,377,408" in text and 'from_pretrained("me/course-lm")' in text
    assert sharing.card_problems(card, {"perplexity": own}) == []
    assert "but 1.0 was measured" in " ".join(sharing.card_problems(card, {"perplexity": 1.0}))
    report = sharing.validate_card(card, {"perplexity": own})
    assert report["local problems"] == [] and report["hub validation"].startswith("skipped: HF_HUB_OFFLINE")
    assert sharing.card_problems("---\nlicense: [unclosed\n---\nbody")[0].startswith("the card does not parse")
    from huggingface_hub import ModelCard

    bare = " ".join(sharing.card_problems(ModelCard("---\nlicense: mit\n---\n# x")))
    assert "language" in bare and "evaluation results" in bare
    with pytest.raises(CourseError, match="pretrained"):
        sharing.build_model_card(model, measured[:1], "course-lm")
    with pytest.raises(CourseError, match="0 rows match"):
        sharing.perplexity_of(measured, "nothing")


def test_versions_with_git(course_lm, repo, tmp_path):
    model, tokenizer = course_lm
    first = sharing.commit_folder(repo, "fp32", tag="v1.0")
    sharing.save_model_repo(copy.deepcopy(model).to(torch.bfloat16), tokenizer, repo)
    second = sharing.commit_folder(repo, "bf16", tag="v2.0")
    assert first != second and len(first) == 40
    history = sharing.revisions(repo)
    assert [(r["tags"], r["message"]) for r in history] == [("v2.0", "bf16"), ("v1.0", "fp32")]
    assert sharing.load_revision(repo, "v1.0").dtype == torch.float32
    assert sharing.load_revision(repo, first[:8]).dtype == torch.float32
    assert sharing.load_revision(repo, "v2.0").dtype == torch.bfloat16
    rows = [sharing.revision_summary(repo, rev, model, tokenizer, ["Return the"]) for rev in ("v1.0", "v2.0")]
    assert rows[0]["max |logit difference| vs fp32 model"] == 0.0
    assert rows[1]["weights MB"] < 0.6 * rows[0]["weights MB"]
    with pytest.raises(CourseError, match="failed"):
        sharing.checkout_revision(repo, "v9.9", tmp_path / "nowhere")
    # fixed dates: the same content gives the same commit hash, so rebuilt pages print the same history
    other = sharing.save_model_repo(model, tokenizer, tmp_path / "again")
    assert sharing.commit_folder(other, "fp32", tag="v1.0") == first


def test_uploads_are_skipped_offline(repo, course_lm):
    model, tokenizer = course_lm
    access = sharing.hub_access()
    assert access == {"ok": False, "reason": "HF_HUB_OFFLINE is set, so no request goes to the Hub."}
    result = sharing.upload_folder_if_possible(repo, "course-lm")
    assert result["uploaded"] is False and result["note"].startswith("upload skipped")
    assert sharing.push_to_hub_if_possible(model, tokenizer, "course-lm")["uploaded"] is False
    assert sharing.repo_id("course-lm", access) == "your-username/course-lm"
    with pytest.raises(CourseError, match="namespace"):
        sharing.upload_folder_if_possible(repo, "me/course-lm")


def test_upload_without_token_says_so(monkeypatch, repo):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    result = sharing.upload_folder_if_possible(repo, "course-lm")
    assert result == {"uploaded": False, "note": "upload skipped: no Hugging Face token: set HF_TOKEN or run "
                                                  "huggingface_hub.login()."}


def test_upload_runs_for_real_when_possible_and_never_leaks_the_token(monkeypatch, repo, course_lm):
    """The online branch up to the network boundary: HfApi is replaced by a recorder."""
    secret = "hf_" + "x" * 30
    calls = []

    class FakeApi:
        def whoami(self, token=None):
            calls.append(("whoami", token == secret))
            return {"name": "learner"}

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs.get("private"), kwargs.get("repo_type")))

        def upload_folder(self, folder_path, repo_id, **kwargs):
            calls.append(("upload_folder", repo_id, os.path.isdir(folder_path)))
            return types.SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")

        def create_tag(self, repo_id, tag, **kwargs):
            calls.append(("create_tag", repo_id, tag))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: secret)
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr(sharing, "_hub_reachable", lambda timeout=3.0: True)
    result = sharing.upload_folder_if_possible(repo, "course-lm", tag="v1.0")
    assert result == {"uploaded": True, "url": "https://huggingface.co/learner/course-lm/commit/abc"}
    assert ("create_repo", "learner/course-lm", True, "model") in calls
    assert ("upload_folder", "learner/course-lm", True) in calls and ("create_tag", "learner/course-lm", "v1.0") in calls
    assert secret not in repr(result) and secret not in repr(sharing.hub_access())
    assert sharing.repo_id("course-lm") == "learner/course-lm"

    pushed = []
    model = types.SimpleNamespace(push_to_hub=lambda repo_id, private: pushed.append(("model", repo_id, private)))
    tokenizer = types.SimpleNamespace(push_to_hub=lambda repo_id, private: pushed.append(("tok", repo_id, private)))
    assert sharing.push_to_hub_if_possible(model, tokenizer, "course-lm")["uploaded"] is True
    assert pushed == [("model", "learner/course-lm", True), ("tok", "learner/course-lm", True)]

    monkeypatch.setattr(sharing, "_hub_reachable", lambda timeout=3.0: False)
    assert "cannot be reached" in sharing.upload_folder_if_possible(repo, "course-lm")["note"]


def test_space_files_and_local_run(course_lm, repo, tmp_path):
    from course_lib.generation import generate_text

    model, tokenizer = course_lm
    space = sharing.write_space(tmp_path / "space", model_id="me/course-lm")
    assert {row["file"] for row in sharing.repo_files(space)} == {"README.md", "app.py", "requirements.txt"}
    front = sharing.space_front_matter(space)
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == ["me/course-lm"]
    assert "transformers==" in (space / "requirements.txt").read_text()
    assert "'me/course-lm'" in (space / "app.py").read_text()
    with pytest.raises(CourseError, match="60"):
        sharing.write_space(tmp_path / "x", "me/m", short_description="x" * 61)
    with pytest.raises(CourseError, match="No README"):
        sharing.space_front_matter(tmp_path)
    with sharing.running_space(space, repo) as url:
        assert url.startswith("http://127.0.0.1:")
        assert sharing.space_endpoints(url) == ["/generate"]
        answer = sharing.query_space(url, "Return the", 8)
    assert answer == generate_text(model, tokenizer, "Return the", preset="greedy", max_new_tokens=8)
    assert os.environ.get("MODEL_ID") is None  # restored after importing app.py
    with pytest.raises(CourseError, match="No app.py"):
        with sharing.running_space(tmp_path, repo):
            pass
    with pytest.raises(CourseError, match="loopback"):
        sharing.query_space("http://example.com", "x")


def test_running_demo_refuses_public_addresses():
    with pytest.raises(CourseError, match="Refusing to bind"):
        with sharing.running_demo(object(), host="0.0.0.0"):
            pass

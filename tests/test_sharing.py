import copy
import os

import pytest
import torch

from course_lib import sharing
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def measured(course_lm):
    model, tokenizer = course_lm
    return sharing.card_measurements(model, tokenizer, max_blocks=4)


def save_repo(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def repo(course_lm, tmp_path):
    model, tokenizer = course_lm
    return save_repo(model, tokenizer, tmp_path / "course-lm")


def test_repository_layout_checks(repo):
    names = {row["file"] for row in sharing.repo_files(repo)}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert sharing.check_model_repo(repo, require_card=False) == []
    assert any("README.md" in p for p in sharing.check_model_repo(repo))
    (repo / "pytorch_model.bin").write_bytes(b"pickle")
    (repo / "tokenizer.json").unlink()
    problems = " ".join(sharing.check_model_repo(repo, require_card=False))
    assert "pickle" in problems and "tokenizer" in problems
    assert next(r for r in sharing.repo_files(repo) if r["file"] == "pytorch_model.bin")["role"].startswith(
        "pickle"
    )
    with pytest.raises(CourseError, match="not a folder"):
        sharing.repo_files(repo / "missing")


def measured_card(measured, value=None):
    """A card the way chapter 4 writes one: ModelCardData with an EvalResult, then ModelCard."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    own = sharing.perplexity_of(measured, "pretrained") if value is None else value
    data = ModelCardData(
        model_name="course-lm",
        language="en",
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        eval_results=[
            EvalResult(
                task_type="text-generation",
                dataset_type="course_lib/stdlib-docs",
                dataset_name="docs",
                metric_type="perplexity",
                metric_value=own,
            )
        ],
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n# course-lm\n")


def test_card_checks_report_measured_numbers(measured):
    from huggingface_hub import ModelCard

    assert [row["model"].split()[0] for row in measured] == ["untrained", "bigram", "pretrained"]
    assert all(row["split"] == "validation" and row["tokens"] > 0 for row in measured)
    own = sharing.perplexity_of(measured, "pretrained")
    card = measured_card(measured)
    assert sharing.card_problems(card, {"perplexity": own}) == []
    assert "but 1.0 was measured" in " ".join(sharing.card_problems(card, {"perplexity": 1.0}))
    report = sharing.validate_card(card, {"perplexity": own})
    assert report["local problems"] == [] and report["hub validation"].startswith("skipped: HF_HUB_OFFLINE")
    assert sharing.card_problems("---\nlicense: [unclosed\n---\nbody")[0].startswith(
        "the card does not parse"
    )
    bare = " ".join(sharing.card_problems(ModelCard("---\nlicense: mit\n---\n# x")))
    assert "language" in bare and "evaluation results" in bare
    with pytest.raises(CourseError, match="0 rows match"):
        sharing.perplexity_of(measured, "nothing")


def test_versions_with_git(course_lm, repo, tmp_path):
    model, tokenizer = course_lm
    first = sharing.commit_folder(repo, "fp32", tag="v1.0")
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(repo)
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
    other = save_repo(model, tokenizer, tmp_path / "again")
    assert sharing.commit_folder(other, "fp32", tag="v1.0") == first


def test_uploads_are_skipped_offline():
    access = sharing.hub_access()
    assert access == {"ok": False, "reason": "HF_HUB_OFFLINE is set, so no request goes to the Hub."}
    assert sharing.repo_id("course-lm", access) == "your-username/course-lm"


def test_upload_without_token_says_so(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert sharing.hub_access() == {
        "ok": False,
        "reason": "no Hugging Face token: set HF_TOKEN or run huggingface_hub.login().",
    }


def test_hub_access_names_the_account_and_never_leaks_the_token(monkeypatch):
    """The online branch up to the network boundary: HfApi is replaced by a recorder."""
    secret = "hf_" + "x" * 30
    calls = []

    class FakeApi:
        def whoami(self, token=None):
            calls.append(("whoami", token == secret))
            if token != secret:
                raise PermissionError("401 Unauthorized")
            return {"name": "learner"}

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: secret)
    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    monkeypatch.setattr(sharing, "_hub_reachable", lambda timeout=3.0: True)
    access = sharing.hub_access()
    assert access == {"ok": True, "reason": "", "user": "learner"} and calls == [("whoami", True)]
    assert secret not in repr(access)
    assert sharing.repo_id("course-lm") == "learner/course-lm"

    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_expired")
    rejected = sharing.hub_access()
    assert rejected["ok"] is False and "rejected (PermissionError)" in rejected["reason"]
    assert "hf_expired" not in repr(rejected)

    monkeypatch.setattr(sharing, "_hub_reachable", lambda timeout=3.0: False)
    assert "cannot be reached" in sharing.hub_access()["reason"]


SPACE_APP = """
import os

import gradio as gr
from transformers import AutoModelForCausalLM, AutoTokenizer

MODEL_ID = os.environ.get("MODEL_ID", "me/course-lm")
tokenizer = AutoTokenizer.from_pretrained(MODEL_ID)
model = AutoModelForCausalLM.from_pretrained(MODEL_ID).eval()


def generate(prompt, max_new_tokens=8):
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False,
                            repetition_penalty=1.3, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


demo = gr.Interface(generate, [gr.Textbox(), gr.Number()], gr.Textbox(), api_name="generate",
                    analytics_enabled=False)
"""


def test_space_files_and_local_run(course_lm, repo, tmp_path, capsys):
    from gradio_client import Client

    from course_lib.generation import generate_text

    model, tokenizer = course_lm
    space = tmp_path / "space"
    space.mkdir()
    with pytest.raises(CourseError, match="No app.py"):
        sharing.write_space(space, model_id="me/course-lm")
    (space / "app.py").write_text(SPACE_APP)
    sharing.write_space(space, model_id="me/course-lm")
    assert {row["file"] for row in sharing.repo_files(space)} == {"README.md", "app.py", "requirements.txt"}
    front = sharing.space_front_matter(space)
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == ["me/course-lm"]
    assert "transformers==" in (space / "requirements.txt").read_text()
    with pytest.raises(CourseError, match="60"):
        sharing.write_space(space, "me/m", short_description="x" * 61)
    with pytest.raises(CourseError, match="No README"):
        sharing.space_front_matter(tmp_path)
    with sharing.running_space(space, repo) as url:
        assert url.startswith("http://127.0.0.1:")
        client = Client(url, verbose=False)
        assert list(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == [
            "/generate"
        ]
        answer = client.predict("Return the", 8, api_name="/generate")
    assert answer == generate_text(model, tokenizer, "Return the", preset="greedy", max_new_tokens=8)
    assert os.environ.get("MODEL_ID") is None  # restored after importing app.py
    assert "Closing server" not in capsys.readouterr().out  # closed quietly
    with pytest.raises(CourseError, match="No app.py"):
        with sharing.running_space(tmp_path, repo):
            pass


def test_running_demo_refuses_public_addresses():
    with pytest.raises(CourseError, match="Refusing to bind"):
        with sharing.running_demo(object(), host="0.0.0.0"):
            pass

"""Checks for chapter 4 (sharing: the Hub and Spaces)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import torch

from ..sharing import checkout_revision, running_demo
from . import Feedback, verdict
from .ch01 import next_token_rows


def check_card_data(card_data, measured_perplexity: float) -> Feedback:
    """Easy: ``ModelCardData`` with license, language ``en``, library ``transformers`` and an evaluation
    result whose perplexity is the measured one (and a ``model_name``, which eval results need)."""
    from huggingface_hub import ModelCardData

    if not isinstance(card_data, ModelCardData):
        return Feedback(False, f"expected huggingface_hub.ModelCardData, got {type(card_data).__name__}.")
    problems = []
    if not card_data.license:
        problems.append("set a license (e.g. license='apache-2.0').")
    if card_data.language not in ("en", ["en"]):
        problems.append(f"language is {card_data.language!r}; the model's text is English ('en').")
    if card_data.library_name != "transformers":
        problems.append("set library_name='transformers' so the Hub shows the right loading code.")
    perplexities = [r.metric_value for r in card_data.eval_results or [] if r.metric_type == "perplexity"]
    if not perplexities:
        problems.append("add eval_results=[EvalResult(..., metric_type='perplexity', metric_value=...)].")
    elif abs(float(perplexities[0]) - float(measured_perplexity)) > 1e-9:
        problems.append(
            f"the card reports perplexity {perplexities[0]}, but {measured_perplexity} was measured: "
            "pass the measured value, never a typed one."
        )
    return verdict(
        problems, f"metadata complete; the card reports the measured perplexity {measured_perplexity}."
    )


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def check_revision_files(folder, repo, revision: str = "v1.0") -> Feedback:
    """Medium: ``folder`` holds exactly the files of ``revision`` of the git repository ``repo``."""
    folder = Path(folder)
    if not folder.is_dir():
        return Feedback(False, f"{folder} is not a folder: extract the revision into it first.")
    with tempfile.TemporaryDirectory() as tmp:
        expected = _digests(checkout_revision(repo, revision, tmp))
    got = _digests(folder)
    problems = []
    if sorted(got) != sorted(expected):
        problems.append(f"files {sorted(got)} differ from those of {revision}: {sorted(expected)}.")
    else:
        changed = [name for name in expected if got[name] != expected[name]]
        if changed:
            problems.append(
                f"{changed} differ from {revision} (did you copy the working tree, i.e. the latest "
                "commit, instead of the tag?)."
            )
    return verdict(
        problems, f"the files of {revision}, byte for byte: from_pretrained(folder) loads that version."
    )


@torch.no_grad()
def check_next_tokens_app(
    demo, model, tokenizer, prompts=("Return the", "class Queue"), k: int = 5
) -> Feedback:
    """Hard: a Gradio app with an endpoint ``/next_tokens`` that takes a prompt and returns the ``k`` most
    likely next tokens as a list of ``{"token": str, "probability": float}``, highest first."""
    problems = []
    try:
        with running_demo(demo) as url:
            from gradio_client import Client

            client = Client(url, verbose=False)
            endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
            if "/next_tokens" not in endpoints:
                return Feedback(
                    False, f"endpoints are {sorted(endpoints)}; name yours with api_name='next_tokens'."
                )
            for prompt in prompts:
                got = client.predict(prompt, api_name="/next_tokens")
                expected = next_token_rows(model, tokenizer, prompt, k)
                if not isinstance(got, list) or len(got) != k:
                    problems.append(f"for {prompt!r} expected a list of {k} entries, got {str(got)[:80]}.")
                    break
                if [g.get("token") for g in got] != [e["token"] for e in expected]:
                    problems.append(
                        f"for {prompt!r} expected tokens {[e['token'] for e in expected]}, got "
                        f"{[g.get('token') for g in got]} (softmax of the last position's logits)."
                    )
                    break
                if any(abs(float(g["probability"]) - e["probability"]) > 1e-3 for g, e in zip(got, expected)):
                    problems.append(f"for {prompt!r} the tokens match but the probabilities differ.")
                    break
    except OSError as error:
        return Feedback(False, f"the app could not be launched on 127.0.0.1: {error}")
    return verdict(
        problems, f"/next_tokens answers like chapter 1's NextTokenPipeline on {len(prompts)} prompts."
    )

"""Hidden tests for chapter 4 (sharing: the Hub and Spaces). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_measured_perplexity(card_data):
    """the card reports the perplexity measured on the validation split, not a typed number"""
    from course_lib import sharing
    from course_lib.models import load_model, load_tokenizer

    measured = sharing.card_measurements(
        load_model("causal-lm"), load_tokenizer("causal-lm"), split="validation", max_blocks=40
    )
    expected = sharing.perplexity_of(measured, "pretrained")
    reported = [r for r in card_data.eval_results or [] if r.metric_type == "perplexity"]
    assert reported, "add an EvalResult with metric_type='perplexity'"
    assert abs(float(reported[0].metric_value) - expected) < 1e-6, (
        f"the card says {reported[0].metric_value}; the model's validation perplexity is {expected}"
    )
    assert reported[0].dataset_split == "validation", "the perplexity was measured on 'validation'"


def test_ex1_metadata(card_data):
    """license, language 'en', library 'transformers' and a model name are set"""
    from huggingface_hub import ModelCardData

    assert isinstance(card_data, ModelCardData), "card_data must be a huggingface_hub.ModelCardData"
    assert card_data.license, "set a license"
    assert card_data.language in ("en", ["en"]), "language='en'"
    assert card_data.library_name == "transformers", "library_name='transformers'"
    assert card_data.model_name, "eval results need a model_name"


def test_ex2_files_of_the_tag(v1_folder, workdir):
    """the folder holds the files of tag v1.0 (not of the latest commit), byte for byte"""
    import hashlib
    import subprocess
    from pathlib import Path

    repo = Path(workdir) / "course-lm"
    listing = subprocess.run(
        ["git", "-C", str(repo), "ls-tree", "-r", "v1.0"], capture_output=True, text=True, check=True
    ).stdout
    expected = {}
    for line in listing.splitlines():
        info, name = line.split("\t", 1)
        blob = subprocess.run(
            ["git", "-C", str(repo), "cat-file", "blob", info.split()[2]], capture_output=True, check=True
        ).stdout
        expected[name] = hashlib.sha256(blob).hexdigest()
    folder = Path(v1_folder)
    got = {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }
    assert sorted(got) == sorted(expected), f"files {sorted(got)}, expected those of v1.0: {sorted(expected)}"
    assert got == expected, "a file differs from v1.0's (the latest commit holds bfloat16 weights)"


def test_ex2_loads_float32(v1_folder):
    """from_pretrained on the folder loads v1.0's float32 weights"""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(v1_folder)
    assert next(model.parameters()).dtype == torch.float32, "v1.0 stores float32 weights"


def test_ex3_other_prompts(next_tokens):
    """on prompts the public check does not use: the five most likely tokens, highest first"""
    import torch

    from course_lib.models import load_model, load_tokenizer

    model, tokenizer = load_model("causal-lm"), load_tokenizer("causal-lm")
    for prompt in ("The function returns", "import", "A list of"):
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        values, ids = logits.float().softmax(-1).topk(5)
        got = next_tokens(prompt)
        assert isinstance(got, list) and len(got) == 5, f"{prompt!r}: expected a list of 5 entries"
        assert [g["token"] for g in got] == [tokenizer.decode([int(i)]) for i in ids], (
            f"{prompt!r}: not the 5 most likely next tokens, highest first"
        )
        assert all(abs(float(g["probability"]) - float(v)) < 1e-3 for g, v in zip(got, values)), (
            f"{prompt!r}: the probabilities are not the softmax of the last position's logits"
        )

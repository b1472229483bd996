"""Hidden tests for chapter 1 (models, tokenizers, pipelines). One point per test; each test is
self-contained (the grader runs every function on its own, its parameters filled from the
student's notebook)."""


def test_ex1_value(answer):
    """the number of distinct parameters of the chapter's model (a tied tensor counted once)"""
    from transformers import AutoModelForCausalLM

    import course_lib
    from course_lib.models import source_of

    model = AutoModelForCausalLM.from_pretrained(source_of(course_lib.resolve("instruct-lm")))
    expected = sum(p.numel() for p in model.parameters())
    assert int(answer) == expected, f"{answer} is not the number of distinct parameters"


def test_ex1_integer(answer):
    """an exact integer, not a float or a tensor"""
    assert isinstance(answer, int) and not isinstance(answer, bool), (
        f"answer should be an int, got {type(answer).__name__}"
    )


def test_ex2_one_special_token(tok2):
    """<|doc|> is one special token, kept whole inside other text"""
    ids = tok2("x <|doc|> y")["input_ids"]
    doc = tok2.convert_tokens_to_ids("<|doc|>")
    assert doc is not None and doc != tok2.unk_token_id, "<|doc|> is not in the vocabulary"
    assert ids.count(doc) == 1, "<|doc|> is split into pieces: add it as a special token"
    assert "<|doc|>" in tok2.all_special_tokens, "add it with add_special_tokens"


def test_ex2_other_text_unchanged(tok2, model2):
    """the embeddings match the tokenizer and another text's logits do not change"""
    import torch
    from transformers import AutoModelForCausalLM

    import course_lib
    from course_lib.models import source_of

    assert model2.get_input_embeddings().weight.shape[0] >= len(tok2), "resize the embeddings"
    source = source_of(course_lib.resolve("instruct-lm"))
    fresh = AutoModelForCausalLM.from_pretrained(source, dtype="float32").eval()
    inputs = tok2("Return the list of", return_tensors="pt")
    with torch.no_grad():
        before = fresh(**inputs).logits
        after = model2(**inputs).logits[..., : before.shape[-1]]
    assert torch.allclose(before, after, atol=1e-4), "the logits of text without <|doc|> changed"


def test_ex3_other_model_and_k(top_k_next_tokens):
    """on another model (the course LM), other prompts and k=3: ids and probabilities"""
    import torch

    from course_lib.models import load_model, load_tokenizer

    model, tokenizer = load_model("causal-lm").eval(), load_tokenizer("causal-lm")
    for prompt in ("import os", "The value of"):
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        values, ids = logits.float().softmax(-1).topk(3)
        got = list(top_k_next_tokens(model, tokenizer, prompt, 3))
        assert [int(i) for i, _ in got] == ids.tolist(), f"{prompt!r}: not the 3 most likely ids"
        assert all(abs(float(p) - float(v)) < 1e-4 for (_, p), v in zip(got, values)), (
            f"{prompt!r}: probabilities are not the softmax of the last position's logits"
        )

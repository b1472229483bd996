import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from course_lib.exercises import ch01
from course_lib.models import count_parameters, source_of
from course_lib.profiles import resolve


def test_parameter_count_check(course_lm):
    model, _ = course_lm
    assert ch01.check_parameter_count(model, count_parameters(model)["total"]).passed
    wrong = ch01.check_parameter_count(model, sum(t.numel() for t in model.state_dict().values()))
    assert not wrong.passed and "Tied" in wrong.message


def test_added_token_check_catches_a_missing_resize():
    source = source_of(resolve("causal-lm"))
    tokenizer, model = AutoTokenizer.from_pretrained(source), AutoModelForCausalLM.from_pretrained(source)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|doc|>"]})
    feedback = ch01.check_added_token(tokenizer, model, "<|doc|>")
    assert not feedback.passed and "resize_token_embeddings" in feedback.message
    model.resize_token_embeddings(len(tokenizer))
    assert ch01.check_added_token(tokenizer, model, "<|doc|>").passed


def test_top_k_check(course_lm):
    model, tokenizer = course_lm

    def good(model, tokenizer, prompt, k):
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
        values, indices = logits.softmax(-1).topk(k)
        return list(zip(indices.tolist(), values.tolist()))

    def wrong(model, tokenizer, prompt, k):  # ranks by the first position, a classic slip
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, 0]
        values, indices = logits.softmax(-1).topk(k)
        return list(zip(indices.tolist(), values.tolist()))

    assert ch01.check_top_k_next_tokens(good, model, tokenizer).passed
    assert not ch01.check_top_k_next_tokens(wrong, model, tokenizer).passed
    rows = ch01.next_token_rows(model, tokenizer, "Return the", top_k=4)
    probs = [r["probability"] for r in rows]
    assert len(rows) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1
    assert rows[0]["token"] == tokenizer.decode([rows[0]["token_id"]])

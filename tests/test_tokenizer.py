from course_lib.models import load_tokenizer


def test_special_tokens_and_round_trip():
    tokenizer = load_tokenizer("causal-lm")
    assert len(tokenizer) == 4096
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    text = "Return a new dictionary. Unicode too: naïve café ✓"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level: nothing is unknown
    assert len(ids) < len(text)


def test_chat_template_marks_assistant_tokens():
    tokenizer = load_tokenizer("causal-lm")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which module?"},
        {"role": "assistant", "content": "json"},
    ]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == "json<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")

import pytest
import torch
from transformers import GenerationConfig

from course_lib.generation import PRESETS, generate_text, new_token_ids
from course_lib.profiles import CourseError


def test_every_preset_is_a_valid_generation_config(course_lm):
    _, tokenizer = course_lm
    for name, fields in PRESETS.items():
        config = GenerationConfig(**fields, max_new_tokens=5, eos_token_id=tokenizer.eos_token_id)
        config.validate(strict=True)  # no field the strategy ignores (e.g. a temperature for greedy)
        assert config.do_sample == fields["do_sample"], name


def test_bad_preset_and_length_fail_clearly(course_lm):
    model, tokenizer = course_lm
    with pytest.raises(CourseError, match="choose from"):
        generate_text(model, tokenizer, "Return the", preset="wild")
    with pytest.raises(CourseError, match="max_new_tokens"):
        generate_text(model, tokenizer, "Return the", max_new_tokens=0)


def test_generation_is_repeatable_with_a_seed(course_lm):
    model, tokenizer = course_lm
    first = generate_text(model, tokenizer, "Return the", "creative", max_new_tokens=12, seed=3)
    again = generate_text(model, tokenizer, "Return the", "creative", max_new_tokens=12, seed=3)
    assert first == again and first


def test_new_token_ids_cut_the_prompt_and_stop_at_eos_or_padding(course_lm):
    _, tokenizer = course_lm
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    output = torch.tensor([[pad, 7, 8, 9, eos, pad], [5, 6, 8, 9, 10, 11], [5, 6, eos, pad, pad, pad]])
    assert new_token_ids(output, 2, tokenizer) == [[8, 9], [8, 9, 10, 11], []]


def test_left_padded_batch_matches_single_prompts(course_lm):
    """The recipe chapter 9 writes: left padding lets a batch generate exactly what each prompt alone
    generates (the attention mask hides the padding)."""
    model, tokenizer = course_lm
    prompts = ["The module defines", "Return the", "class Queue"]
    config = GenerationConfig(
        **PRESETS["greedy (no penalty)"],
        max_new_tokens=12,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
    batched = new_token_ids(
        model.generate(**batch, generation_config=config), batch["input_ids"].shape[1], tokenizer
    )
    for prompt, ids in zip(prompts, batched):
        single = tokenizer(prompt, return_tensors="pt")
        alone = model.generate(**single, generation_config=config)
        assert ids == new_token_ids(alone, single["input_ids"].shape[1], tokenizer)[0]

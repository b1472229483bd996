import pytest

from course_lib.generation import PRESETS, compare_presets, generate_text, generation_config
from course_lib.profiles import CourseError


def test_presets_are_valid_generation_configs(course_lm):
    _, tokenizer = course_lm
    for name in PRESETS:
        config = generation_config(name, tokenizer, max_new_tokens=5)
        assert config.eos_token_id == tokenizer.eos_token_id
        assert config.do_sample == PRESETS[name]["do_sample"]


def test_bad_preset_and_length_fail_clearly(course_lm):
    _, tokenizer = course_lm
    with pytest.raises(CourseError, match="choose from"):
        generation_config("wild", tokenizer)
    with pytest.raises(CourseError, match="max_new_tokens"):
        generation_config("greedy", tokenizer, max_new_tokens=0)


def test_generation_is_repeatable_with_a_seed(course_lm):
    model, tokenizer = course_lm
    first = generate_text(model, tokenizer, "Return the", "creative", max_new_tokens=12, seed=3)
    again = generate_text(model, tokenizer, "Return the", "creative", max_new_tokens=12, seed=3)
    assert first == again and first
    rows = compare_presets(model, tokenizer, ["The module"], max_new_tokens=8)
    assert set(rows[0]) == {"prompt", *PRESETS}

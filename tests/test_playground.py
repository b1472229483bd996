"""course_lib.playground: controls from interact-style specs, callbacks driven as a reader would drive
them (the observers run when a control's value changes), the cache, and the static default state
the book shows. The two functions below are the chapters' recipes (01 and 12) on tiny models."""

from __future__ import annotations

import copy
import sys

import ipywidgets as widgets
import pytest
import torch
from conftest import REPO, tiny_llama_config

from course_lib.playground import NOTE, WIDGET_VIEW, Playground, playground

sys.path.insert(0, str(REPO / "tests"))
from page_checks import problems  # noqa: E402


def _echo(prompt="x", preset="a", temperature=0.5, steps=3):
    return f"{prompt}|{preset}|{temperature:g}|{steps}"


def test_controls_follow_the_specs_and_start_at_the_defaults():
    pg = playground(_echo, prompt="hello", preset=["a", "b"], temperature=(0.1, 2.0, 0.1), steps=(1, 9, 1))
    kinds = {name: type(c).__name__ for name, c in pg.controls.items()}
    assert kinds == {
        "prompt": "Text",
        "preset": "Dropdown",
        "temperature": "FloatSlider",
        "steps": "IntSlider",
    }
    assert pg.values() == {"prompt": "hello", "preset": "a", "temperature": 0.5, "steps": 3}
    assert pg.result == "hello|a|0.5|3"
    # debouncing: values are sent on release / Enter, not while dragging or typing
    assert not pg.controls["temperature"].continuous_update
    assert not pg.controls["prompt"].continuous_update
    assert pg.output.value == '<pre style="white-space: pre-wrap">hello|a|0.5|3</pre>'


def test_moving_a_control_calls_the_function_and_caches_the_result():
    pg = playground(_echo, preset=["a", "b"], steps=(1, 9, 1))
    pg.controls["steps"].value = 7  # what a slider's release does: the observer runs
    assert pg.result == "x|a|0.5|7" and "x|a|0.5|7" in pg.output.value
    assert pg.set(preset="b") == "x|b|0.5|7"
    assert pg.calls == 3
    assert pg.set(preset="a", steps=3) == "x|a|0.5|3"  # back to the start: from the cache
    assert pg.calls == 3  # both settings on the way back were computed before


def test_an_existing_control_is_used_as_it_is():
    box = widgets.Checkbox(description="flag")
    pg = Playground(lambda flag=True: f"flag {flag}", {"flag": box})
    assert pg.controls["flag"] is box and box.value is True
    assert pg.set(flag=False) == "flag False"


def test_bad_specs_say_what_to_give():
    with pytest.raises(ValueError, match="not arguments"):
        playground(_echo, colour=["red"])
    with pytest.raises(ValueError, match="outside"):
        playground(_echo, temperature=(1.0, 2.0, 0.1))  # the default 0.5 is below the range
    with pytest.raises(ValueError, match="not one of the choices"):
        playground(_echo, preset=["b", "c"])
    with pytest.raises(ValueError, match="slider"):
        playground(_echo, steps={"a": 1})


def test_an_error_in_the_function_is_shown_not_raised():
    def inverse(x=1):
        return 1 / x

    pg = playground(inverse, x=(0, 4, 1))
    pg.set(x=0)
    assert "ZeroDivisionError" in pg.status.value
    assert pg.result == 1.0  # the last good result stays on screen
    with pytest.raises(ZeroDivisionError):  # but the default state, which the book shows, must work
        playground(lambda x=0: 1 / x, x=[0, 1])


def test_the_static_book_gets_the_default_state_and_jupyter_the_widget():
    pg = playground(_echo, steps=(1, 9, 1), title="Echo")
    pg.set(steps=9)  # moving a slider does not change what the book shows
    bundle = pg._repr_mimebundle_()
    assert bundle[WIDGET_VIEW]["model_id"] == pg.widget.model_id
    assert NOTE in bundle["text/html"] and "x|a|0.5|3" in bundle["text/html"]
    assert "steps = 3" in bundle["text/html"] and "<b>Echo</b>" in bundle["text/html"]
    assert bundle["text/plain"].startswith(NOTE) and "VBox" not in bundle["text/plain"]


def test_dict_results_render_as_a_readable_table():
    pg = playground(lambda r=8: {"trainable parameters": 81920 * r // 8, "scale": 2 / r}, r=[4, 8])
    assert "81,920" in pg.output.value and "<table" in pg.output.value
    assert "scale: 0.25" in pg.static_text()


def _display_data(bundle: dict) -> dict:
    return {
        "cells": [
            {
                "cell_type": "code",
                "source": "playground(...)",
                "outputs": [{"output_type": "display_data", "data": bundle, "metadata": {}}],
            }
        ]
    }


def test_page_checks_flag_bare_widgets_but_not_a_playground():
    bare = widgets.VBox([widgets.IntSlider()])._repr_mimebundle_()  # e.g. a tqdm.auto bar's HBox
    assert any("static fallback" in p for p in problems(_display_data(bare)))
    pg = playground(_echo, steps=(1, 9, 1))
    assert problems(_display_data(pg._repr_mimebundle_())) == []


# --- chapter 1's generation playground, on a tiny random Llama -------------------------------------
@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config(eos_token_id=None, bos_token_id=None)).eval()


def _generate_playground(model):
    from transformers import GenerationConfig

    from course_lib.generation import PRESETS

    def generate_text(prompt, preset="balanced", temperature=0.7, top_p=0.9, max_new_tokens=10):
        settings = dict(PRESETS[preset])
        if settings.get("do_sample"):
            settings |= {"temperature": temperature, "top_p": top_p}
        config = GenerationConfig(**settings, max_new_tokens=max_new_tokens, pad_token_id=0)
        ids = torch.tensor([[ord(c) % 64 for c in prompt]]).to(model.device)
        torch.manual_seed(0)
        new_ids = model.generate(input_ids=ids, generation_config=config)[0, ids.shape[1] :]
        return " ".join(str(i) for i in new_ids.tolist())

    return playground(
        generate_text,
        prompt="def f(",
        preset=["greedy", "balanced", "creative"],
        temperature=(0.1, 2.0, 0.1),
        top_p=(0.1, 1.0, 0.05),
        max_new_tokens=(1, 30, 1),
    )


def test_generation_playground_responds_to_each_control(tiny_lm):
    pg = _generate_playground(tiny_lm)
    default = pg.result
    assert len(default.split()) == 10
    longer = pg.set(max_new_tokens=20)
    assert len(longer.split()) == 20 and longer.startswith(default)  # seeded: the same first tokens
    hot = pg.set(temperature=2.0)
    assert hot != longer  # sampling at another temperature draws other tokens
    greedy = pg.set(preset="greedy")
    assert pg.set(temperature=0.1) == greedy  # greedy decoding ignores the temperature
    assert pg.set(prompt="class A") != greedy


# --- chapter 12's LoRA explorer, on a tiny random Llama ----------------------------------------------
def _lora_playground(model):
    from peft import LoraConfig, get_peft_model

    from course_lib.env import ignore_checkpointing_rename
    from course_lib.models import count_parameters
    from course_lib.peft_methods import train_steps

    generator = torch.Generator().manual_seed(0)
    examples = [
        {"input_ids": ids, "labels": ids}
        for ids in torch.randint(0, 64, (16, 12), generator=generator).tolist()
    ]

    def lora_update(r=8, lora_alpha=16, use_rslora=False, steps=1):
        config = LoraConfig(
            task_type="CAUSAL_LM",
            r=r,
            lora_alpha=lora_alpha,
            use_rslora=use_rslora,
            target_modules="all-linear",
        )
        torch.manual_seed(0)
        with ignore_checkpointing_rename():
            lora_model = get_peft_model(copy.deepcopy(model), config)
        train_steps(lora_model, examples, steps=steps, lr=3e-3, batch_size=8)
        q_proj = lora_model.base_model.model.model.layers[0].self_attn.q_proj
        update = q_proj.get_delta_weight("default")
        return {
            "trainable parameters": count_parameters(lora_model)["trainable"],
            "scale": q_proj.scaling["default"],
            "update": (update.norm() / q_proj.base_layer.weight.norm()).item(),
        }

    return playground(
        lora_update, r=[1, 2, 4, 8, 16], lora_alpha=(1, 64, 1), use_rslora=[False, True], steps=(1, 5, 1)
    )


def test_lora_explorer_rank_doubles_parameters_and_alpha_scales_the_update(tiny_lm):
    pg = _lora_playground(tiny_lm)
    base = pg.result
    assert base["scale"] == 2.0 and base["update"] > 0
    doubled_rank = pg.set(r=16)
    assert doubled_rank["trainable parameters"] == 2 * base["trainable parameters"]
    assert doubled_rank["scale"] == 1.0
    pg.set(r=8)
    doubled_alpha = pg.set(lora_alpha=32)
    assert doubled_alpha["trainable parameters"] == base["trainable parameters"]
    assert doubled_alpha["scale"] == 4.0
    # one Adam step moves B by the same amount whatever the gradient's scale: the update doubles
    assert doubled_alpha["update"] == pytest.approx(2 * base["update"], rel=0.02)
    rslora = pg.set(lora_alpha=16, use_rslora=True)
    assert rslora["scale"] == pytest.approx(16 / 8**0.5)
    assert pg.set(use_rslora=False, steps=3)["update"] != base["update"]  # more steps, another update


def test_the_book_renders_the_static_state_instead_of_the_widget_view():
    import yaml
    from myst_nb.core.render import get_mime_priority

    config = yaml.safe_load((REPO / "_config.yml").read_text())["sphinx"]["config"]
    overrides = [tuple(o) for o in config["nb_mime_priority_overrides"]]
    for builder in ("html", "dirhtml"):
        priority = get_mime_priority(builder, overrides)
        assert WIDGET_VIEW not in priority and "text/html" in priority
    assert config["nb_ipywidgets_js"] == {}  # no CDN script for widgets nobody shows

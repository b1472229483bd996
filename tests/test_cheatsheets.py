"""The cheat sheets read the installed libraries; every listed name must exist and every rename must hold."""

import dataclasses
import logging
import warnings

import pytest

from course_lib import cheatsheets
from course_lib.profiles import CourseError


@pytest.mark.parametrize("name", sorted(cheatsheets.SHEETS))
def test_every_listed_argument_exists_in_the_installed_library(name):
    rows = cheatsheets.cheatsheet(name)
    assert [r["argument"] for r in rows] == list(cheatsheets.SHEETS[name].arguments)
    assert all(r["what it does"] for r in rows)


def test_a_removed_argument_or_class_fails_loudly(monkeypatch):
    sheet = cheatsheets.SHEETS["LoraConfig"]
    monkeypatch.setitem(
        cheatsheets.SHEETS,
        "LoraConfig",
        dataclasses.replace(sheet, arguments={**sheet.arguments, "lora_rank": "old name"}),
    )
    with pytest.raises(CourseError, match="lora_rank"):
        cheatsheets.cheatsheet("LoraConfig")
    monkeypatch.setitem(cheatsheets.SHEETS, "Gone", cheatsheets.Sheet("peft", "NoSuchConfig", {"r": ""}))
    with pytest.raises(CourseError, match="NoSuchConfig"):
        cheatsheets.cheatsheet("Gone")
    with pytest.raises(CourseError, match="choose from"):
        cheatsheets.cheatsheet("NotASheet")


def test_defaults_are_the_library_defaults():
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig, GenerationConfig, TrainingArguments

    def shown(name):
        return {r["argument"]: r["default"] for r in cheatsheets.cheatsheet(name)}

    args = TrainingArguments(output_dir="unused", report_to="none")
    for argument, default in shown("TrainingArguments").items():
        if argument not in ("output_dir", "activation_checkpointing", "report_to"):  # resolved at run time
            value = getattr(args, argument)
            value = getattr(value, "value", value)
            assert default == (repr(value) if isinstance(value, str) else str(value)), argument
    lora = LoraConfig()
    assert shown("LoraConfig")["r"] == str(lora.r) and shown("LoraConfig")["lora_alpha"] == str(
        lora.lora_alpha
    )
    applied = GenerationConfig._get_default_generation_params()
    assert shown("GenerationConfig")["temperature"] == str(applied["temperature"])
    assert shown("GenerationConfig")["top_k"] == str(applied["top_k"])
    bnb = BitsAndBytesConfig()
    assert shown("BitsAndBytesConfig")["bnb_4bit_quant_type"] == repr(bnb.bnb_4bit_quant_type)
    assert shown("BitsAndBytesConfig")["llm_int8_threshold"] == str(bnb.llm_int8_threshold)


def test_auto_classes_read_the_mappings():
    rows = {r["class"]: r for r in cheatsheets.auto_classes()}
    assert rows["AutoModelForCausalLM"]["llama"] == "LlamaForCausalLM"
    assert rows["AutoModelForSequenceClassification"]["bert"] == "BertForSequenceClassification"
    assert rows["AutoModelForMaskedLM"]["llama"] == "-"
    assert rows["AutoTokenizer"]["llama"] == "(any)"


def test_argument_counts():
    for row in cheatsheets.argument_counts():
        assert 0 < row["listed here"] <= row["arguments in the library"]


@pytest.mark.parametrize("rename", cheatsheets.RENAMES, ids=lambda r: r.old_name)
def test_every_rename_holds_in_the_installed_library(rename):
    """The old spelling is rejected, deprecated or absent; the new one is accepted."""
    row = cheatsheets.verify_rename(rename)
    assert row["old status"] in ("rejected", "deprecated", "absent"), row
    assert row["new status"] == "accepted", row
    assert row["verified"] is True


def test_call_outcome_classifies():
    assert cheatsheets.call_outcome(lambda: 1) == ("accepted", "")
    status, detail = cheatsheets.call_outcome(lambda: int("x"))
    assert status == "rejected" and detail.startswith("ValueError:")
    assert cheatsheets.call_outcome(lambda: cheatsheets.ABSENT)[0] == "absent"

    def warns():
        warnings.warn("old_name is deprecated", FutureWarning)

    assert cheatsheets.call_outcome(warns)[0] == "deprecated"

    def logs():
        logging.getLogger("transformers.some_module").warning("`x` is deprecated! Use `y`")

    assert cheatsheets.call_outcome(logs) == ("deprecated", "`x` is deprecated! Use `y`")


def test_a_rename_that_does_not_hold_is_reported():
    still_works = cheatsheets.Rename("x", "old", "new", lambda: 1, lambda: 1)
    assert cheatsheets.verify_rename(still_works)["verified"] is False
    new_broken = cheatsheets.Rename("x", "old", "new", lambda: cheatsheets.ABSENT, lambda: 1 / 0)
    row = cheatsheets.verify_rename(new_broken)
    assert row["verified"] is False and row["new status"].startswith("rejected")


def test_find_rename():
    assert cheatsheets.find_rename("evaluation_strategy").new_name == "eval_strategy="
    with pytest.raises(CourseError):
        cheatsheets.find_rename("nothing_like_this")

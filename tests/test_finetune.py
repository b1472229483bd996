import copy
import warnings

import pytest
import torch
from datasets import Dataset

from course_lib import finetune as ft
from course_lib.env import ignore_checkpointing_rename
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def module_rows():
    train = ft.task_rows("sft-data", ("train",), task="module")
    return train, ft.frequent_answers(train, 3)


def _sft_rows(pairs):
    return Dataset.from_list(
        [
            {
                "instruction": q,
                "input": "",
                "output": a,
                "task": "module",
                "source": f"{a}.{q}",
                "corpus_split": split,
            }
            for q, a, split in pairs
        ]
    )


def test_adapter_round_trip_and_merge_keep_outputs(course_lm, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tokenizer = course_lm
    with ignore_checkpointing_rename():
        peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(target_modules="all-linear"))
    with torch.no_grad():  # move the adapters away from their zero-initialised B matrices
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    texts = ["Return the", "class Queue"]
    assert ft.max_logit_difference(peft_model, model, tokenizer, texts) > 1e-3
    peft_model.save_pretrained(tmp_path)
    names = [row["file"] for row in ft.saved_files(tmp_path)]
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    with ignore_checkpointing_rename():
        reloaded = PeftModel.from_pretrained(copy.deepcopy(model), tmp_path)
    assert ft.max_logit_difference(peft_model, reloaded, tokenizer, texts) == 0.0
    merged = reloaded.merge_and_unload()
    assert ft.max_logit_difference(peft_model, merged, tokenizer, texts) < 1e-4
    with pytest.raises(CourseError, match="no files"):
        ft.saved_files(tmp_path / "missing")


def test_shared_defaults_make_cpu_safe_configs(tmp_path):
    """What the chapters write: SFTConfig(..., **TRL_DEFAULTS, **device_flags()), and DPOConfig alike."""
    from trl import DPOConfig, SFTConfig

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FutureWarning from TRL's gradient_checkpointing default
        sft = SFTConfig(
            output_dir=str(tmp_path),
            max_steps=3,
            activation_checkpointing=False,
            **ft.device_flags("cpu"),
            **ft.TRL_DEFAULTS,
        )
        dpo = DPOConfig(
            output_dir=str(tmp_path),
            beta=0.2,
            activation_checkpointing=False,
            **ft.device_flags("cpu"),
            **ft.TRL_DEFAULTS,
        )
    for config in (sft, dpo):
        assert config.bf16 is False and config.activation_checkpointing is False
        assert config.gradient_checkpointing is False and config.report_to in ([], "none", ["none"])
        assert config.seed == 0 and config.lr_scheduler_type == "constant"
    assert sft.max_steps == 3 and dpo.beta == 0.2


def test_device_flags():
    assert ft.device_flags("cpu") == {"bf16": False, "fp16": False, "dataloader_pin_memory": False}


def test_select_rows_filters(module_rows):
    train, top = module_rows
    assert len(top) == 3 and top[0] == "inspect"
    narrowed = ft.select_rows(train, answers=top, corpus_split="train", max_answer_chars=20, limit=10)
    assert 0 < len(narrowed) <= 10
    assert all(r["output"] in top and r["corpus_split"] == "train" for r in narrowed)
    with pytest.raises(CourseError, match="Unknown task"):
        ft.select_rows(train, task="poetry")
    with pytest.raises(CourseError, match="No rows left"):
        ft.select_rows(train, answers=["no-such-module"])
    held = ft.task_rows("sft-data", ("validation", "test"), task="module", answers=top)
    assert not set(held["source"]) & set(train["source"])  # held-out functions are unseen in training
    prefs = ft.task_rows("preference-data", "train", task="module", answers=top, limit=5)
    assert len(prefs) == 5 and all(r["chosen"] in top for r in prefs)
    with pytest.raises(CourseError, match="k must be"):
        ft.frequent_answers(train, 0)


def test_formats_for_trl(course_lm):
    _, tokenizer = course_lm
    rows = _sft_rows([("Which module defines `dumps`?", "json", "train")])
    plain = ft.sft_dataset(rows)[0]
    assert plain == {"prompt": "Question: Which module defines `dumps`?\nAnswer:", "completion": " json"}
    chat = ft.sft_dataset(rows, style="chat")[0]
    assert chat["prompt"] == [{"role": "user", "content": "Which module defines `dumps`?"}]
    assert chat["completion"] == [{"role": "assistant", "content": "json"}]
    prefs = Dataset.from_list(
        [
            {
                "prompt": "Q?",
                "chosen": "a",
                "rejected": "b",
                "task": "module",
                "source": "x",
                "corpus_split": "train",
            }
        ]
    )
    assert ft.preference_dataset(prefs)[0] == {
        "prompt": "Question: Q?\nAnswer:",
        "chosen": " a",
        "rejected": " b",
    }
    assert ft.instruction_text({"instruction": "Sum", "input": "1 2"}) == "Sum\n\n1 2"
    with pytest.raises(CourseError, match="style"):
        ft.format_prompt("x", "markdown")
    chat_ids = ft.prompt_ids(tokenizer, "Hi", "chat")
    base = copy.deepcopy(tokenizer)
    base.chat_template = None  # a base model's tokenizer: chat prompts are an error, not plain ones
    with pytest.raises(CourseError, match="has none.*chat_template"):
        ft.prompt_ids(base, "Hi", "chat")
    assert chat_ids[-3:] == tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"][-3:]
    assert ft.stop_token_ids(tokenizer) == [
        tokenizer.eos_token_id,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]


def test_generate_answers_is_greedy_and_batch_independent(course_lm):
    model, tokenizer = course_lm
    texts = ["Which module defines `dumps`?", "What are the parameters of `os.path.join`?", "Hi"]
    batched = ft.generate_answers(model, tokenizer, texts, max_new_tokens=5)
    single = [ft.generate_answers(model, tokenizer, [t], max_new_tokens=5)[0] for t in texts]
    assert batched == single and all(isinstance(a, str) for a in batched)
    with pytest.raises(CourseError, match="max_new_tokens"):
        ft.generate_answers(model, tokenizer, texts, max_new_tokens=0)


def test_scores_and_tables(course_lm):
    model, tokenizer = course_lm
    rows = _sft_rows(
        [
            ("Which module defines `dumps`?", "json", "train"),
            ("Which module defines `join`?", "os.path", "validation"),
        ]
    )
    score = ft.exact_match_score(model, tokenizer, rows, max_new_tokens=4)
    assert score["n"] == 2 and score["exact_match"] == 0.0  # the pretrained LM does not answer questions
    by_split = ft.exact_match_by(rows, ["json", "posixpath"])
    assert by_split == [
        {"corpus_split": "train", "n": 1, "exact_match": 1.0},
        {"corpus_split": "validation", "n": 1, "exact_match": 0.0},
    ]
    assert ft.majority_exact_match(rows, rows)["exact_match"] == 0.5
    table = ft.answers_table(rows, {"model": ["json", "os"]})
    assert table[0]["model"] == "✓ json" and table[1]["model"] == "✗ os"
    with pytest.raises(ValueError, match="1 predictions for 2"):
        ft.exact_match_by(rows, ["json"])


def test_completion_logprob_matches_a_manual_sum(course_lm):
    model, tokenizer = course_lm
    value = ft.completion_logprob(model, tokenizer, "Which module defines `dumps`?", "json")
    prompt = tokenizer("Question: Which module defines `dumps`?\nAnswer:")["input_ids"]
    full = tokenizer("Question: Which module defines `dumps`?\nAnswer: json<|eos|>")["input_ids"]
    assert full[: len(prompt)] == prompt
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
    manual = sum(logits[i - 1, full[i]].item() for i in range(len(prompt), len(full)))
    assert value == pytest.approx(manual, abs=1e-4)
    assert ft.completion_logprob(model, tokenizer, "Hi", "json", style="chat") < 0


def test_sft_and_dpo_train_and_report(course_lm, tmp_path):
    """A few real optimizer steps through TRL, under the strict warning filters of the test suite."""
    from peft import LoraConfig, get_peft_model
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    model, tokenizer = course_lm

    def with_lora():
        with ignore_checkpointing_rename():
            return get_peft_model(copy.deepcopy(model), LoraConfig(target_modules="all-linear"))

    top = ft.frequent_answers(ft.task_rows("sft-data", "train", task="module"), 3)
    train = ft.task_rows("sft-data", "train", task="module", answers=top, limit=16)
    settings = {
        "max_steps": 2,
        "disable_tqdm": True,
        "per_device_train_batch_size": 8,
        "max_length": 128,
        "activation_checkpointing": False,
        **ft.device_flags(),
        **ft.TRL_DEFAULTS,
    }
    sft = SFTTrainer(
        model=with_lora(),
        processing_class=tokenizer,
        args=SFTConfig(output_dir=str(tmp_path / "sft"), **settings),
        train_dataset=ft.sft_dataset(train),
    )
    shown = ft.loss_text(tokenizer, sft.train_dataset[0])
    assert (
        shown["text"].startswith("Question: ") and shown["text_with_loss"] == f" {train[0]['output']}<|eos|>"
    )
    with pytest.raises(CourseError, match="labels"):
        ft.loss_text(tokenizer, {"input_ids": [1, 2]})
    with ignore_checkpointing_rename():
        result = sft.train()
    assert result.global_step == 2 and result.training_loss > 0
    pairs = ft.task_rows("preference-data", "train", task="module", answers=top, limit=8)
    dpo = DPOTrainer(
        model=with_lora(),
        processing_class=tokenizer,
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), **settings, learning_rate=1e-3),
        train_dataset=ft.preference_dataset(pairs),
        eval_dataset=ft.preference_dataset(pairs),
    )
    before = ft.reward_metrics(dpo)
    assert before == {
        "reward_accuracy": 0.0,
        "reward_margin": 0.0,
        "chosen_reward": 0.0,
        "rejected_reward": 0.0,
    }
    with ignore_checkpointing_rename():
        dpo.train()
    after = ft.reward_metrics(dpo)
    assert after["reward_margin"] > 0
    with pytest.raises(CourseError, match="eval_dataset"):
        ft.reward_metrics(sft)
    with pytest.raises(CourseError, match="needs a DPOTrainer"):
        ft.reward_metrics(sft, ft.sft_dataset(train))


def test_group_tables():
    rows = _sft_rows([("q1", "json", "train"), ("q2", "os", "train"), ("q3", "re", "test")])
    assert ft.is_correct(["json", " os", "x"], rows["output"]) == [True, True, False]
    by = ft.exact_match_by(rows, ["json", "x", "re"], column="seen", groups=[True, False, False])
    assert by == [{"seen": False, "n": 2, "exact_match": 0.5}, {"seen": True, "n": 1, "exact_match": 1.0}]
    pivot = ft.exact_match_table(
        rows,
        {"a": ["json", "os", "re"], "b": ["x", "os", "x"]},
        groups=["g1", "g1", "g2"],
        difference=("a", "b"),
    )
    assert pivot == [
        {"group": "g1", "n": 2, "a": 1.0, "b": 0.5, "a - b": 0.5},
        {"group": "g2", "n": 1, "a": 1.0, "b": 0.0, "a - b": 1.0},
    ]
    with pytest.raises(CourseError, match="difference"):
        ft.exact_match_table(rows, {"a": ["json"] * 3}, groups=[1, 1, 1], difference=("a", "c"))
    with pytest.raises(ValueError, match="2 group labels"):
        ft.exact_match_by(rows, ["json"] * 3, groups=[1, 2])
    counts = ft.count_by(rows, "corpus_split")
    assert counts == [{"corpus_split": "train", "rows": 2}, {"corpus_split": "test", "rows": 1}]
    with pytest.raises(CourseError, match="missing"):
        ft.count_by(rows, "colour")


def test_corpus_knowledge_helpers(course_lm):
    from course_lib.assets.pretrain import new_model

    model, tokenizer = course_lm
    train = ft.task_rows("sft-data", "train", task="module")
    row = train[0]
    name = ft.function_name(row)
    assert f"{row['output']}.{name}" == row["source"]
    with pytest.raises(CourseError, match="module"):
        ft.function_name({"task": "summary", "source": "a.b", "output": "text"})
    mentions = ft.corpus_mentions(f"function {row['source']}(")
    assert mentions and mentions[0]["corpus_split"] == row["corpus_split"]
    assert ft.corpus_mentions("no such text anywhere \u2603") == []
    modules = ft.frequent_answers(train, 8)
    held = ft.task_rows("sft-data", ("validation", "test"), task="module", answers=modules)
    pretrained = ft.module_probe(model, tokenizer, held, modules)
    untrained = ft.module_probe(new_model(tokenizer), tokenizer, held, modules)
    assert pretrained["chance"] == 0.125 and len(pretrained["predictions"]) == len(held)
    # the pretrained LM places held-out functions in their module far above chance; random init does not
    assert pretrained["accuracy"] > 2 * pretrained["chance"] > untrained["accuracy"]
    scores = ft.module_scores(model, tokenizer, ft.function_name(held[0]), modules)
    assert len(scores) == len(modules) and all(score < 0 for score in scores)
    assert modules[scores.index(max(scores))] == pretrained["predictions"][0]
    with pytest.raises(CourseError, match="template"):
        ft.module_probe(model, tokenizer, held, modules, template="{name} in {module}")


class _Fed(Exception):
    """Raised by :class:`_Recorder` with the devices of the tensors it was given."""


class _Recorder(torch.nn.Module):
    """A model that says it lives on the ``meta`` device and reports where its inputs are."""

    device = torch.device("meta")

    def forward(self, **inputs):
        raise _Fed({value.device.type for value in inputs.values() if isinstance(value, torch.Tensor)})

    generate = forward


@pytest.mark.parametrize(
    "helper", ["generate_answers", "completion_logprob", "module_scores", "max_logit_difference"]
)
def test_inputs_go_to_the_model_device(course_lm, helper):
    """Issue 15: every tensor these helpers build for a model is created on ``model.device``."""
    _, tokenizer = course_lm
    calls = {
        "generate_answers": lambda m: ft.generate_answers(m, tokenizer, ["Which module?"]),
        "completion_logprob": lambda m: ft.completion_logprob(m, tokenizer, "Which module?", "json"),
        "module_scores": lambda m: ft.module_scores(m, tokenizer, "dumps", ["json", "pickle"]),
        "max_logit_difference": lambda m: ft.max_logit_difference(m, m, tokenizer, ["Return the"]),
    }
    with pytest.raises(_Fed) as fed:
        calls[helper](_Recorder())
    assert fed.value.args[0] == {"meta"}


def _keywords(tree, call_name: str) -> dict:
    """The literal keyword arguments of the first call to ``call_name`` in ``tree``."""
    import ast

    call = next(
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == call_name
    )
    values = {}
    for keyword in call.keywords:
        try:
            values[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:  # a name or a call: compared as written
            values[keyword.arg] = ("expr", ast.unparse(keyword.value))
    return values


def test_lora_sft_is_chapter_8s_recipe():
    """ft.lora_sft (chapter 9 calls it) keeps the settings chapter 8 §8.3 writes on its page."""
    import ast
    import inspect
    import json
    from pathlib import Path

    notebook = Path(__file__).parents[1] / "notebooks" / "08_sft_lora.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    page = next("".join(c["source"]) for c in cells if "def sft_lora(seed)" in "".join(c["source"]))
    page_tree, lib_tree = ast.parse(page), ast.parse(inspect.getsource(ft.lora_sft).lstrip())
    for call in ("LoraConfig", "SFTConfig"):
        on_page, in_lib = _keywords(page_tree, call), _keywords(lib_tree, call)
        # literal settings, and bf16's rule; not the page's own names (on_gpu, workdir, seed)
        recipe = {k: v for k, v in on_page.items() if not isinstance(v, tuple) or k == "bf16"}
        assert {k: in_lib.get(k) for k in recipe} == recipe, call


def test_lora_sft_trains_a_copy(course_lm, tmp_path):
    """Eight real steps on a copy: the pretrained model is untouched, the merged one differs."""
    model, tokenizer = course_lm
    top = ft.frequent_answers(ft.task_rows("sft-data", "train", task="module"), 3)
    train = ft.task_rows("sft-data", "train", task="module", answers=top, limit=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lora_model, result = ft.lora_sft(model, tokenizer, train, seed=0, output_dir=tmp_path)
    assert result.global_step == 8 and result.training_loss > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    merged = lora_model.merge_and_unload()
    texts = ["The module defines"]
    assert ft.max_logit_difference(merged, model, tokenizer, texts) > 0

import copy

import torch

from course_lib import finetune as ft
from course_lib.env import ignore_checkpointing_rename
from course_lib.exercises import ch05

# --- chapter 5 -----------------------------------------------------------------------------------


def _lora(model, **settings):
    from peft import LoraConfig, get_peft_model

    with ignore_checkpointing_rename():
        return get_peft_model(copy.deepcopy(model), LoraConfig(task_type="CAUSAL_LM", **settings))


def test_lora_targets_check(course_lm):
    model, _ = course_lm
    good = _lora(model, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    feedback = ch05.check_lora_targets(good)
    assert feedback.passed and "%" in feedback.message
    wide = _lora(model, r=4, target_modules="all-linear")
    assert "q_proj" in ch05.check_lora_targets(wide).message and not ch05.check_lora_targets(wide).passed
    assert "rank" in ch05.check_lora_targets(_lora(model, r=8, target_modules=["q_proj", "v_proj"])).message
    assert not ch05.check_lora_targets(model).passed


def test_dpo_loss_check():
    def right(pc, pr, rc, rr, beta):
        return -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()

    def no_beta(pc, pr, rc, rr, beta):
        return -torch.nn.functional.logsigmoid((pc - rc) - (pr - rr)).mean()

    def per_pair(pc, pr, rc, rr, beta):
        return -torch.nn.functional.logsigmoid(beta * ((pc - rc) - (pr - rr)))

    assert ch05.check_dpo_loss(right).passed
    assert "beta=0.1" in ch05.check_dpo_loss(no_beta).message
    assert "average" in ch05.check_dpo_loss(per_pair).message


def test_reward_margin_check(course_lm):
    model, tokenizer = course_lm
    policy = copy.deepcopy(model)
    with torch.no_grad():
        policy.lm_head.weight.add_(0.01 * torch.randn_like(policy.lm_head.weight))
    pairs = [{"prompt": "Which module defines `dumps`?", "chosen": "json", "rejected": "pickle"}]

    def right(policy, reference, tokenizer, prompt, chosen, rejected, beta):
        def reward(answer):
            return beta * (
                ft.completion_logprob(policy, tokenizer, prompt, answer)
                - ft.completion_logprob(reference, tokenizer, prompt, answer)
            )

        return reward(chosen) - reward(rejected)

    def without_reference(policy, reference, tokenizer, prompt, chosen, rejected, beta):
        return beta * (
            ft.completion_logprob(policy, tokenizer, prompt, chosen)
            - ft.completion_logprob(policy, tokenizer, prompt, rejected)
        )

    assert ch05.check_reward_margin(right, policy, model, tokenizer, pairs).passed
    assert not ch05.check_reward_margin(without_reference, policy, model, tokenizer, pairs).passed


# --- chapter 8 -----------------------------------------------------------------------------------


def test_seen_share_check():
    from course_lib.exercises import ch08

    rows = ft.task_rows("sft-data", ("validation", "test"), task="signature")
    share = sum(s == "train" for s in rows["corpus_split"]) / len(rows)
    assert ch08.check_seen_share(share).passed
    assert not ch08.check_seen_share(1.0).passed


def test_chat_dataset_check(course_lm):
    from course_lib.exercises import ch08

    _, tokenizer = course_lm
    rows = ft.task_rows("sft-data", "train", task="module", limit=5)
    assert ch08.check_chat_dataset(ft.sft_dataset(rows, style="chat"), rows, tokenizer).passed
    plain = ch08.check_chat_dataset(ft.sft_dataset(rows), rows, tokenizer)
    assert not plain.passed and "user" in plain.message
    assert "columns" in ch08.check_chat_dataset(rows, rows, tokenizer).message


def test_module_scores_check(course_lm):
    from course_lib.exercises import ch08

    model, tokenizer = course_lm
    modules = ft.frequent_answers(ft.task_rows("sft-data", "train", task="module"), 4)
    held = ft.task_rows("sft-data", ("validation", "test"), task="module", answers=modules)

    def right(model, tokenizer, name, modules):
        scores = []
        for module in modules:
            prefix = tokenizer(f"function {module}.")["input_ids"]
            full = tokenizer(f"function {module}.{name}(")["input_ids"]
            start = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), len(prefix))
            with torch.no_grad():
                log_probs = (
                    model(input_ids=torch.tensor([full], device=model.device)).logits[0].log_softmax(-1)
                )
            scores.append(sum(log_probs[i - 1, full[i]].item() for i in range(start, len(full))))
        return scores

    def whole_text(model, tokenizer, name, modules):
        scores = []
        for module in modules:
            full = tokenizer(f"function {module}.{name}(")["input_ids"]
            with torch.no_grad():
                log_probs = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
            scores.append(sum(log_probs[i - 1, full[i]].item() for i in range(1, len(full))))
        return scores

    assert ch08.check_module_scores(right, model, tokenizer, held, modules).passed
    wrong = ch08.check_module_scores(whole_text, model, tokenizer, held, modules)
    assert not wrong.passed and "prefix included" in wrong.message
    short = ch08.check_module_scores(lambda m, t, n, mods: [0.0], model, tokenizer, held, modules)
    assert not short.passed and "one per module" in short.message


# --- chapter 4 -----------------------------------------------------------------------------------


def test_card_data_check():
    from huggingface_hub import EvalResult, ModelCardData

    from course_lib.exercises import ch04

    def card(value, **overrides):
        fields = dict(
            model_name="m",
            license="mit",
            language="en",
            library_name="transformers",
            eval_results=[
                EvalResult(
                    task_type="text-generation",
                    dataset_type="d",
                    dataset_name="d",
                    metric_type="perplexity",
                    metric_value=value,
                )
            ],
        )
        return ModelCardData(**(fields | overrides))

    assert ch04.check_card_data(card(156.09), 156.09).passed
    assert "never a typed one" in ch04.check_card_data(card(150.0), 156.09).message
    assert "library_name" in ch04.check_card_data(card(156.09, library_name="peft"), 156.09).message
    assert not ch04.check_card_data({"license": "mit"}, 1.0).passed


def test_revision_files_check(course_lm, tmp_path):
    import shutil

    from course_lib import sharing
    from course_lib.exercises import ch04

    model, tokenizer = course_lm
    repo = tmp_path / "repo"
    model.save_pretrained(repo)
    tokenizer.save_pretrained(repo)
    sharing.commit_folder(repo, "one", tag="v1.0")
    (repo / "config.json").write_text(
        (repo / "config.json").read_text().replace('"hidden_act"', '"hidden_act" ')
    )
    sharing.commit_folder(repo, "two", tag="v2.0")
    good = sharing.checkout_revision(repo, "v1.0", tmp_path / "good")
    assert ch04.check_revision_files(good, repo, "v1.0").passed
    latest = tmp_path / "latest"
    shutil.copytree(repo, latest, ignore=shutil.ignore_patterns(".git"))
    assert "latest commit" in ch04.check_revision_files(latest, repo, "v1.0").message
    assert not ch04.check_revision_files(tmp_path / "missing", repo).passed


def test_next_tokens_app_check(course_lm):
    import gradio as gr

    from course_lib.exercises import ch04

    model, tokenizer = course_lm

    def next_tokens(prompt):
        with torch.no_grad():
            logits = model(**tokenizer(prompt, return_tensors="pt").to(model.device)).logits[0, -1]
        probabilities, ids = logits.softmax(-1).topk(5)
        return [
            {"token": tokenizer.decode([int(i)]), "probability": float(p)} for p, i in zip(probabilities, ids)
        ]

    good = gr.Interface(next_tokens, gr.Textbox(), gr.JSON(), api_name="next_tokens", analytics_enabled=False)
    assert ch04.check_next_tokens_app(good, model, tokenizer).passed
    misnamed = gr.Interface(next_tokens, gr.Textbox(), gr.JSON(), api_name="predict", analytics_enabled=False)
    assert "api_name='next_tokens'" in ch04.check_next_tokens_app(misnamed, model, tokenizer).message

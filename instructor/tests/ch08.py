"""Hidden tests for chapter 8 (SFT with LoRA). One point per test; each test is self-contained
(the grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_value(answer):
    """the share of held-out signature rows whose documentation is in the pretraining split"""
    from course_lib import finetune as ft

    rows = ft.task_rows("sft-data", ("validation", "test"), task="signature", profile="offline")
    expected = sum(split == "train" for split in rows["corpus_split"]) / len(rows)
    assert abs(float(answer) - expected) < 1e-9, f"{answer} is not the share, {expected:.4f}"


def test_ex2_conversational_rows(chat_rows, train_rows):
    """one user message and one assistant message per row, only prompt and completion columns"""
    assert sorted(chat_rows.column_names) == ["completion", "prompt"], (
        f"columns {chat_rows.column_names}: keep prompt and completion only"
    )
    assert len(chat_rows) == len(train_rows), "one chat row per training row"
    for chat, row in zip(chat_rows, train_rows):
        assert chat["prompt"] == [{"role": "user", "content": row["instruction"]}], (
            "the prompt is a list holding one user message with the instruction"
        )
        assert chat["completion"] == [{"role": "assistant", "content": row["output"]}], (
            "the completion is a list holding one assistant message with the output"
        )


def test_ex3_other_model_and_modules(module_scores):
    """on the course LM, another name and other modules: the summed log-probabilities"""
    import torch

    from course_lib.models import load_model, load_tokenizer

    model, tokenizer = load_model("causal-lm").eval(), load_tokenizer("causal-lm")
    name, modules = "loads", ["json", "pickle", "marshal"]
    expected = []
    for module in modules:
        prefix = tokenizer(f"function {module}.")["input_ids"]
        full = tokenizer(f"function {module}.{name}(")["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(prefix, full)) if a != b), len(prefix))
        with torch.no_grad():
            log_probs = model(input_ids=torch.tensor([full])).logits[0].log_softmax(-1)
        expected.append(sum(log_probs[i - 1, full[i]].item() for i in range(start, len(full))))
    got = [float(score) for score in module_scores(model, tokenizer, name, modules)]
    assert len(got) == len(modules), f"{len(got)} scores for {len(modules)} modules"
    assert all(abs(g - e) < 1e-3 for g, e in zip(got, expected)), (
        f"scores {[round(g, 3) for g in got]}, expected {[round(e, 3) for e in expected]}"
    )

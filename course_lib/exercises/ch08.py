"""Checks for chapter 8 (supervised fine-tuning with LoRA)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..finetune import PROBE_TEMPLATE, function_name, sft_dataset, task_rows
from ..finetune import module_scores as reference_scores
from . import Feedback, verdict


def check_seen_share(answer: float, task: str = "signature") -> Feedback:
    """Easy: the share of held-out (validation + test) rows of ``task`` whose document the pretraining
    corpus's train split contains (``corpus_split == "train"``). The course's own rows under
    either profile: only they record the corpus split."""
    rows = task_rows("sft-data", ("validation", "test"), task=task, profile="offline")
    seen = sum(split == "train" for split in rows["corpus_split"])
    expected = seen / len(rows)
    if abs(float(answer) - expected) < 5e-3:
        return Feedback(
            True,
            f"{seen} of {len(rows)} held-out {task!r} rows ({expected:.1%}) were in pretraining.",
        )
    return Feedback(
        False,
        f"{answer} is not the share; filter task == {task!r} in the validation and test "
        "splits, then count corpus_split == 'train'.",
    )


def check_chat_dataset(dataset, rows, tokenizer) -> Feedback:
    """Medium: ``dataset`` turns sft-data ``rows`` into TRL's conversational prompt/completion format
    (a user message and an assistant message), rendering through the chat template."""
    problems = []
    if sorted(dataset.column_names) != ["completion", "prompt"]:
        return Feedback(
            False,
            f"columns are {dataset.column_names}; keep exactly 'prompt' and 'completion' "
            "(remove_columns=rows.column_names).",
        )
    reference = sft_dataset(rows, style="chat")
    if len(dataset) != len(reference):
        problems.append(f"{len(dataset)} rows for {len(reference)} inputs.")
    else:
        for got, expected in zip(dataset, reference):
            if got != expected:
                problems.append(
                    f"row {got!r} should be {expected!r}: the prompt is a list with one "
                    "{'role': 'user', 'content': instruction}, the completion one assistant message."
                )
                break
    if not problems:
        first = dataset[0]
        text = tokenizer.apply_chat_template(first["prompt"] + first["completion"], tokenize=False)
        if not text.rstrip().endswith(first["completion"][0]["content"] + "<|im_end|>"):
            problems.append(
                f"the chat template renders {text!r}; the answer should close the assistant turn."
            )
    return verdict(
        problems,
        "conversational rows: TRL applies the chat template, loss on the answer only.",
    )


def _sequence_logprob(model, tokenizer, text: str, start: int) -> float:
    """Summed log-probabilities of the tokens of ``text`` from position ``start`` on."""
    ids = tokenizer(text)["input_ids"]
    inputs = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        log_probs = model(input_ids=inputs).logits[0].float().log_softmax(-1)
    return sum(log_probs[i - 1, ids[i]].item() for i in range(max(start, 1), len(ids)))


def check_module_scores(
    module_scores: Callable, model, tokenizer, rows, modules: list[str], limit: int = 3
) -> Feedback:
    """Hard: ``module_scores(model, tokenizer, name, modules)`` returns, for each module, the summed
    log-probability of ``name + "("`` after ``"function <module>."``: the zero-shot probe of 8.2."""
    problems = []
    for row in rows.select(range(min(limit, len(rows)))):
        name = function_name(row)
        expected = reference_scores(model, tokenizer, name, modules)
        got = [float(score) for score in module_scores(model, tokenizer, name, modules)]
        if len(got) != len(modules):
            return Feedback(
                False, f"{len(got)} scores for {len(modules)} modules: return one per module, in order."
            )
        if all(abs(g - e) <= 1e-3 * max(1.0, abs(e)) for g, e in zip(got, expected)):
            continue
        whole = [
            _sequence_logprob(model, tokenizer, PROBE_TEMPLATE.format(module=m, name=name), 1)
            for m in modules
        ]
        if all(abs(g - w) <= 1e-3 * max(1.0, abs(w)) for g, w in zip(got, whole)):
            problems.append(
                "you scored the whole text, prefix included: a frequent module then wins for "
                "its own sake. Sum only the tokens after 'function <module>.'."
            )
        else:
            problems.append(
                f"for {name!r} expected {[round(e, 3) for e in expected]}, got "
                f"{[round(g, 3) for g in got]}. Tokenise the prefix and the whole text apart and "
                "score from the first position where the two token lists differ (BPE can "
                "merge the '.' into the name's first token)."
            )
        break
    return verdict(
        problems,
        f"matches the probe of 8.2 on {min(limit, len(rows))} held-out functions.",
    )

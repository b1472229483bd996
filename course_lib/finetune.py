"""Fine-tuning with peft and TRL: shared settings for the course's SFT and DPO runs, the course's
two prompt formats, data selection, greedy answering for exact match, and DPO's reward metrics.

The chapters write the peft and TRL calls themselves; this module holds what is not the lesson::

    train_rows = task_rows("sft-data", ("train",), task="module")
    held_out = task_rows("sft-data", ("validation", "test"), task="module")
    args = SFTConfig(output_dir="out", max_steps=80, learning_rate=1e-3,
                     activation_checkpointing=False, **device_flags(), **TRL_DEFAULTS)
    trainer = SFTTrainer(model=get_peft_model(model, LoraConfig(...)), args=args,
                         train_dataset=sft_dataset(train_rows), processing_class=tokenizer)
    trainer.train()
    exact_match_score(trainer.model, tokenizer, held_out)["exact_match"]

Prompts come in exactly two formats, because TRL accepts two kinds of rows. ``"plain"`` (the
default) writes ``"Question: ...\\nAnswer:"`` and the answer as text (TRL appends the eos token): it
works with any tokenizer, including a base model's that has no chat template. ``"chat"`` writes the
prompt as a user message and the answer as an assistant message, and TRL renders both with the
tokenizer's chat template: what a chat model was trained to read. Either way TRL computes the loss on
the completion only, and :func:`generate_answers` builds its prompts exactly as training tokenised them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .env import ignore_checkpointing_rename
from .evaluation import exact_match, normalize_answer
from .models import pick_device
from .profiles import CourseError

STYLES = ("plain", "chat")

# What every TRL run of the course sets besides the arguments a chapter writes itself, spread into
# SFTConfig(...) / DPOConfig(...): nothing saved or reported, a seeded data order, a constant
# learning rate (the runs are short), a log line every 10 steps, no data-loader worker processes.
TRL_DEFAULTS: dict[str, Any] = {
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 10,
    "seed": 0,
    "data_seed": 0,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "dataloader_num_workers": 0,
    "per_device_eval_batch_size": 32,
}

# --- chapter 8's recipe, for chapters that evaluate its result ------------------------------------


def lora_sft(pretrained, tokenizer, train_rows, seed: int, output_dir: str | Path):
    """Chapter 8 §8.3's recipe, run once on a fresh copy of ``pretrained`` (left unchanged): LoRA
    (rank 16, alpha 32, every linear layer) and ``SFTTrainer`` on ``train_rows`` in chat style, 8
    steps of 8 rows at a constant learning rate of 3e-3, max_length 128, bf16 autocast where the
    hardware has it natively, ``seed`` for the adapters' initialisation (seeded here, so one seed
    gives one run wherever it is called) and the data order. Returns
    ``(peft model, train result)``; ``peft_model.merge_and_unload()`` folds the adapters in.

    Chapter 8 writes this code on its page (it is the lesson there); chapter 9 evaluates its result,
    so it calls this copy. Keep the two identical.
    """
    import copy

    from peft import LoraConfig, get_peft_model
    from trl import SFTConfig, SFTTrainer

    from .models import native_bf16

    lora_config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    # get_peft_model draws the adapters' initial weights before the trainer seeds anything
    torch.manual_seed(seed)
    with ignore_checkpointing_rename():  # peft 0.21 reads a renamed attribute
        model = get_peft_model(copy.deepcopy(pretrained), lora_config)
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=8,
        learning_rate=3e-3,
        per_device_train_batch_size=8,
        max_length=128,
        bf16=native_bf16(),
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=False,
        lr_scheduler_type="constant",
        seed=seed,
        data_seed=seed,
        logging_steps=4,
        save_strategy="no",
        report_to="none",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=sft_dataset(train_rows, style="chat"),
        processing_class=tokenizer,
    )
    with ignore_checkpointing_rename():
        return model, trainer.train()


# --- saved adapters and merged models ----------------------------------------------------------


def saved_files(folder: str | Path) -> list[dict]:
    """The files of a saved model or adapter folder with their sizes, largest first."""
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    if not files:
        raise CourseError(f"{folder} holds no files; save a model or adapter there first.")
    return sorted(
        ({"file": str(p.relative_to(folder)), "kB": round(p.stat().st_size / 1e3, 1)} for p in files),
        key=lambda row: -row["kB"],
    )


@torch.no_grad()
def max_logit_difference(model_a, model_b, tokenizer, texts: list[str]) -> float:
    """Largest absolute difference between two models' logits on ``texts`` (0.0 means identical)."""
    largest = 0.0
    for model in (model_a, model_b):
        model.eval()
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")
        a = model_a(**inputs.to(model_a.device)).logits
        b = model_b(**inputs.to(model_b.device)).logits
        largest = max(largest, (a.float() - b.float().to(a.device)).abs().max().item())
    return largest


# --- TRL settings and DPO's reward metrics --------------------------------------------------------


def device_flags(device: str | None = None) -> dict[str, bool]:
    """Trainer flags that depend on the device: bf16 on GPUs that support it, fp16 on older GPUs,
    fp32 elsewhere; pinned memory only with a GPU (on a CPU it only earns a warning)."""
    device = device or pick_device()
    if device != "cuda":
        return {"bf16": False, "fp16": False, "dataloader_pin_memory": False}
    bf16 = torch.cuda.is_bf16_supported()
    return {"bf16": bf16, "fp16": not bf16, "dataloader_pin_memory": True}


DPO_REWARD_METRICS = {
    "eval_rewards/accuracies": "reward_accuracy",
    "eval_rewards/margins": "reward_margin",
    "eval_rewards/chosen": "chosen_reward",
    "eval_rewards/rejected": "rejected_reward",
}


def reward_metrics(dpo_trainer, dataset=None) -> dict:
    """DPO's implicit rewards on the evaluation pairs: how often chosen beats rejected
    (``reward_accuracy``), by how much (``reward_margin``), and the mean reward of each side.

    The reward of an answer is ``beta * (log p_policy - log p_reference)``: before training the
    policy equals the reference, so every reward, the margin and the accuracy are 0.
    """
    if dataset is None and getattr(dpo_trainer, "eval_dataset", None) is None:
        raise CourseError(
            "reward_metrics needs evaluation pairs: build the DPOTrainer with an eval_dataset "
            "or pass dataset=."
        )
    with ignore_checkpointing_rename():
        metrics = dpo_trainer.evaluate(dataset) if dataset is not None else dpo_trainer.evaluate()
    metrics = {key: round(value, 4) if isinstance(value, float) else value for key, value in metrics.items()}
    missing = [key for key in DPO_REWARD_METRICS if key not in metrics]
    if missing:
        raise CourseError(f"{missing} not in the evaluation metrics: reward_metrics needs a DPOTrainer.")
    return {name: metrics[key] for key, name in DPO_REWARD_METRICS.items()}


# --- data ---------------------------------------------------------------------------------------


def answer_column(rows) -> str:
    """``output`` for sft-data rows, ``chosen`` for preference-data rows."""
    for name in ("output", "chosen"):
        if name in rows.column_names:
            return name
    raise CourseError(f"No 'output' or 'chosen' column (columns: {rows.column_names}).")


def frequent_answers(rows, k: int) -> list[str]:
    """The ``k`` most frequent answers of ``rows`` (ties broken by first appearance)."""
    if k < 1:
        raise CourseError(f"k must be >= 1, got {k}.")
    return [answer for answer, _ in Counter(rows[answer_column(rows)]).most_common(k)]


def select_rows(
    dataset,
    task: str | None = None,
    answers: Iterable[str] | None = None,
    max_answer_chars: int | None = None,
    corpus_split: str | Iterable[str] | None = None,
    limit: int | None = None,
):
    """Rows of an sft-data or preference-data split, narrowed by ``task``, by the set of allowed
    ``answers``, by answer length, by the ``corpus_split`` of the document that describes the row
    (``"train"``: pretraining saw it), and to the first ``limit`` matches (in file order)."""
    if task is not None:
        if "task" not in dataset.column_names:
            raise CourseError(
                "This dataset has no 'task' column; task= works on the offline "
                "sft-data and preference-data roles (task_rows(..., profile='offline'))."
            )
        tasks = set(dataset.unique("task"))
        if task not in tasks:
            raise CourseError(f"Unknown task {task!r}; this dataset has {sorted(tasks)}.")
    splits = (
        {corpus_split}
        if isinstance(corpus_split, str)
        else (set(corpus_split) if corpus_split is not None else None)
    )
    allowed = set(answers) if answers is not None else None
    column = answer_column(dataset)

    def keep(row: dict) -> bool:
        return (
            (task is None or row["task"] == task)
            and (allowed is None or row[column] in allowed)
            and (max_answer_chars is None or len(row[column]) <= max_answer_chars)
            and (splits is None or row["corpus_split"] in splits)
        )

    selected = dataset.filter(keep)
    if limit is not None:
        selected = selected.select(range(min(limit, len(selected))))
    if len(selected) == 0:
        raise CourseError("No rows left after filtering; loosen task/answers/max_answer_chars/corpus_split.")
    return selected


def task_rows(
    role: str = "sft-data", splits: Iterable[str] = ("train",), profile: str | None = None, **filters: Any
):
    """:func:`select_rows` over one or more splits of a dataset role, concatenated in order.

    Held-out rows for evaluation are ``splits=("validation", "test")``: the task splits are made by
    a hash of the API entry, so no function appears in both training and held-out rows. The
    ``task`` and ``corpus_split`` filters need the course's own rows: under the hub profile pass
    ``profile="offline"`` (the Hub's Alpaca has neither column, nor validation/test splits).
    """
    from datasets import concatenate_datasets

    from .data import load_role_dataset

    splits = [splits] if isinstance(splits, str) else list(splits)
    parts = [select_rows(load_role_dataset(role, split, profile), **filters) for split in splits]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def prompt_style(tokenizer=None, style: str = "plain") -> str:
    """Validate ``style``; ``"chat"`` also needs a tokenizer with a chat template."""
    if style not in STYLES:
        raise CourseError(f"Unknown prompt style {style!r}; choose from {STYLES}.")
    if style == "chat" and tokenizer is not None and not getattr(tokenizer, "chat_template", None):
        raise CourseError(
            "style='chat' needs a tokenizer with a chat template, and this one has none (a base "
            "model such as SmolLM2-135M ships none): set tokenizer.chat_template first, or use "
            "style='plain'."
        )
    return style


def instruction_text(row: dict) -> str:
    """The request of an Alpaca-shaped row (``instruction`` plus ``input`` when present) or a preference ``prompt``."""
    instruction = row.get("instruction", row.get("prompt"))
    if instruction is None:
        raise CourseError(f"Row has no 'instruction' or 'prompt' field (fields: {sorted(row)}).")
    extra = row.get("input") or ""
    return f"{instruction}\n\n{extra}" if extra else instruction


def format_prompt(text: str, style: str = "plain"):
    """The prompt in TRL's format: a plain string, or a one-message conversation (chat)."""
    prompt_style(None, style)
    if style == "chat":
        return [{"role": "user", "content": text}]
    return f"Question: {text}\nAnswer:"


def format_answer(text: str, style: str = "plain"):
    """An answer in TRL's format: ``" " + text`` (plain; TRL appends eos) or an assistant message (chat)."""
    prompt_style(None, style)
    if style == "chat":
        return [{"role": "assistant", "content": text}]
    return " " + text


def sft_dataset(rows, style: str = "plain"):
    """sft-data rows -> a ``prompt``/``completion`` dataset for ``SFTTrainer`` (completion-only loss)."""
    prompt_style(None, style)
    return rows.map(
        lambda row: {
            "prompt": format_prompt(instruction_text(row), style),
            "completion": format_answer(row["output"], style),
        },
        remove_columns=rows.column_names,
    )


def preference_dataset(rows, style: str = "plain"):
    """preference-data rows -> a ``prompt``/``chosen``/``rejected`` dataset for ``DPOTrainer``."""
    prompt_style(None, style)
    return rows.map(
        lambda row: {
            "prompt": format_prompt(instruction_text(row), style),
            "chosen": format_answer(row["chosen"], style),
            "rejected": format_answer(row["rejected"], style),
        },
        remove_columns=rows.column_names,
    )


def loss_text(tokenizer, example: dict) -> dict:
    """What a tokenised SFT example trains on: the whole ``text`` and the ``text_with_loss`` (the tokens
    whose label is not -100, i.e. the completion when TRL computes completion-only loss)."""
    if "labels" not in example:
        raise CourseError(
            f"No 'labels' in the example (keys: {sorted(example)}); pass a row of "
            "`SFTTrainer(...).train_dataset`."
        )
    ids = example["input_ids"]
    return {
        "text": tokenizer.decode(ids),
        "text_with_loss": tokenizer.decode([t for t, label in zip(ids, example["labels"]) if label != -100]),
    }


# --- answering and scoring ----------------------------------------------------------------------


def prompt_ids(tokenizer, text: str, style: str = "plain") -> list[int]:
    """Token ids of a prompt, tokenised the way TRL tokenises it for training."""
    prompt = format_prompt(text, prompt_style(tokenizer, style))
    if style == "chat":
        return list(
            tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        )
    return list(tokenizer(prompt)["input_ids"])


def stop_token_ids(tokenizer) -> list[int]:
    """Ids that end an answer: eos, plus the chat end-of-turn token ``<|im_end|>`` when the vocabulary has one."""
    ids = [tokenizer.eos_token_id]
    end_of_turn = tokenizer.get_vocab().get("<|im_end|>")
    if end_of_turn is not None and end_of_turn not in ids:
        ids.append(end_of_turn)
    return ids


@torch.no_grad()
def generate_answers(
    model, tokenizer, texts: list[str], style: str = "plain", max_new_tokens: int = 16, batch_size: int = 64
) -> list[str]:
    """Greedy answers to ``texts`` (instructions), in left-padded batches; only the new text, stripped.

    Greedy decoding is deterministic, so exact match is repeatable.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise CourseError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=pad_id,
    )
    was_training = model.training
    model.eval()
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        encoded = [prompt_ids(tokenizer, text, style) for text in texts[start : start + batch_size]]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        output = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention.to(model.device),
            generation_config=config,
        )
        answers.extend(tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, width:])
    model.train(was_training)
    return answers


def exact_match_score(model, tokenizer, rows, style: str = "plain", max_new_tokens: int = 16) -> dict:
    """Greedy answers to ``rows`` scored with :func:`course_lib.evaluation.exact_match`.

    Returns ``exact_match``, the number of rows ``n``, and ``predictions`` (in row order).
    """
    predictions = generate_answers(
        model, tokenizer, [instruction_text(row) for row in rows], style, max_new_tokens
    )
    return {
        "exact_match": round(exact_match(predictions, rows[answer_column(rows)]), 4),
        "n": len(rows),
        "predictions": predictions,
    }


def exact_match_by(
    rows, predictions: list[str], column: str = "corpus_split", groups: list | None = None
) -> list[dict]:
    """Exact match per value of ``column`` (e.g. whether pretraining saw the row's document), with
    counts; or per value of ``groups`` (one label per row) when given, reported under ``column``."""
    if len(predictions) != len(rows):
        raise ValueError(f"{len(predictions)} predictions for {len(rows)} rows.")
    labels = groups if groups is not None else rows[column]
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} group labels for {len(rows)} rows.")
    found: dict = {}
    for label, prediction, reference in zip(labels, predictions, rows[answer_column(rows)]):
        preds, refs = found.setdefault(label, ([], []))
        preds.append(prediction)
        refs.append(reference)
    return [
        {column: key, "n": len(refs), "exact_match": round(exact_match(preds, refs), 4)}
        for key, (preds, refs) in sorted(found.items())
    ]


def exact_match_table(
    rows,
    predictions: dict[str, list[str]],
    groups: list,
    column: str = "group",
    difference: tuple[str, str] | None = None,
) -> list[dict]:
    """One row per group label (``groups``: one label per row of ``rows``), one exact-match column per
    named model in ``predictions``, the group size ``n``, and optionally ``difference = (a, b)``: a - b."""
    table: dict = {}
    for name, answers in predictions.items():
        for entry in exact_match_by(rows, answers, column, groups):
            table.setdefault(entry[column], {column: entry[column], "n": entry["n"]})[name] = entry[
                "exact_match"
            ]
    if difference is not None:
        a, b = difference
        if a not in predictions or b not in predictions:
            raise CourseError(
                f"difference names {difference} must be keys of predictions {list(predictions)}."
            )
        for entry in table.values():
            entry[f"{a} - {b}"] = round(entry[a] - entry[b], 4)
    return list(table.values())


def is_correct(predictions: list[str], references: list[str]) -> list[bool]:
    """Per-row exact match (after :func:`course_lib.evaluation.normalize_answer`)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    return [normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)]


def majority_exact_match(train_rows, held_out_rows) -> dict:
    """The baseline that always answers the most frequent training answer, scored on ``held_out_rows``."""
    answer = frequent_answers(train_rows, 1)[0]
    references = held_out_rows[answer_column(held_out_rows)]
    return {"answer": answer, "exact_match": round(exact_match([answer] * len(references), references), 4)}


def answers_table(rows, predictions: dict[str, list[str]], limit: int = 5) -> list[dict]:
    """Rows for display: the instruction, the reference, and each named model's answer marked ✓/✗."""
    column = answer_column(rows)
    table = []
    for i, row in enumerate(rows.select(range(min(limit, len(rows))))):
        entry = {"instruction": instruction_text(row), "reference": row[column]}
        for name, answers in predictions.items():
            mark = "✓" if normalize_answer(answers[i]) == normalize_answer(row[column]) else "✗"
            entry[name] = f"{mark} {answers[i]}"
        table.append(entry)
    return table


@torch.no_grad()
def completion_logprob(model, tokenizer, prompt: str, completion: str, style: str = "plain") -> float:
    """Sum of the log-probabilities of ``completion``'s tokens after ``prompt`` (an instruction),
    formatted and tokenised as TRL does for DPO (plain style ends the completion with eos).

    DPO's implicit reward of an answer is ``beta * (completion_logprob(policy) - completion_logprob(reference))``.
    """
    style = prompt_style(tokenizer, style)
    context = prompt_ids(tokenizer, prompt, style)
    if style == "chat":
        full = list(
            tokenizer.apply_chat_template(
                format_prompt(prompt, style) + format_answer(completion, style),
                tokenize=True,
                return_dict=True,
            )["input_ids"]
        )
    else:
        full = list(
            tokenizer(format_prompt(prompt, style) + format_answer(completion, style) + tokenizer.eos_token)[
                "input_ids"
            ]
        )
    start = next((i for i, (a, b) in enumerate(zip(context, full)) if a != b), len(context))
    if start == 0:
        raise CourseError(
            "The prompt tokenises to nothing in common with prompt + completion; pass a non-empty prompt."
        )
    ids = torch.tensor([full], device=model.device)
    log_probs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return float(log_probs[torch.arange(start - 1, len(full) - 1), targets[start - 1 :]].sum())


# --- what pretraining already knows ----------------------------------------------------------


def function_name(row: dict) -> str:
    """The function a ``module``-task row asks about: its ``source`` without the module prefix."""
    module = row.get("output", row.get("chosen"))
    if row.get("task") != "module" or not row["source"].startswith(f"{module}."):
        raise CourseError(f"Not a 'module' task row: {row.get('source')!r} -> {module!r}.")
    return row["source"][len(module) + 1 :]


def corpus_mentions(text: str, limit: int = 3) -> list[dict]:
    """Lines of the pretraining corpus (offline profile) that contain ``text``, with the document id
    and its split: where pretraining could have learned a fact the instruction data asks about."""
    import json

    from . import assets

    found = []
    for split in ("train", "validation", "test"):
        with open(assets.corpus() / f"{split}.jsonl", encoding="utf-8") as handle:
            for line in handle:
                document = json.loads(line)
                for text_line in document["text"].splitlines():
                    if text in text_line:
                        found.append({"document": document["id"], "corpus_split": split, "line": text_line})
                        if len(found) >= limit:
                            return found
    return found


PROBE_TEMPLATE = "function {module}.{name}("  # how the corpus introduces a function


@torch.no_grad()
def _probe_sequences(tokenizer, name: str, modules: list[str], template: str) -> list[tuple[list[int], int]]:
    """For each module: the token ids of ``template`` filled in, and where the scored tokens start."""
    if "{module}" not in template or not template.endswith("{name}("):
        raise CourseError("template must contain {module} and end with '{name}('.")
    sequences = []
    for module in modules:
        context = tokenizer(template.split("{name}")[0].format(module=module))["input_ids"]
        full = tokenizer(template.format(module=module, name=name))["input_ids"]
        start = next((i for i, (a, b) in enumerate(zip(context, full)) if a != b), len(context))
        sequences.append((full, start))
    return sequences


@torch.no_grad()
def _sequence_scores(
    model, tokenizer, sequences: list[tuple[list[int], int]], batch_size: int = 64
) -> list[float]:
    """Summed log-probabilities of each sequence's tokens from its start on, in right-padded batches;
    the softmax is taken only at the scored positions (a 49k-token vocabulary makes it the big part)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = []
    for first in range(0, len(sequences), batch_size):
        chunk = sequences[first : first + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s, _ in chunk], device=model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        for k, (sequence, start) in enumerate(chunk):
            positions = torch.arange(max(start, 1), len(sequence), device=model.device)
            log_probs = torch.log_softmax(logits[k, positions - 1].float(), dim=-1)
            scores.append(float(log_probs.gather(1, ids[k, positions, None]).sum()))
    return scores


def module_scores(
    model, tokenizer, name: str, modules: list[str], template: str = PROBE_TEMPLATE
) -> list[float]:
    """For each candidate module, ``log p(name + "(" | "function <module>.")`` under ``model``: the
    summed log-probabilities of the tokens after the prefix, in the corpus's layout (``template``).

    The prefix and the whole text are tokenised separately; the scored tokens start where the two
    token lists first differ (a BPE merge can swallow the ``"."`` into the name's first token).
    """
    return _sequence_scores(model, tokenizer, _probe_sequences(tokenizer, name, modules, template))


def module_probe(model, tokenizer, rows, modules: list[str], template: str = PROBE_TEMPLATE) -> dict:
    """Zero-shot multiple choice: for each ``module``-task row, the candidate module under which the
    model finds the function's name most likely (:func:`module_scores`).

    The score is conditioned on the module, so a module that is frequent in the corpus gets no head
    start. No training and no question format are involved, so it measures what pretraining stored.
    Every row's candidates go through the model together, in batches. Returns ``accuracy``,
    ``chance`` and ``predictions``.
    """
    was_training = model.training
    model.eval()
    sequences = []
    for row in rows:
        sequences += _probe_sequences(tokenizer, function_name(row), modules, template)
    scores = _sequence_scores(model, tokenizer, sequences)
    model.train(was_training)
    predictions = []
    for first in range(0, len(scores), len(modules)):
        row_scores = scores[first : first + len(modules)]
        predictions.append(modules[max(range(len(modules)), key=row_scores.__getitem__)])
    references = rows[answer_column(rows)]
    return {
        "accuracy": round(exact_match(predictions, references), 4),
        "chance": round(1 / len(modules), 4),
        "predictions": predictions,
    }


def count_by(rows, *columns: str) -> list[dict]:
    """Row counts per combination of ``columns`` (e.g. ``"task", "corpus_split"``), most frequent first."""
    missing = [c for c in columns if c not in rows.column_names]
    if not columns or missing:
        raise CourseError(f"Name columns to count by; missing {missing} (columns: {rows.column_names}).")
    counts = Counter(zip(*(rows[c] for c in columns)))
    return [dict(zip(columns, key)) | {"rows": n} for key, n in counts.most_common()]

"""Checks for chapter 3 (the Trainer)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from transformers import DefaultFlowCallback, EvalPrediction, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from . import Feedback, verdict


def reference_metrics(eval_pred) -> dict[str, float]:
    """What the medium exercise's ``compute_metrics`` must return: accuracy and macro-F1 (the mean of
    per-class F1 over the classes present in the labels or the predictions)."""
    logits, labels = eval_pred.predictions, np.asarray(eval_pred.label_ids)
    predictions = np.asarray(logits[0] if isinstance(logits, tuple) else logits).argmax(-1)
    f1s = []
    for label in np.unique(np.concatenate([labels, predictions])):
        tp = np.sum((predictions == label) & (labels == label))
        precision = tp / max(np.sum(predictions == label), 1)
        recall = tp / max(np.sum(labels == label), 1)
        f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return {"accuracy": float(np.mean(predictions == labels)), "macro_f1": float(np.mean(f1s))}


def check_arguments(args) -> Feedback:
    """Easy: ``TrainingArguments`` that evaluate and save every 10 steps, stop after 40 steps, report
    to TensorBoard and nothing else, and are seeded with 0."""
    if not isinstance(args, TrainingArguments):
        return Feedback(
            False,
            f"expected a TrainingArguments object, got {type(args).__name__}: build it "
            "with TrainingArguments(folder, **training.preset_arguments(...)).",
        )
    problems = []
    if (
        str(args.eval_strategy.value if hasattr(args.eval_strategy, "value") else args.eval_strategy)
        != "steps"
    ):
        problems.append(f"eval_strategy is {args.eval_strategy!r}; evaluate on a step schedule ('steps').")
    if args.eval_steps != 10:
        problems.append(f"eval_steps is {args.eval_steps}, not 10.")
    if args.save_steps != 10:
        problems.append(f"save_steps is {args.save_steps}, not 10.")
    if args.max_steps != 40:
        problems.append(f"max_steps is {args.max_steps}; stop after 40 optimizer steps.")
    if list(args.report_to) != ["tensorboard"]:
        problems.append(f"report_to is {args.report_to}; use exactly ['tensorboard'].")
    if args.seed != 0:
        problems.append(f"seed is {args.seed}, not 0.")
    return verdict(problems, "evaluates and saves every 10 steps, stops at 40, logs to TensorBoard, seed 0.")


def _probe_predictions() -> list[EvalPrediction]:
    rng = np.random.default_rng(0)
    probes = []
    for n, classes in ((50, 4), (7, 3)):
        logits = rng.normal(size=(n, classes)).astype(np.float32)
        labels = rng.integers(0, classes, size=n)
        probes.append(EvalPrediction(predictions=logits, label_ids=labels))
    logits = np.eye(4, dtype=np.float32)[[0, 0, 1, 3]]  # class 2 never predicted, class 3 never present
    probes.append(EvalPrediction(predictions=(logits,), label_ids=np.array([0, 1, 1, 2])))
    return probes


def check_compute_metrics(compute_metrics: Callable) -> Feedback:
    """Medium: ``compute_metrics(eval_pred) -> {"accuracy": ..., "macro_f1": ...}`` agreeing with
    :func:`reference_metrics` (macro-F1: the unweighted mean of per-class F1
    over the classes that occur in the labels or the predictions; predictions may come as a tuple)."""
    problems = []
    for number, probe in enumerate(_probe_predictions(), 1):
        expected = reference_metrics(probe)
        try:
            got = compute_metrics(probe)
        except Exception as error:  # report any failure as feedback, not a traceback
            problems.append(
                f"probe {number} raised {type(error).__name__}: {error}"
                + (" (predictions can be a tuple: take element 0)." if number == 3 else ".")
            )
            continue
        for key, value in expected.items():
            if key not in got:
                problems.append(f"probe {number}: no {key!r} in {sorted(got)}.")
            elif abs(float(got[key]) - value) > 1e-6:
                problems.append(f"probe {number}: {key} = {float(got[key]):.4f}, expected {value:.4f}.")
    return verdict(problems[:3], f"accuracy and macro-F1 match on {len(_probe_predictions())} probes.")


def check_loss_threshold_callback(callback_class: type, threshold: float = 0.5) -> Feedback:
    """Hard: ``callback_class(threshold)`` is a ``TrainerCallback`` that sets
    ``control.should_training_stop`` on the first log whose training ``loss`` is below ``threshold``,
    and not before (evaluation logs without ``loss`` must not stop training)."""
    try:
        callback = callback_class(threshold)
    except Exception as error:  # report any failure as feedback, not a traceback
        return Feedback(False, f"callback_class({threshold}) raised {type(error).__name__}: {error}.")
    handler = CallbackHandler(
        [DefaultFlowCallback(), callback],
        model=None,
        processing_class=None,
        optimizer=None,
        lr_scheduler=None,
    )
    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    events = [{"loss": 1.2}, {"eval_loss": 0.1}, {"loss": 0.7}, {"loss": 0.49}, {"loss": 0.3}]
    stop_at = next(i for i, logs in enumerate(events) if logs.get("loss", 1e9) < threshold)
    for step, logs in enumerate(events):
        state.global_step = 10 * (step + 1)
        try:
            control = handler.on_log(args, state, control, logs=dict(logs))
        except Exception as error:  # report any failure as feedback, not a traceback
            return Feedback(False, f"on_log raised {type(error).__name__}: {error} for logs={logs}.")
        if control.should_training_stop and step < stop_at:
            return Feedback(False, f"training stopped at logs={logs}; stop only when 'loss' < {threshold}.")
        if step == stop_at:
            if not control.should_training_stop:
                return Feedback(
                    False,
                    f"logs={logs} has loss below {threshold} but should_training_stop is "
                    "still False: set it on the `control` object in on_log.",
                )
            return Feedback(
                True,
                f"stops at the first loss below {threshold} (step {state.global_step}), "
                "ignores evaluation logs.",
            )
    return Feedback(False, "never stopped.")  # pragma: no cover - the loop returns at stop_at

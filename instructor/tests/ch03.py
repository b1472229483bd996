"""Hidden tests for chapter 3 (the Trainer). One point per test; each test is self-contained (the
grader runs every function on its own, its parameters filled from the student's notebook)."""


def test_ex1_schedule(exercise_args):
    """evaluates and saves on a 10-step schedule, stops at 40 steps, seed 0"""
    from transformers import TrainingArguments

    assert isinstance(exercise_args, TrainingArguments), "build a TrainingArguments"
    strategy = getattr(exercise_args.eval_strategy, "value", exercise_args.eval_strategy)
    assert strategy == "steps" and exercise_args.eval_steps == 10, "evaluate every 10 steps"
    assert exercise_args.save_steps == 10 and exercise_args.max_steps == 40, "save every 10, stop at 40"
    assert exercise_args.seed == 0, "seed 0"


def test_ex1_tensorboard_only(exercise_args):
    """reports to TensorBoard and nothing else"""
    assert list(exercise_args.report_to) == ["tensorboard"], f"report_to is {exercise_args.report_to}"


def test_ex2_other_predictions(compute_metrics):
    """three classes, one only in the predictions, logits in a tuple"""
    import numpy as np
    from transformers import EvalPrediction

    logits = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0], [0, 3, 0], [0, 0, 3]], dtype=np.float32)
    labels = np.array([0, 1, 1, 0, 1, 1])  # class 2 is predicted twice and never the label
    got = compute_metrics(EvalPrediction(predictions=(logits, np.zeros(6)), label_ids=labels))
    # class 0: F1 1; class 1: precision 1, recall 0.5 -> 2/3; class 2: 0
    assert abs(float(got["accuracy"]) - 4 / 6) < 1e-6, f"accuracy {got['accuracy']}, expected 0.6667"
    assert abs(float(got["macro_f1"]) - (1 + 2 / 3 + 0) / 3) < 1e-6, (
        f"macro_f1 {got['macro_f1']}, expected 0.5556 (a class only in the predictions counts, F1 0)"
    )


def test_ex3_threshold(StopBelowLoss):
    """stops at the first training loss under its own threshold, not on evaluation logs"""
    import tempfile

    from transformers import TrainerControl, TrainerState, TrainingArguments

    callback = StopBelowLoss(2.0)
    with tempfile.TemporaryDirectory() as folder:
        args = TrainingArguments(folder, report_to="none", use_cpu=True)
    state, control = TrainerState(), TrainerControl()
    for logs, stops in (({"loss": 2.5}, False), ({"eval_loss": 0.1}, False), ({"loss": 1.75}, True)):
        control.should_training_stop = False
        callback.on_log(args, state, control, logs=logs)
        assert bool(control.should_training_stop) == stops, (
            f"after logs {logs} with threshold 2.0 should_training_stop must be {stops}"
        )

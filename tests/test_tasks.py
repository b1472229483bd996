import json

from course_lib import assets
from course_lib.assets.tasks import CLASSIFICATION_LABELS, preference_rows, sft_rows, task_split
from course_lib.data import load_role_dataset


def _api():
    return [json.loads(line) for line in open(assets.corpus() / "api.jsonl", encoding="utf-8")]


def test_sft_answers_come_from_the_source():
    api = {f"{e['module']}.{e['qualname']}": e for e in _api()}
    rows = sft_rows(list(api.values()))
    assert {r["task"] for r in rows} == {"module", "signature", "summary"}
    for row in rows[:500]:
        entry = api[row["source"]]
        expected = {"module": entry["module"], "signature": entry["signature"]}.get(row["task"])
        if expected is not None:
            assert row["output"] == expected
        else:
            assert entry["docstring"].split()[0] in row["output"]


def test_preference_rejected_is_another_real_answer():
    sft = sft_rows(_api())
    pairs = preference_rows(sft)
    outputs = {r["task"]: set() for r in sft}
    for row in sft:
        outputs[row["task"]].add(row["output"])
    for pair in pairs[:1000]:
        assert pair["chosen"] != pair["rejected"]
        assert pair["rejected"] in outputs[pair["task"]]


def test_no_source_in_two_splits():
    for role in ("sft-data", "preference-data", "classification-data"):
        data = load_role_dataset(role)
        per_split = {split: set(data[split]["source"]) for split in data}
        assert not per_split["train"] & per_split["test"]
        assert not per_split["train"] & per_split["validation"]
        assert all(task_split(s) == "test" for s in per_split["test"])


def test_classification_is_balanced_and_labelled_by_package():
    data = load_role_dataset("classification-data", split="train")
    labels = data["label"]
    assert set(labels) == set(range(len(CLASSIFICATION_LABELS)))
    for row in data.select(range(50)):
        assert row["source"].split(".")[0] == CLASSIFICATION_LABELS[row["label"]]

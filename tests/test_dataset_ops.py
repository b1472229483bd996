import json

import pytest
from datasets import Dataset, IterableDataset, interleave_datasets, load_dataset

from course_lib import dataset_ops
from course_lib.models import folder_bytes, load_tokenizer
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def course_files(tmp_path_factory):
    return dataset_ops.write_course_files(tmp_path_factory.mktemp("raw"), topics=3)


def test_written_files_load_with_each_builder(course_files):
    docs = load_dataset("json", data_files=str(course_files["jsonl"]), split="train")
    assert docs.column_names == ["id", "source", "text", "split"]
    assert set(docs["split"]) == {"train", "validation", "test"}
    api = load_dataset("csv", data_files=str(course_files["csv"]), split="train")
    assert api.column_names == ["module", "qualname", "kind", "signature", "summary"] and len(api) > 1000
    files = sorted(course_files["text"].glob("*.txt"))
    assert len(files) == 3
    by_file = load_dataset("text", data_dir=str(course_files["text"]), sample_by="document", split="train")
    by_line = load_dataset("text", data_dir=str(course_files["text"]), sample_by="line", split="train")
    assert len(by_file) == 3 and len(by_line) > len(by_file)
    sizes = {row["format"]: row for row in dataset_ops.file_sizes(course_files)}
    assert sizes["text"]["files"] == 3 and sizes["jsonl"]["KB"] > 100


def test_write_course_files_rejects_no_topics(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        dataset_ops.write_course_files(tmp_path, topics=0)


def _tokenize(rows, tokenizer):  # the shape chapter 2 writes: one row or a batch
    ids = tokenizer(rows["text"])["input_ids"]
    return {"input_ids": ids}


def test_compare_map_modes_times_every_mode_and_checks_outputs():
    tokenizer = load_tokenizer("causal-lm")
    dataset = Dataset.from_dict({"text": [f"row number {i} of the table" for i in range(300)]})
    rows = dataset_ops.compare_map_modes(
        dataset, _tokenize, fn_kwargs={"tokenizer": tokenizer}, num_procs=(2,), batch_size=100
    )
    assert [r["mode"] for r in rows] == ["per example", "batched", "batched, num_proc=2"]
    assert all(r["same output"] for r in rows)
    assert rows[0]["speed-up"] == 1.0 and all(r["seconds"] > 0 for r in rows)


def test_time_map_turns_the_cache_off(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({"text": "a b c"}) for _ in range(20)))
    dataset = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "cache"))
    calls = []

    def count(batch):
        calls.append(len(batch["text"]))
        return {"n": [1] * len(batch["text"])}

    dataset_ops.time_map(dataset, count, batched=True)
    dataset_ops.time_map(dataset, count, batched=True)
    assert sum(calls) == 40  # recomputed, not served from the cache


def test_alpaca_format_with_and_without_input():
    plain = dataset_ops.format_alpaca({"instruction": "Say hi.", "input": "", "output": "hi"})
    assert plain["prompt"].endswith("### Instruction:\nSay hi.\n\n### Response:\n")
    assert "### Input" not in plain["prompt"] and plain["text"] == plain["prompt"] + "hi"
    assert plain["completion"] == "hi"
    with_input = dataset_ops.format_alpaca({"instruction": "Name it.", "input": "`urlopen`", "output": "x"})
    assert "paired with an input" in with_input["prompt"]
    assert "### Input:\n`urlopen`\n\n### Response:\n" in with_input["prompt"]
    blank_input = dataset_ops.format_alpaca({"instruction": "Say hi.", "input": "   ", "output": "hi"})
    assert blank_input == plain
    no_input_key = dataset_ops.format_alpaca({"instruction": "Say hi.", "output": "hi"})
    assert no_input_key == plain


def test_alpaca_format_rejects_bad_rows():
    with pytest.raises(CourseError, match="missing \\['output'\\]"):
        dataset_ops.format_alpaca({"instruction": "x"})
    with pytest.raises(ValueError, match="instruction is empty"):
        dataset_ops.format_alpaca({"instruction": " ", "output": "x"})


def _stream(name, n):
    return Dataset.from_dict({"value": list(range(n)), "name": [name] * n}).to_iterable_dataset()


def test_interleaved_streams_follow_the_requested_mix():
    streams = [
        dataset_ops.as_text_stream(_stream(name, 5000), lambda r: str(r["value"]), name)
        for name in ("a", "b")
    ]
    assert isinstance(streams[0], IterableDataset)
    assert next(iter(streams[0])) == {"text": "0", "origin": "a"}
    mixed = interleave_datasets(streams, probabilities=[0.8, 0.2], seed=0)
    rows = dataset_ops.realised_mixing(mixed, {"a": 0.8, "b": 0.2}, n=2000)
    assert [r["source"] for r in rows] == ["a", "b"] and sum(r["rows"] for r in rows) == 2000
    assert all(abs(r["difference in std errors"]) < 4 for r in rows)
    assert abs(rows[0]["realised"] - 0.8) < 0.05


def test_realised_mixing_errors():
    rows = [{"origin": "a"}] * 10
    with pytest.raises(CourseError, match="ended after 10 rows"):
        dataset_ops.realised_mixing(rows, {"a": 1.0}, n=20)
    with pytest.raises(ValueError, match="sum to"):
        dataset_ops.realised_mixing(rows, {"a": 0.5}, n=5)
    with pytest.raises(ValueError, match="positive"):
        dataset_ops.realised_mixing(rows, {"a": 1.0}, n=0)
    assert dataset_ops.realised_mixing(rows, {"a": 1.0}, n=10)[0]["realised"] == 1.0


def test_word_counts_lowercases_and_ignores_punctuation():
    counts = dataset_ops.word_counts(["The cat, the HAT.", "x2 the"])
    assert counts.most_common(2) == [("the", 3), ("cat", 1)] and counts["x"] == 1


def test_arrow_allocated_bytes_sees_an_in_memory_load_but_not_a_memory_mapped_one(tmp_path):
    from datasets import load_from_disk

    Dataset.from_dict({"text": ["x" * 1000] * 30000}).save_to_disk(tmp_path / "saved")  # 30 MB of text
    assert folder_bytes(tmp_path / "saved") > 30e6
    before = dataset_ops.arrow_allocated_bytes()
    mapped = load_from_disk(tmp_path / "saved")
    after_mapped = dataset_ops.arrow_allocated_bytes()
    in_memory = load_from_disk(tmp_path / "saved", keep_in_memory=True)
    after_copy = dataset_ops.arrow_allocated_bytes()
    assert type(mapped.data).__name__ == "MemoryMappedTable" and len(in_memory) == 30000
    assert after_mapped - before < 1e6 and after_copy - after_mapped >= 30e6


def test_preference_text_accepts_strings_and_conversations():
    assert dataset_ops.preference_text({"prompt": "Q?", "chosen": "A.", "rejected": "B."}) == "Q?\nA."
    conversation = {
        "prompt": [{"role": "user", "content": "Q?"}],
        "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
    }
    assert dataset_ops.preference_text(conversation) == "Q?\nA."
    implicit = {"chosen": conversation["chosen"], "rejected": [{"role": "user", "content": "Q?"}]}
    assert dataset_ops.preference_text(implicit) == "Q?\nA."  # trl-lib/ultrafeedback_binarized
    with pytest.raises(CourseError, match="missing \\['chosen'\\]"):
        dataset_ops.preference_text({"prompt": "Q?"})
    with pytest.raises(CourseError, match="list of"):
        dataset_ops.message_text(3)

import json

from course_lib import assets
from course_lib.assets.corpus import first_sentence, read_stdlib, split_of


def test_split_is_a_stable_function_of_the_id():
    # golden values: changing the hash would silently reshuffle every split
    assert [split_of(f"topic:{t}") for t in ("with", "import", "del")] == ["train", "validation", "test"]
    counts = {s: 0 for s in ("train", "validation", "test")}
    for i in range(2000):
        counts[split_of(f"doc{i}")] += 1
    assert 0.85 < counts["train"] / 2000 < 0.95


def test_first_sentence():
    assert first_sentence("Return the sum.  More text here.\n\nDetails.") == "Return the sum."
    assert first_sentence("No full stop\nacross lines") == "No full stop across lines"


def test_reading_the_stdlib_is_deterministic():
    docs1, api1 = read_stdlib()
    docs2, api2 = read_stdlib()
    assert docs1 == docs2 and api1 == api2
    ids = [d.id for d in docs1]
    assert len(ids) == len(set(ids))
    assert any(d.id == "topic:with" for d in docs1)
    assert any(e.module == "json" and e.qualname == "dumps" for e in api1)


def test_corpus_asset_has_disjoint_splits_and_a_manifest():
    folder = assets.corpus()
    seen = {}
    for split in ("train", "validation", "test"):
        for line in open(folder / f"{split}.jsonl", encoding="utf-8"):
            row = json.loads(line)
            assert row["id"] not in seen, f"{row['id']} in {seen.get(row['id'])} and {split}"
            seen[row["id"]] = split
            assert row["split"] == split
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["characters"]["train"] > 1_000_000
    assert manifest["documents"]["validation"] > 10 and manifest["documents"]["test"] > 10
    assert len(manifest["content_hash"]) == 16

import json

import pytest

from course_lib.assets.cache import cache_root, ensure, problems, read_manifest


def _builder(calls):
    def build(folder):
        calls.append(folder)
        (folder / "data.txt").write_text("payload")
        (folder / "sub").mkdir()
        (folder / "sub" / "more.txt").write_text("more")
        return {"rows": 2}

    return build


def test_builds_once_then_reuses(tmp_cache):
    calls = []
    first = ensure("thing", {"v": 1}, _builder(calls), log=lambda _: None)
    second = ensure("thing", {"v": 1}, _builder(calls), log=lambda _: None)
    assert first == second == cache_root() / "thing"
    assert len(calls) == 1
    manifest = read_manifest(first)
    assert manifest["rows"] == 2 and set(manifest["files"]) == {"data.txt", "sub/more.txt"}


def test_cache_env_is_honoured(tmp_cache):
    assert str(cache_root()).startswith(str(tmp_cache))


@pytest.mark.parametrize("damage", ["edit", "delete", "manifest"])
def test_corrupted_or_partial_asset_is_detected_and_rebuilt(tmp_cache, damage):
    calls, messages = [], []
    folder = ensure("thing", {"v": 1}, _builder(calls), log=messages.append)
    if damage == "edit":
        (folder / "data.txt").write_text("tampered")
    elif damage == "delete":
        (folder / "sub" / "more.txt").unlink()
    else:
        (folder / "manifest.json").write_text("{not json")
    assert problems(folder, {"v": 1})
    ensure("thing", {"v": 1}, _builder(calls), log=messages.append)
    assert len(calls) == 2
    assert "rebuilding" in messages[-2]
    assert (folder / "data.txt").read_text() == "payload"
    assert not problems(folder, {"v": 1})


def test_recipe_change_triggers_rebuild(tmp_cache):
    calls = []
    ensure("thing", {"v": 1}, _builder(calls), log=lambda _: None)
    folder = ensure("thing", {"v": 2}, _builder(calls), log=lambda _: None)
    assert len(calls) == 2
    assert json.loads((folder / "manifest.json").read_text())["recipe"] == {"v": 2}


def test_failed_build_leaves_nothing_behind(tmp_cache):
    def broken(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        ensure("thing", {"v": 1}, broken, log=lambda _: None)
    assert not (cache_root() / "thing").exists()
    assert not [p for p in cache_root().iterdir() if p.is_dir()]

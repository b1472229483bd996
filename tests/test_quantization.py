import pytest
import torch

from course_lib import quantization as qz
from course_lib.profiles import CourseError


@pytest.fixture(scope="module")
def blocks(course_lm):
    return qz.eval_blocks(course_lm[1], n_blocks=4)


def test_group_size_must_divide_every_linear_input(course_lm):
    model, _ = course_lm
    qz.check_group_size(model, 32)  # 128 and 384 are multiples of 32
    with pytest.raises(CourseError, match=r"group_size=100 .*in_features=128"):
        qz.check_group_size(model, 100)
    with pytest.raises(ValueError):
        qz.check_group_size(model, 0)


def test_reload_check_tolerance():
    assert qz.reload_matches(100.0, 100.5)
    assert not qz.reload_matches(100.0, 4.6e8)
    assert not qz.reload_matches(100.0, 95.0)


def test_nf4_is_smaller_and_about_as_good(blocks):
    fp32, nf4 = (qz.measure(name, blocks) for name in ("fp32 (baseline)", "bnb NF4 + double quant"))
    assert fp32["reload_ok"] and nf4["reload_ok"]
    assert nf4["saved_MB"] < 0.6 * fp32["saved_MB"]
    assert abs(nf4["perplexity"] - fp32["perplexity"]) < 0.05 * fp32["perplexity"]


def test_measure_takes_a_model_the_page_loaded(blocks):
    from course_lib.models import load_model

    row = qz.measure("fp32 (baseline)", blocks, model=load_model("causal-lm"))
    assert row["load_s"] is None and row["reload_ok"]
    assert row["perplexity"] == qz.measure("fp32 (baseline)", blocks)["perplexity"]


def test_memory_footprint_misleads_for_torchao(blocks):
    row = qz.measure("torchao int8 weight-only", blocks)
    assert row["reload_ok"]
    assert row["saved_MB"] < 0.65 * row["footprint_MB"]  # the files are much smaller than it claims


def test_a_silently_wrong_reload_is_caught(blocks, monkeypatch):
    from transformers import AutoModelForCausalLM

    real_load = qz.load_quantized

    def broken_load(method, source=None, role="causal-lm", saved=False):
        model = real_load(method, source, role, saved)
        if saved:  # what a back end that drops its weights on save looks like: loads fine, is random
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(model.config).eval()
        return model

    monkeypatch.setattr(qz, "load_quantized", broken_load)
    row = qz.measure("fp32 (baseline)", blocks)
    assert not row["reload_ok"] and row["perplexity_after_reload"] > 10 * row["perplexity"]


def test_gpu_rows_skip_with_a_note_without_cuda(blocks, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    notes = []
    assert qz.quantization_table(blocks, names=["bnb NF4, bf16 compute (GPU)"], report=notes.append) == []
    assert notes and "no CUDA" in notes[0]
    with pytest.raises(CourseError, match="CUDA"):
        qz.load_quantized("torchao int4 tinygemm (GPU)")
    with pytest.raises(CourseError, match="Unknown method"):
        qz.quantization_table(blocks, names=["int3"])


def _with_lora(model, r: int = 8, alpha: int = 16):
    """Chapter 13's LoRA: every linear layer (what the page writes)."""
    from peft import LoraConfig, get_peft_model

    from course_lib.env import ignore_checkpointing_rename

    config = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=alpha, target_modules="all-linear")
    with ignore_checkpointing_rename():
        return get_peft_model(model, config)


def _qlora(r: int = 8, alpha: int = 16):
    """Chapter 13's QLoRA recipe: NF4 base (repack off), prepared for k-bit training, LoRA."""
    from peft import prepare_model_for_kbit_training

    base = qz.load_quantized("bnb NF4 + double quant")
    return _with_lora(prepare_model_for_kbit_training(base, use_gradient_checkpointing=False), r, alpha)


def test_qlora_trains_only_lora_on_a_4bit_base(course_lm):
    from course_lib import peft_methods

    model = _qlora(r=4, alpha=8)
    assert qz.quantized_linear_types(model) == {"Linear4bit (Params4bit weight)": 28}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    examples = peft_methods.task_examples(course_lm[1], "train", limit=16)
    result = peft_methods.train_steps(model, examples, steps=2, lr=3e-3, batch_size=8, progress=False)
    assert all(loss == loss for loss in result["losses"])  # finite, no NaN


def test_chapter_13_exercise_checks(course_lm):
    from course_lib.exercises import ch13

    rows = [
        {"method": "fp32 (baseline)", "saved_MB": 5.5, "weight_bits": 32},
        {"method": "nf4", "saved_MB": 2.5, "weight_bits": 4},
    ]
    assert ch13.check_compression(rows, "nf4", 2.2).passed
    assert "inverse" in ch13.check_compression(rows, "nf4", 2.5 / 5.5).message
    assert all(len(line) <= 76 for line in ch13.check_compression(rows, "nf4", 2.2).message.splitlines())
    assert not ch13.check_compression(rows, "int3", 1.0).passed

    def right(model, candidates):
        sizes = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
        return [g for g in candidates if all(s % g == 0 for s in sizes)]

    assert ch13.check_group_sizes(right, course_lm[0]).passed
    assert not ch13.check_group_sizes(lambda model, candidates: candidates, course_lm[0]).passed

    def quantize(w):
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return torch.round(w / scale).to(torch.int8), scale.squeeze(1)

    def dequantize(q, scale):
        return q.float() * scale.unsqueeze(1)

    assert ch13.check_absmax_roundtrip(quantize, dequantize).passed

    def truncating(w):  # a classic slip: truncate instead of round
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return torch.trunc(w / scale).to(torch.int8), scale.squeeze(1)

    assert "half a step" in " ".join(ch13.check_absmax_roundtrip(truncating, dequantize).message.split())
    assert not ch13.check_absmax_roundtrip(lambda w: (w, w.amax(1)), dequantize).passed


def test_cpu_int4_is_not_smaller_than_int8_on_disk_and_qlora_tracks_lora(course_lm, blocks):
    """Two claims of chapter 13: torchao's CPU int4 layout stores a byte per value, and LoRA on a
    4-bit base learns about as well as LoRA on the float32 base."""
    from course_lib import peft_methods
    from course_lib.models import load_model

    int8, int4 = (
        qz.measure(name, blocks)["saved_MB"]
        for name in ("torchao int8 weight-only", "torchao int4 weight-only")
    )
    assert int4 >= 0.95 * int8
    train = peft_methods.task_examples(course_lm[1], "train", limit=64)
    held_out = peft_methods.task_examples(course_lm[1], "validation", limit=32)
    losses = []
    for model in (_qlora(), _with_lora(load_model("causal-lm"))):
        peft_methods.train_steps(model, train, steps=6, lr=3e-3, batch_size=8, progress=False)
        losses.append(peft_methods.answer_metrics(model, held_out)["loss"])
    assert abs(losses[0] - losses[1]) < 0.05 * losses[1]


def test_hub_profile_loads_the_hub_model_with_the_config(monkeypatch):
    """Up to the network boundary: under COURSE_PROFILE=hub the repo id and the quantization config
    reach from_pretrained."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    monkeypatch.setenv("COURSE_PROFILE", "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    seen = {}

    def fake_from_pretrained(source, **kwargs):
        seen.update(source=source, **kwargs)
        raise RuntimeError("network boundary")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    with pytest.raises(RuntimeError, match="network boundary"):
        qz.load_quantized("bnb NF4 + double quant")
    assert seen["source"] == "HuggingFaceTB/SmolLM2-135M"
    assert isinstance(seen["quantization_config"], BitsAndBytesConfig) and seen["device_map"] == "cpu"


def test_report_rows_and_stored_gpu_results(tmp_path):
    row = {
        "method": "m",
        "backend": "b",
        "weight_bits": 4,
        "device": "cpu",
        "load_s": 1.0,
        "footprint_MB": 2.0,
        "saved_MB": 1.0,
        "perplexity": 9.0,
        "perplexity_after_reload": 9.0,
        "reload_ok": True,
        "tokens_per_s": 100,
    }
    assert qz.report_rows([row]) == [
        {"method": "m", "bits": 4, "saved MB": 1.0, "perplexity": 9.0, "reloaded": 9.0, "tokens/s": 100}
    ]
    stored = qz.stored_gpu_results()  # the committed file
    assert stored is None or (stored["stamp"]["device"] and stored["quantization"])
    assert qz.stored_gpu_results(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_text('{"stamp": {}}')
    with pytest.raises(CourseError, match="quantization_rows.py"):
        qz.stored_gpu_results(tmp_path / "bad.json")


def test_stored_gpu_run_has_its_own_baseline_and_explains_its_nf4_size(course_lm):
    """What chapter 13 says of the committed GPU run: it holds an fp32 row of its own, every row
    reloads, and its NF4 file is smaller than its CPU NF4 file by the unquantized weights (the tied
    embeddings and norms) going from 4 bytes to bfloat16's 2."""
    model, _ = course_lm
    stored = {r["method"]: r for r in qz.stored_gpu_results()["quantization"]}
    assert stored["fp32 (baseline)"]["device"] == "cpu"
    assert {r["device"] for r in stored.values()} == {"cpu", "cuda"}
    assert all(r["reload_ok"] for r in stored.values())
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.endswith("_proj"))
    unquantized = sum(p.numel() for p in model.parameters()) - linear
    shrink = stored["bnb NF4 + double quant"]["saved_MB"] - stored["bnb NF4, bf16 compute (GPU)"]["saved_MB"]
    assert abs(shrink - unquantized * 2 / 1e6) < 0.05

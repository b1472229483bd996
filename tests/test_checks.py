"""Error diagnostics: each check catches its failure and passes on the fixed case."""

import copy
import json
import logging

import pytest
import torch
from conftest import tiny_llama_config

from course_lib import checks
from course_lib.profiles import CourseError

# ----------------------------------------------------------------- showing errors


def test_expect_error_prints_type_and_message(capsys):
    with checks.expect_error(ValueError) as caught:
        raise ValueError("bad value")
    assert capsys.readouterr().out.strip() == "ValueError: bad value"
    assert isinstance(caught.error, ValueError) and caught.message == "ValueError: bad value"


def test_expect_error_fails_when_nothing_is_raised_and_lets_other_errors_through():
    with pytest.raises(CourseError, match="ran without error"):
        with checks.expect_error(ValueError):
            pass
    with pytest.raises(KeyError):
        with checks.expect_error(ValueError):
            raise KeyError("other")


def test_page_text_hides_absolute_paths_and_wraps():
    text = checks.page_text("LOAD REPORT from: /root/.cache/x/models/course-lm\n- MISSING:\t" + "word " * 40)
    assert "from: models/course-lm" in text and "/root" not in text and "\t" not in text
    assert all(len(line) <= 79 for line in text.splitlines())
    assert text.splitlines()[2].startswith("  word")


def test_describe_error_shows_the_whole_message_wrapped():
    text = checks.describe_error(RuntimeError("line one\nline two " + "word " * 100 + "end"), width=50)
    assert text.startswith("RuntimeError: line one line two") and text.endswith("end")
    assert "..." not in text and all(len(line) <= 50 for line in text.splitlines())


def test_describe_error_keeps_only_the_path_inside_an_installed_package():
    error = ImportError(
        "cannot import name 'AdamW' from 'transformers' "
        "(/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/transformers/__init__.py)"
    )
    text = checks.describe_error(error, width=None)
    assert text == "ImportError: cannot import name 'AdamW' from 'transformers' (transformers/__init__.py)"
    windows = checks.describe_error(OSError(r"C:\Python311\Lib\site-packages\peft\x.py"), width=None)
    assert windows == r"OSError: peft\x.py"
    # other paths are the message's own: kept
    assert checks.describe_error(OSError("no file /data/rows.json"), width=None).endswith("/data/rows.json")


def test_capture_log_collects_a_library_logger_and_restores_its_handlers():
    import logging

    from course_lib.display import capture_log

    logger = logging.getLogger("datasets")
    handlers = logger.handlers[:]
    with capture_log("datasets") as lines:
        logging.getLogger("datasets.load").error("`trust_remote_code` is not supported anymore.")
    assert lines == ["`trust_remote_code` is not supported anymore."]
    assert logger.handlers == handlers


# ----------------------------------------------------------------- tokenizer / model


def test_wrong_tokenizer_is_detected_with_advice(course_lm):
    from course_lib.models import load_tokenizer

    model, _ = course_lm
    wrong = load_tokenizer("encoder")
    rows = {r["check"]: r for r in checks.tokenizer_model_report(wrong, model)}
    assert rows["vocabulary size vs embedding rows"]["ok"] is False
    assert rows["eos token id"]["ok"] is False
    with pytest.raises(checks.TokenizerModelMismatch, match="same folder or repo"):
        checks.check_tokenizer_matches(wrong, model)
    with pytest.raises(IndexError):  # what the model itself says
        model(input_ids=wrong("Return the number of items.", return_tensors="pt")["input_ids"])
    assert (
        checks.try_forward(model, wrong, "Return the number of items.")
        == "IndexError: index out of range in self"
    )
    assert checks.try_forward(model, load_tokenizer("causal-lm"), "Return the number of items.").startswith(
        "no error"
    )


def test_matching_tokenizer_passes_and_added_tokens_need_a_resize(course_lm):
    from course_lib.models import load_tokenizer

    model, tokenizer = course_lm
    assert all(r["ok"] for r in checks.check_tokenizer_matches(tokenizer, model))
    grown, copy_of_model = load_tokenizer("causal-lm"), copy.deepcopy(model)
    grown.add_tokens(["brand_new_token_a", "brand_new_token_b"])
    with pytest.raises(checks.TokenizerModelMismatch, match="resize_token_embeddings"):
        checks.check_tokenizer_matches(grown, copy_of_model)
    copy_of_model.resize_token_embeddings(len(grown))
    checks.check_tokenizer_matches(grown, copy_of_model)


def test_wrong_tokenizer_runs_silently_on_easy_text_but_perplexity_shows_it(course_lm):
    from course_lib.models import load_tokenizer

    model, tokenizer = course_lm
    wrong, text = load_tokenizer("encoder"), "it is in the list of the"
    assert max(wrong(text)["input_ids"]) < model.config.vocab_size
    from course_lib.evaluation import text_perplexity

    def perplexity(tok):
        return text_perplexity(model, tok, [text])["perplexity"]

    assert perplexity(wrong) > 100 * perplexity(tokenizer)
    with pytest.raises(ValueError):
        text_perplexity(model, tokenizer, ["a"])


# ----------------------------------------------------------------- missing / unused weights


def test_load_report_for_a_new_head():
    from transformers import AutoModelForSequenceClassification

    import course_lib
    from course_lib.models import source_of

    handlers = logging.getLogger("transformers").handlers[:]
    _, report = checks.load_with_report(
        AutoModelForSequenceClassification, source_of(course_lib.resolve("encoder")), num_labels=4
    )
    assert logging.getLogger("transformers").handlers == handlers  # capture restored the handlers
    assert "MISSING" in report.log and "\x1b[" not in report.log
    assert {r["weights"] for r in report.rows} == {"classifier.weight", "classifier.bias"}
    assert not any(r["serious"] for r in report.rows)


def test_explain_loading_info_kinds():
    info = {
        "missing_keys": [
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.1.mlp.up_proj.weight",
            "score.weight",
        ],
        "unexpected_keys": [
            "model.layers.0.self_attn.q_proj.SCB",
            "model.layers.3.mlp.down_proj.SCB",
            "pooler.dense.bias",
            "model.extra.weight",
        ],
        "mismatched_keys": [("classifier.weight", (4, 8), (2, 8))],
    }
    rows = {(r["status"], r["weights"]): r for r in checks.explain_loading_info(info)}
    body = rows[("missing", "model.layers.*.mlp.up_proj.weight")]
    assert body["count"] == 2 and body["serious"]
    assert not rows[("missing", "score.weight")]["serious"]
    assert rows[("unexpected", "every quantized layer's .SCB")]["count"] == 2
    assert "quantization_config" in rows[("unexpected", "every quantized layer's .SCB")]["what to do"]
    assert not rows[("unexpected", "pooler.dense.bias")]["serious"]
    assert rows[("unexpected", "model.extra.weight")]["serious"]
    assert rows[("mismatched shape", "classifier.weight")]["serious"]


# ----------------------------------------------------------------- memory


def test_meta_model_counts_parameters_without_memory():
    from transformers import AutoModelForCausalLM

    config = tiny_llama_config()
    shapes_only = checks.meta_model(config)
    assert all(p.device.type == "meta" for p in shapes_only.parameters())
    real = AutoModelForCausalLM.from_config(config)
    assert checks.parameter_count(shapes_only) == sum(p.numel() for p in real.parameters())


def test_lora_parameter_count_agrees_with_peft():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from course_lib.env import ignore_checkpointing_rename

    config = tiny_llama_config()
    predicted = checks.lora_parameter_count(checks.meta_model(config), r=4)
    with ignore_checkpointing_rename():  # peft 0.21 reads a renamed transformers attribute
        peft_model = get_peft_model(
            AutoModelForCausalLM.from_config(config),
            LoraConfig(r=4, target_modules=list(checks.LORA_TARGETS)),
        )
    assert predicted == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    with pytest.raises(CourseError):
        checks.lora_parameter_count(checks.meta_model(config), r=4, target_modules=("c_attn",))
    with pytest.raises(ValueError):
        checks.lora_parameter_count(checks.meta_model(config), r=0)


def test_training_memory_estimate():
    def total(rows):
        return sum(r["bytes"] for r in rows)

    assert total(checks.estimate_training_memory(1000, "fp32")) == 16_000
    assert total(checks.estimate_training_memory(1000, "bf16")) == 18_000  # + fp32 master copy
    assert total(checks.estimate_training_memory(1000, "nf4", trainable_params=10)) == 500 + 160
    with pytest.raises(CourseError, match="LoRA"):
        checks.estimate_training_memory(1000, "nf4")
    with pytest.raises(CourseError):
        checks.estimate_training_memory(1000, "fp8")
    with pytest.raises(ValueError):
        checks.estimate_training_memory(0)
    rows = checks.estimate_training_memory(1000, activation_bytes=5)
    assert rows[-1] == {"component": "activations", "bytes": 5.0, "GB": 0.0}


def test_check_fits_and_fit_report():
    estimate = checks.estimate_training_memory(1_000_000_000)  # 16 GB
    with pytest.raises(checks.PredictedOutOfMemory, match="16.0 GB"):
        checks.check_fits(estimate, "a small card", available=8e9)
    assert checks.check_fits(estimate, available=20e9)["headroom_GB"] == 4.0
    rows = checks.fit_report({"big": estimate, "small": checks.estimate_training_memory(10)}, 8e9, "x")
    assert [r["fits"] for r in rows] == [False, True]
    assert rows[0]["message"].startswith("PredictedOutOfMemory") and rows[1]["message"] == ""
    assert checks.available_memory("cpu") > 0


def test_try_allocate():
    assert checks.try_allocate(1024).startswith("granted")
    assert checks.try_allocate(2**60).startswith("refused: RuntimeError")  # beyond any address space


# ----------------------------------------------------------------- distributed


def test_mismatched_collective_times_out_debug_names_it_and_the_fix_works():
    results = checks.run_collectives(timeout_s=2)
    assert set(results) == set(checks.COLLECTIVE_SCENARIOS)
    mismatched = results["mismatched"]
    for row in mismatched:
        assert not row["ok"] and row["seconds in collectives"] >= 1.9 and "/__w/" not in row["error"]
        # the first rank to time out exits; its partner may see that exit before its own timeout
        assert "Timed out" in row["error"] or "Connection closed by peer" in row["error"]
    assert any("Timed out" in row["error"] for row in mismatched)
    for row in results["mismatched, TORCH_DISTRIBUTED_DEBUG=DETAIL"]:
        assert not row["ok"] and "mismatch between collectives" in row["error"]
        assert "TensorOptions" not in row["error"] and "Op type:" in row["error"]
    for row in results["fixed"]:
        assert row["ok"] and row["all_reduce result"] == [3.0]


def test_run_collectives_rejects_bad_arguments():
    with pytest.raises(ValueError):
        checks.run_collectives(scenarios=("nope",))
    with pytest.raises(ValueError):
        checks.run_collectives(world_size=1)


def test_tidy_collective_error():
    raw = (
        "RuntimeError: [/src/gloo/unbound_buffer.cc:78] Timed out. CollectiveFingerPrint(OpType=ALLREDUCE, "
        "TensorDeviceTypes=TensorOptions(dtype=float (default), device=cpu)), but"
    )
    assert (
        checks.tidy_collective_error(raw)
        == "RuntimeError: Timed out. CollectiveFingerPrint(OpType=ALLREDUCE), but"
    )
    detail = "differ in the following aspects: Op type: ALLREDUCEvs REDUCE Tensor Tensor shapes: 1vs"
    assert checks.tidy_collective_error(detail).endswith("Op type: ALLREDUCEvs REDUCE")


# ----------------------------------------------------------------- NaN loss


def _blocks(n=16, length=16, vocab=64):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))


def test_fp16_weights_with_adamw_give_nan_and_the_guard_names_it(course_lm):
    model = copy.deepcopy(course_lm[0]).to(torch.float16)
    blocks = _blocks(vocab=model.config.vocab_size)
    with pytest.raises(checks.NonFiniteLoss, match="step 2") as caught:
        checks.guarded_training(model, torch.optim.AdamW(model.parameters(), lr=1e-3), blocks, steps=3)
    assert len(caught.value.losses) == 1 and "master weights" in str(caught.value)
    assert checks.nonfinite_parameters(model)


def test_fp32_weights_train_finitely(course_lm):
    model = copy.deepcopy(course_lm[0])
    blocks = _blocks(vocab=model.config.vocab_size)
    losses = checks.guarded_training(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), blocks, steps=3, max_grad_norm=1.0
    )
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert checks.nonfinite_parameters(model) == []
    with pytest.raises(ValueError):
        checks.guarded_training(model, None, blocks[:2], steps=1, batch_size=8)


# ----------------------------------------------------------------- repetition


def test_repeated_ngram_fraction():
    assert checks.repeated_ngram_fraction([1, 2, 3, 4, 5]) == 0.0
    assert checks.repeated_ngram_fraction([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(1 - 2 / 5)
    assert checks.repeated_ngram_fraction([1]) == 0.0
    with pytest.raises(ValueError):
        checks.repeated_ngram_fraction([1, 2], n=0)


def test_degeneration_fixes_reduce_repetition(course_lm):
    model, tokenizer = course_lm
    rows = {
        r["setting"]: r
        for r in checks.degeneration_table(
            model, tokenizer, ["Return a new dictionary", "Open the file"], max_new_tokens=40
        )
    }
    assert set(rows) == set(checks.DEGENERATION_SETTINGS)
    greedy = rows["greedy (no fix)"]["repeated 3-grams"]
    assert greedy > 0.1  # the pretrained course LM loops under plain greedy decoding
    assert rows["greedy + no_repeat_ngram_size=3"]["repeated 3-grams"] == 0.0
    assert rows["greedy + repetition_penalty=1.3"]["repeated 3-grams"] < greedy
    assert "\n" not in rows["greedy (no fix)"]["example"]


# ----------------------------------------------------------------- quantized reload


def _write_checkpoint(folder, tensors, config):
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config))


def test_checkpoint_problems_reads_the_header(tmp_path):
    tensors = {"w": torch.zeros(4, 4, dtype=torch.int8), "scale": torch.ones(4)}
    _write_checkpoint(tmp_path, tensors, {"model_type": "llama"})
    assert checks.safetensors_dtypes(tmp_path) == {"I8": 1, "F32": 1}
    assert "quantization_config" in checks.checkpoint_problems(tmp_path)[0]
    _write_checkpoint(
        tmp_path, tensors, {"model_type": "llama", "quantization_config": {"quant_method": "x"}}
    )
    assert checks.checkpoint_problems(tmp_path) == []
    _write_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"model_type": "llama"})
    assert checks.checkpoint_problems(tmp_path) == []


def test_verify_reload():
    assert checks.verify_reload(100.0, 101.0)["relative change"] == 0.01
    with pytest.raises(checks.ReloadMismatch, match="did not reload"):
        checks.verify_reload(100.0, 4000.0)


def test_int8_checkpoint_with_the_base_config_reloads_silently_wrong(course_lm, tmp_path):
    """The page's claim: no exception, but perplexity explodes; both checks catch it; the fix restores it."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    import course_lib
    from course_lib.assets.pretrain import block_perplexity, pack_blocks
    from course_lib.evaluation import corpus_ids
    from course_lib.models import source_of

    _, tokenizer = course_lm
    source = source_of(course_lib.resolve("causal-lm"))
    blocks = pack_blocks(corpus_ids(tokenizer, "validation"), 128)[:4]
    bnb_logger = logging.getLogger("bitsandbytes")
    level = bnb_logger.level
    with checks.quiet_int8_warnings():
        quantized = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map="cpu"
        )
        before = block_perplexity(quantized, blocks)
        quantized.save_pretrained(tmp_path)
        AutoConfig.from_pretrained(source).save_pretrained(tmp_path)
        reloaded, report = checks.load_with_report(AutoModelForCausalLM, str(tmp_path), device_map="cpu")
        after = block_perplexity(reloaded, blocks)
        assert checks.checkpoint_problems(tmp_path)
        assert any("quantization_config" in r["what to do"] for r in report.rows)
        with pytest.raises(checks.ReloadMismatch):
            checks.verify_reload(before, after)
        quantized.config.save_pretrained(tmp_path)
        restored = AutoModelForCausalLM.from_pretrained(str(tmp_path), device_map="cpu")
        checks.verify_reload(before, block_perplexity(restored, blocks))
    assert checks.checkpoint_problems(tmp_path) == []
    assert bnb_logger.level == level


# ----------------------------------------------------------------- QLoRA after an evaluation


def test_qlora_gradient_error_detects_the_cpu_repack(course_lm):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from course_lib import quantization
    from course_lib.env import ignore_checkpointing_rename
    from course_lib.models import source_of
    from course_lib.profiles import resolve

    source = source_of(resolve("causal-lm"))
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )
    base = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=nf4, device_map="cpu", dtype=torch.float32
    )
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    with ignore_checkpointing_rename():
        model = get_peft_model(
            base,
            LoraConfig(
                task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False
            ),
        )
    ids = torch.randint(0, 4096, (4, 32), generator=torch.Generator().manual_seed(0))
    assert checks.qlora_gradient_error(model, source, ids) < 1e-5
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after_eval = checks.qlora_gradient_error(model, source, ids)
    if quantization.cpu_repacks_4bit():
        assert after_eval > 0.05  # the bitsandbytes bug, seen by the check
        assert quantization.disable_cpu_repack(model) > 0
    else:
        print("no AVX-512 BF16 on this CPU: bitsandbytes does not repack, nothing to detect")
    assert checks.qlora_gradient_error(model, source, ids) < 1e-5

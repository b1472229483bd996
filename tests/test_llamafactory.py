"""course_lib.llamafactory: when the separate environment counts as built, what a failed build
leaves, and (when it is built) that its CLI runs."""

import json
import subprocess

import pytest

from course_lib import llamafactory as lf


def _finished(folder, pins, cli=True):
    """A fake finished build: the marker with ``pins`` (and the CLI file)."""
    (folder / "bin").mkdir(parents=True)
    (folder / lf.MARKER).write_text(json.dumps({"pins": pins, "build_seconds": 1.0}))
    if cli:
        lf.cli_path(folder).write_text("#!/bin/sh\n")
    return folder


def test_pins_name_the_release_the_course_torch_and_python():
    pins = lf.pins()
    assert pins["llamafactory"] == lf.LLAMAFACTORY_VERSION
    assert "+" not in pins["torch"] and pins["torch"][0].isdigit()
    assert pins["python"].count(".") == 1


def test_environment_lives_in_the_course_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    assert lf.environment_dir().parent.parent == tmp_path
    assert lf.cli_path() == lf.environment_dir() / "bin" / "llamafactory-cli"


@pytest.mark.parametrize(
    "state, reason",
    [
        ("missing", "not built"),
        ("interrupted", "not finished"),
        ("other pins", "built for"),
        ("no cli", "without llamafactory-cli"),
    ],
)
def test_status_says_why_not_and_how_to_build(tmp_path, state, reason):
    pins = {"llamafactory": "0.9.5", "torch": "2.13.0", "python": "3.11"}
    folder = tmp_path / "env"
    if state == "interrupted":
        (folder / "bin").mkdir(parents=True)
    elif state == "other pins":
        _finished(folder, pins | {"torch": "2.12.0"})
    elif state == "no cli":
        _finished(folder, pins, cli=False)
    status = lf.environment_status(folder, pins, strict=False)
    assert status["ready"] is False
    assert reason in status["reason"] and lf.BUILD_COMMAND in status["reason"]


def test_status_ready_when_the_marker_matches(tmp_path):
    pins = {"llamafactory": "0.9.5", "torch": "2.13.0", "python": "3.11"}
    status = lf.environment_status(_finished(tmp_path / "env", pins), pins)
    assert status == {"ready": True, "reason": "ready: llamafactory 0.9.5"}


def test_a_ready_environment_is_not_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    _finished(lf.environment_dir(), lf.pins())

    def install(*_):
        raise AssertionError("rebuilt a ready environment")

    monkeypatch.setattr(lf, "_install", install)
    assert lf.build_environment(log=lambda _: None) == lf.environment_dir()


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    _finished(lf.environment_dir(), lf.pins() | {"torch": "0.0"})  # stale: must be rebuilt

    def install(folder, *_):
        (folder / "bin").mkdir(parents=True)
        raise lf.BuildFailed("pip install llamafactory failed (exit 1): no network")

    monkeypatch.setattr(lf, "_install", install)
    with pytest.raises(lf.BuildFailed, match="no network"):
        lf.build_environment(log=lambda _: None)
    assert not lf.environment_dir().exists()
    assert "not built" in lf.environment_status(strict=False)["reason"]


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_environment_fails_instead_of_skipping(tmp_path, monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    pins = {"llamafactory": "0.9.5", "torch": "2.13.0", "python": "3.11"}
    with pytest.raises(lf.NotReady, match="not built.*CI=true"):
        lf.environment_status(tmp_path / "env", pins)
    # a built one is still just ready
    folder = _finished(tmp_path / "built", pins)
    assert lf.environment_status(folder, pins)["ready"] is True


@pytest.mark.parametrize("ci", [None, "", "false"])
def test_outside_ci_a_missing_environment_is_reported(tmp_path, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pins = {"llamafactory": "0.9.5", "torch": "2.13.0", "python": "3.11"}
    assert lf.environment_status(tmp_path / "env", pins)["ready"] is False


def test_assets_build_fails_in_ci_when_the_environment_cannot_be_built(monkeypatch, capsys):
    from course_lib import __main__ as cli
    from course_lib import assets, distributed

    def fail(*_, **__):
        raise lf.BuildFailed("pip install llamafactory failed (exit 1): no network")

    monkeypatch.setattr(assets, "BUILDERS", {})
    monkeypatch.setattr(distributed, "build_deepspeed_ops", lambda: 0.0)
    monkeypatch.setattr(lf, "build_environment", fail)
    monkeypatch.setenv("CI", "true")
    assert cli.main(["assets", "build"]) == 1
    assert "no network" in capsys.readouterr().err
    monkeypatch.delenv("CI")
    assert cli.main(["assets", "build"]) == 0
    assert "NOT built" in capsys.readouterr().out


def test_cli_environment_drops_what_would_redirect_the_other_python(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", "error")
    monkeypatch.setenv("PIP_CONSTRAINT", "/somewhere/stack.txt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # a kernel's
    env = lf.cli_environment()
    assert "PYTHONWARNINGS" not in env and "PIP_CONSTRAINT" not in env
    assert env["HF_HUB_OFFLINE"] == "1" and env["LLAMAFACTORY_VERBOSITY"] == "WARN"
    assert env["MPLBACKEND"] == "Agg"


def test_the_built_cli_runs(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # as in Jupyter
    status = lf.environment_status(strict=False)
    if not status["ready"]:
        if lf.in_ci():  # CI must run what chapter 8 runs: no green build over a skip
            pytest.fail(f"LLaMA-Factory environment {status['reason']} (CI=true)")
        pytest.skip(f"LLaMA-Factory environment: {status['reason']}")
    done = subprocess.run(
        [str(lf.cli_path()), "version"],
        capture_output=True,
        text=True,
        env=lf.cli_environment(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"version {lf.LLAMAFACTORY_VERSION}" in done.stdout
    # what `llamafactory-cli train` imports first (matplotlib included), from a notebook's environment
    assert lf.import_error(lf.environment_dir(), "llamafactory.train.tuner") is None

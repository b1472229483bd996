"""The budget knob (course_lib.budget): which budget a runtime gets, and what it scales."""

import pytest

from course_lib import budget
from course_lib.profiles import CourseError


@pytest.fixture
def runtime(monkeypatch):
    """Set the profile, the GPU and the override; returns the budget they give."""

    def choose(profile, gpu=False, override=None):
        monkeypatch.setenv("COURSE_PROFILE", profile)
        monkeypatch.setattr(budget, "_has_gpu", lambda: gpu)
        if override is None:
            monkeypatch.delenv(budget.BUDGET_ENV, raising=False)
        else:
            monkeypatch.setenv(budget.BUDGET_ENV, override)
        return budget.current()

    return choose


def test_only_a_cpu_runtime_under_the_hub_profile_is_shortened(runtime):
    assert runtime("offline") == "full"
    assert runtime("offline", gpu=True) == "full"
    assert runtime("hub", gpu=True) == "full"
    assert runtime("hub") == "short"
    assert runtime("offline", override="smoke") == "smoke"


def test_scaled_keeps_the_full_count_and_its_minimum(runtime):
    runtime("offline")
    assert budget.scaled(100) == 100
    runtime("offline", override="short")
    assert budget.scaled(100) == 25
    assert budget.scaled(3, minimum=2) == 2
    runtime("offline", override="smoke")
    assert [budget.scaled(n) for n in (1, 8, 40, 100)] == [1, 1, 4, 10]
    with pytest.raises(CourseError, match="below its minimum"):
        budget.scaled(1, minimum=2)


def test_an_unknown_budget_says_which_exist(runtime):
    with pytest.raises(CourseError, match="full, short, smoke"):
        runtime("offline", override="tiny")


def test_the_setup_cell_says_what_this_runtime_runs(runtime, capsys):
    import course_lib

    runtime("hub")
    course_lib.setup(seed=0)
    printed = capsys.readouterr().out
    assert "budget short: a quarter of the training steps" in printed
    assert max(len(line) for line in printed.splitlines()) <= 79

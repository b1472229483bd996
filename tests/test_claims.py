import pytest

from course_lib.claims import ClaimFailed, claim


def test_a_claim_that_holds_prints_its_numbers(capsys):
    assert claim("LoRA beats the baseline", 0.4 < 0.6, "0.400 < 0.600")
    assert capsys.readouterr().out == "✓ LoRA beats the baseline (0.400 < 0.600)\n"


def test_a_false_claim_stops_the_build(monkeypatch):
    monkeypatch.delenv("COURSE_CLAIMS", raising=False)
    with pytest.raises(ClaimFailed, match="does not hold on this run: loss falls"):
        claim("loss falls", 5.0 < 4.0, "4.000 -> 5.000")


def test_report_mode_prints_a_false_claim_and_goes_on(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_CLAIMS", "report")
    assert claim("loss falls", False) is False
    assert "✗ does not hold on this run: loss falls" in capsys.readouterr().out


def test_an_unknown_mode_says_what_to_use(monkeypatch):
    monkeypatch.setenv("COURSE_CLAIMS", "warn")
    with pytest.raises(Exception, match="enforce, report"):
        claim("x", False)


def test_colab_reports_by_default(monkeypatch, capsys):
    import sys
    import types

    monkeypatch.delenv("COURSE_CLAIMS", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    assert claim("loss falls", False) is False
    assert "✗" in capsys.readouterr().out

"""tests/page_checks.py itself: each thing a reader must never meet on a page is flagged, and a
clean page passes."""

import sys
from pathlib import Path

from course_lib.exercises import Feedback

sys.path.insert(0, str(Path(__file__).parent))
from page_checks import problems  # noqa: E402


def _markdown(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def _code(*outputs, source="x = 1"):
    return {"cell_type": "code", "metadata": {}, "source": source, "outputs": list(outputs)}


def _stream(text):
    return {"output_type": "stream", "name": "stdout", "text": text}


def _result(feedback):
    """What Jupyter stores for a cell that ends with a check's Feedback (its markdown repr)."""
    return {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {"text/markdown": feedback._repr_markdown_(), "text/plain": repr(feedback)},
    }


def _exercise_page(feedback):
    return {
        "cells": [
            _markdown("```{exercise} Something (easy)\n:label: ch99-ex1\nDo it.\n```"),
            _markdown("```{solution-start} ch99-ex1\n:class: dropdown\n```"),
            _code(_result(feedback), source="ch99.check(answer)"),
            _markdown("```{solution-end}\n```"),
        ]
    }


def test_a_solution_that_fails_its_check_fails_the_page():
    failing = problems(_exercise_page(Feedback(False, "the answer is off by one")), "ch99")
    assert failing == ["ch99 cell 2: a worked solution fails its exercise check (❌)"]
    assert problems(_exercise_page(Feedback(True, "right")), "ch99") == []


def test_a_failed_check_printed_in_a_solution_fails_too():
    page = _exercise_page(Feedback(True, "right"))
    page["cells"][2]["outputs"] = [_stream(f"{Feedback(False, 'not yet')}\n")]
    assert any("fails its exercise check" in p for p in problems(page))


def test_a_check_outside_a_solution_may_show_a_wrong_answer():
    # a chapter may show what a check says about a deliberately wrong answer
    page = _exercise_page(Feedback(True, "right"))
    page["cells"].append(_code(_result(Feedback(False, "what a wrong answer gets"))))
    assert problems(page) == []


def test_a_literal_backslash_n_in_a_table_is_flagged():
    table = "   text                 tokens\n0  Hello\\nworld           12\n"
    shown = {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {"text/plain": table},
    }
    found = problems({"cells": [_code(shown)]}, "ch07")
    assert found == ["ch07 cell 0: a literal \\n in the text: '0  Hello\\\\nworld           12'"]
    assert problems({"cells": [_code(_stream("Hello\nworld\n"))]}) == []
    # a printed repr shows a newline as \n on purpose (chapter 6 prints the template's lines so)
    assert problems({"cells": [_code(_stream("'<|im_start|>assistant\\n'\n"))]}) == []


def test_a_progress_bar_frozen_at_zero_is_flagged():
    frozen = "pretraining:   0%|          | 0/60 [00:00<?, ?it/s]\n"
    found = problems({"cells": [_code(_stream(frozen))]})
    assert len(found) == 1 and "frozen at 0%" in found[0]
    done = "pretraining: 100%|██████████| 60/60 [00:31<00:00,  1.9it/s]\n"
    assert problems({"cells": [_code(_stream(done))]}) == []
    # a bar updated with \r keeps only its final state on the page
    assert problems({"cells": [_code(_stream(frozen.rstrip("\n") + "\r" + done))]}) == []


def test_a_literal_backslash_n_in_an_html_table_is_flagged():
    import pandas as pd

    frame = pd.DataFrame([{"prompt": "Return the", "step 200": "value of\nthe object"}])
    output = {
        "output_type": "execute_result",
        "execution_count": 1,
        "metadata": {},
        "data": {"text/html": frame._repr_html_(), "text/plain": repr(frame)},
    }
    found = problems({"cells": [_code(output)]})
    assert len(found) == 1 and "a literal \\n in a table" in found[0]
    frame = pd.DataFrame([{"prompt": "Return the", "step 200": "value of ↵ the object"}])
    output["data"] = {"text/html": frame._repr_html_(), "text/plain": repr(frame)}
    assert problems({"cells": [_code(output)]}) == []


def test_a_bar_updated_across_outputs_is_read_as_the_book_merges_them():
    """Each tqdm update is its own stream output in the executed notebook; the book merges them
    (nb_merge_streams), so only the final state is checked. A bar interrupted by another stream
    stays frozen, and is flagged."""
    updates = [
        "\rbar:   0%|          | 0/60 [00:00<?, ?it/s]",
        "\rbar: 100%|██████████| 60/60 [00:31<00:00]",
        "\n",
    ]
    bar = [{"output_type": "stream", "name": "stderr", "text": text} for text in updates]
    assert problems({"cells": [_code(*bar)]}) == []
    interrupted = [bar[0], _stream("a print in between\n"), *bar[1:]]
    found = problems({"cells": [_code(*interrupted)]})
    assert len(found) == 1 and "frozen at 0%" in found[0]


def test_tables_show_a_line_break_in_a_cell_as_an_arrow():
    from course_lib.display import table

    frame = table([{"prompt": "p", "continuation": "first line\n\nsecond line\n"}])
    assert frame.loc[0, "continuation"] == "first line ↵ second line"
    assert (
        problems(
            {"cells": [_code({"output_type": "execute_result", "data": {"text/html": frame.to_html()}})]}
        )
        == []
    )

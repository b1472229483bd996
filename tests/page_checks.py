"""What a reader must never meet on a page, checked on an executed notebook (no browser needed).

Used by ``tests/test_book.py`` on every executed chapter, and by authors on one notebook:

    python tests/page_checks.py /tmp/03_trainer.ipynb

It prints one line per problem and exits 1 when there is any. The browser test checks the same
pages for sideways scrolling at 1280x900; these are the causes it can see without a browser.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

MAX_LINE = 79  # code and text output: what fits the content column at 1280 px (see _static/course.css)
NOISE = {
    "bitsandbytes kernel notice": re.compile(r"Failed to load CPU|kernels-community"),
    "library warning": re.compile(
        r"\b\w*(Warning|warn)\b:|warnings\.warn\(|UserWarning|FutureWarning"
        r"|DeprecationWarning"
    ),
    "profiler line": re.compile(r"USDT|STAGE:\d{4}"),
    "absolute path": re.compile(
        r"(?<![\w.~])/(root|home|tmp|work|usr|opt|var|private)/"
        r"|site-packages|[A-Z]:\\\\"
    ),
    "progress-bar debris": re.compile(r"\r"),
}
TRUNCATED = re.compile(r"…|\.\.\.</td>|\w\.\.\.\s*$", re.M)
STRAY_VALUE = re.compile(
    r"^(-?\d+(\.\d+)?|None|True|False|<[\w.]+ (object|at) .*>|\[?<matplotlib.*>\]?"
    r"|<Figure size .*>|Text\(.*\))$"
)
WIDGET = "application/vnd.jupyter.widget-view+json"
# What the book shows instead of a widget (_config.yml drops the widget view for html): a widget's own
# text/plain is its repr ("HBox(children=...)"), never a fallback.
STATIC_FALLBACK = {"text/html", "image/png", "image/svg+xml"}
_CARRIAGE = re.compile(r"^.*\r(?=[^\n])", re.M)  # what nbconvert/myst-nb keep of a \r-updated line
FAILED_CHECK = "❌"  # how course_lib.exercises.Feedback(False) renders
# Text-output debris: an escaped newline printed literally in a table (a repr of a string inside a
# cell; a printed repr shows one on purpose) and a progress bar frozen at its start (a bar whose
# later updates the book did not keep).
LITERAL_NEWLINE = re.compile(r"\\n")
FROZEN_BAR = re.compile(r"(^|\s)0%\|")
_SOLUTION = re.compile(r"\{solution-(start|end)\}")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _output_text(output: dict) -> tuple[str, str]:
    """(kind, text) of one output, with \\r-updated lines collapsed as the book renders them."""
    if output["output_type"] == "stream":
        text = _CARRIAGE.sub("", _text(output["text"]).replace("\r\n", "\n"))
        return "stream", text
    data = output.get("data", {})
    if "text/html" in data:
        return "html", _text(data["text/html"])
    if output["output_type"] == "error":
        return "error", "\n".join(output.get("traceback", []))
    return "plain", _text(data.get("text/plain", ""))


def _all_text(output: dict) -> list:
    """Every text an output carries (a stream's text, each mime type's value, a traceback)."""
    if output["output_type"] == "stream":
        return [output.get("text", "")]
    values = [v for v in output.get("data", {}).values() if isinstance(v, (str, list))]
    return values + [output.get("traceback", [])]


def merged_streams(outputs: list[dict]) -> list[dict]:
    """Consecutive outputs of the same stream joined into one, as the book shows them
    (_config.yml's ``nb_merge_streams: true``): a tqdm bar's updates, each its own output in the
    executed notebook, become one \r-updated line whose final state is what a reader sees."""
    merged: list[dict] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            output["output_type"] == "stream"
            and previous is not None
            and previous["output_type"] == "stream"
            and previous.get("name") == output.get("name")
        ):
            merged[-1] = {**previous, "text": _text(previous["text"]) + _text(output["text"])}
        else:
            merged.append(output)
    return merged


def problems(notebook: dict, name: str = "") -> list[str]:
    found = []
    in_solution = False  # between a ```{solution-start}``` and its ```{solution-end}``` (sphinx-exercise)
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "markdown":
            for directive in _SOLUTION.findall(_text(cell["source"])):
                in_solution = directive == "start"
        if cell["cell_type"] != "code":
            continue
        where = f"{name} cell {number}"
        for line in _text(cell["source"]).splitlines():
            if len(line) > MAX_LINE:
                found.append(f"{where}: code line of {len(line)} characters: {line[:60]}")
        for output in merged_streams(cell.get("outputs", [])):
            data = output.get("data", {})
            if WIDGET in data and not STATIC_FALLBACK & set(data):
                found.append(
                    f"{where}: a widget without a static fallback (blank in the book: use a text bar, "
                    "a plot, or course_lib.playground)"
                )
            kind, text = _output_text(output)
            if kind == "error":
                found.append(f"{where}: error output")
                continue
            for label, pattern in NOISE.items():
                if kind != "html" and (hit := pattern.search(text)):
                    line = text[max(0, hit.start() - 30) : hit.end() + 30].strip()
                    found.append(f"{where}: {label}: {line!r}")
            if TRUNCATED.search(text):
                found.append(f"{where}: text cut with an ellipsis")
            if in_solution and any(FAILED_CHECK in _text(value) for value in _all_text(output)):
                found.append(f"{where}: a worked solution fails its exercise check ({FAILED_CHECK})")
            if kind == "html" and (hit := LITERAL_NEWLINE.search(text)):
                # pandas writes a line break inside a cell as a literal \n, in HTML too
                cell_text = text[max(0, hit.start() - 30) : hit.end() + 30].strip()
                found.append(f"{where}: a literal \\n in a table: {cell_text!r}")
            if kind in ("stream", "plain"):
                for line in text.splitlines():
                    if len(line) > MAX_LINE:
                        found.append(f"{where}: output line of {len(line)} characters: {line[:60]}")
                    if kind == "plain" and LITERAL_NEWLINE.search(line):
                        found.append(f"{where}: a literal \\n in the text: {line.strip()[:60]!r}")
                    if FROZEN_BAR.search(line):
                        found.append(f"{where}: a progress bar frozen at 0%: {line.strip()[:60]!r}")
            if (
                output["output_type"] == "execute_result"
                and kind == "plain"
                and STRAY_VALUE.match(text.strip())
            ):
                found.append(f"{where}: stray return value {text.strip()[:40]!r} (end the line with ;)")
    return found


def main(paths: list[str]) -> int:
    found = []
    for path in paths:
        found += problems(json.loads(Path(path).read_text()), Path(path).name)
    print("\n".join(found) or "no problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

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


def problems(notebook: dict, name: str = "") -> list[str]:
    found = []
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        where = f"{name} cell {number}"
        for line in _text(cell["source"]).splitlines():
            if len(line) > MAX_LINE:
                found.append(f"{where}: code line of {len(line)} characters: {line[:60]}")
        for output in cell.get("outputs", []):
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
            if kind in ("stream", "plain"):
                for line in text.splitlines():
                    if len(line) > MAX_LINE:
                        found.append(f"{where}: output line of {len(line)} characters: {line[:60]}")
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

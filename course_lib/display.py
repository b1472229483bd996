"""Tables and charts for notebooks. pandas/matplotlib are imported lazily."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

LINE_BREAK = re.compile(r"[ \t]*\r?\n\s*")


def one_line(value):
    """A string with its line breaks shown as `` ↵ ``; anything else unchanged. A table cell keeps
    one line: pandas would print a break inside a cell as a literal ``\\n``, in HTML too."""
    if not isinstance(value, str) or "\n" not in value:
        return value  # untouched: a token's leading space is part of what a table shows
    return LINE_BREAK.sub(" ↵ ", value.strip())


def table(rows: list[dict], index: str | None = None):
    """A pandas DataFrame from a list of row dicts (renders as an HTML table in the book); a line
    break inside a text cell is shown as ``↵`` (:func:`one_line`)."""
    import pandas as pd

    frame = pd.DataFrame([{key: one_line(value) for key, value in row.items()} for row in rows])
    return frame.set_index(index) if index else frame


def bar_chart(rows: list[dict], x: str, y: str, title: str, ylabel: str | None = None, log: bool = False):
    """A labelled bar chart of ``y`` per ``x``; each bar is annotated with its value.

    ``log=True`` uses a log scale, for values that span orders of magnitude.
    """
    import matplotlib.pyplot as plt

    labels, values = [str(r[x]) for r in rows], [r[y] for r in rows]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(labels)), 3.2))
    bars = ax.bar(labels, values, color="#4c72b0")
    ax.bar_label(bars, labels=[f"{v:,.4g}" for v in values])
    if log:
        ax.set_yscale("log")
    if max(len(label) for label in labels) > 12:
        ax.tick_params(axis="x", labelrotation=20)
        plt.setp(ax.get_xticklabels(), ha="right")
    ax.set_title(title)
    ax.set_ylabel(ylabel or y)
    ax.margins(y=0.2)
    fig.tight_layout()
    return fig


def heatmap(matrix, labels: list[str], title: str):
    """A square matrix (e.g. cosine similarities) with row/column labels and values."""
    import matplotlib.pyplot as plt

    values = [[float(v) for v in row] for row in matrix]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 1))
    image = ax.imshow(values, cmap="viridis", vmin=min(map(min, values)), vmax=1.0)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.7 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def line_chart(
    series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str, markers: tuple[str, ...] = ()
):
    """Several named ``(xs, ys)`` lines on one axis; names in ``markers`` are drawn as points."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), "o--" if name in markers else "-", label=name, markersize=5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig


def grouped_bar_chart(rows: list[dict], x: str, ys: list[str], title: str, ylabel: str):
    """Bars for several numeric columns ``ys`` side by side for each ``x``, values annotated."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    width = 0.8 / len(ys)
    for index, column in enumerate(ys):
        positions = [i + (index - (len(ys) - 1) / 2) * width for i in range(len(rows))]
        bars = ax.bar(positions, [r[column] for r in rows], width, label=column)
        ax.bar_label(
            bars,
            labels=[f"{r[column]:,.0f}" if abs(r[column]) >= 100 else f"{r[column]:.3g}" for r in rows],
            fontsize=8,
        )
    ax.set_xticks(range(len(rows)), [str(r[x]) for r in rows])
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(_ANSI.sub("", record.getMessage()))


def capture_transformers_log() -> contextlib.AbstractContextManager[list[str]]:
    """Collect what the ``transformers`` logger prints (warnings and up) instead of printing it."""
    return capture_log("transformers")


@contextlib.contextmanager
def capture_log(name: str) -> Iterator[list[str]]:
    """Collect what the library logger ``name`` (``"transformers"``, ``"datasets"``) prints
    instead of printing it: the page shows the messages it chooses, wrapped to fit."""
    logger = logging.getLogger(name)
    capture = _Capture()
    saved = logger.handlers[:]
    for handler in saved:
        logger.removeHandler(handler)
    logger.addHandler(capture)
    try:
        yield capture.lines
    finally:
        logger.removeHandler(capture)
        for handler in saved:
            logger.addHandler(handler)

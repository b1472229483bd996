"""Sliders around a function the page defines: the UI of the course's playgrounds, not their lesson.

The chapter writes the function (the Hugging Face calls are the lesson) and hands it over with one
control per argument, written like ``ipywidgets.interact``'s abbreviations::

    playground(generate_text, preset=["greedy", "balanced"], temperature=(0.1, 2.0, 0.1))

A string gives a text box starting with that text, a list a dropdown, ``(min, max, step)`` a slider
(integer or float, from the numbers' type), and any ipywidgets control is used as it is. Dropdowns
and sliders start at the function's defaults. Moving a control calls the function again and shows its result (a string, a dict, or a
list of row dicts) under the controls.

Debouncing: sliders and text boxes send their value once, on release or Enter
(``continuous_update=False``), and results are cached per combination of values, so going back to a
setting is instant.

ipywidgets render from JavaScript that a static page does not run, so the object's
``_repr_mimebundle_`` carries, next to the live widget, an HTML rendering of the default state with a
one-line note; the book (``nb_mime_priority_overrides`` in ``_config.yml``) shows that one, while
Jupyter and Colab show the live widget.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable, Sequence
from typing import Any

NOTE = "Interactive in Jupyter or Colab: run the notebook to move the sliders."
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _control(name: str, spec: Any, default: Any):
    """One ipywidgets control for argument ``name`` from an interact-style ``spec``."""
    import ipywidgets as widgets

    style = {"description_width": "9em"}
    wide = widgets.Layout(width="95%", max_width="42em")
    if isinstance(spec, widgets.ValueWidget):
        if default is not inspect.Parameter.empty:
            spec.value = default
        return spec
    if isinstance(spec, str):  # the text box starts with this text, as in interact
        return widgets.Text(value=spec, description=name, continuous_update=False, style=style, layout=wide)
    if isinstance(spec, list) and spec:
        value = spec[0] if default is inspect.Parameter.empty else default
        if value not in spec:
            raise ValueError(f"{name}: the default {value!r} is not one of the choices {spec}.")
        return widgets.Dropdown(options=spec, value=value, description=name, style=style)
    if isinstance(spec, tuple) and len(spec) == 3 and all(isinstance(v, (int, float)) for v in spec):
        low, high, step = spec
        value = low if default is inspect.Parameter.empty else default
        if not low <= value <= high:
            raise ValueError(f"{name}: the default {value!r} is outside ({low}, {high}).")
        floats = any(isinstance(v, float) for v in (*spec, value))
        slider = widgets.FloatSlider if floats else widgets.IntSlider
        return slider(
            value=value,
            min=low,
            max=high,
            step=step,
            description=name,
            continuous_update=False,
            style=style,
            layout=wide,
        )
    raise ValueError(
        f"{name}: give a string (text box), a non-empty list (dropdown), a (min, max, step) tuple "
        f"(slider) or an ipywidgets control, not {spec!r}."
    )


def result_html(result: Any) -> str:
    """HTML for what the function returned: text as wrapped preformatted text, a dict as a two-column
    table, a list of row dicts as a table."""
    if isinstance(result, str):
        return f'<pre style="white-space: pre-wrap">{html.escape(result)}</pre>'
    if isinstance(result, dict):
        result = [{"": key, "value": _format(value, quote=False)} for key, value in result.items()]
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        from .display import table

        return table(result).to_html(index=False, escape=True, border=0)
    return f"<pre>{html.escape(repr(result))}</pre>"


def result_text(result: Any) -> str:
    """Plain text for what the function returned (the fallback of a frontend without HTML)."""
    if isinstance(result, str):
        return result
    if isinstance(result, dict):
        return "\n".join(f"{key}: {_format(value, quote=False)}" for key, value in result.items())
    if isinstance(result, list) and all(isinstance(row, dict) for row in result):
        from .display import table

        return table(result).to_string(index=False)
    return repr(result)


def _format(value: Any, quote: bool = True) -> str:
    """A value as a reader wants it: 4 significant digits, thousands separators, quoted text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return repr(value) if quote and isinstance(value, str) else str(value)


class Playground:
    """Controls for ``function``'s arguments and the function's result under them (see the module doc)."""

    def __init__(self, function: Callable[..., Any], controls: dict[str, Any], title: str = ""):
        import ipywidgets as widgets

        parameters = inspect.signature(function).parameters
        unknown = set(controls) - set(parameters)
        if unknown:
            raise ValueError(
                f"{sorted(unknown)} are not arguments of {function.__name__}{inspect.signature(function)}."
            )
        self.function = function
        self.title = title
        self.controls = {
            name: _control(name, spec, parameters[name].default) for name, spec in controls.items()
        }
        self.calls = 0  # how often the function ran (the cache answers the rest)
        self._cache: dict[tuple, Any] = {}
        self.output = widgets.HTML()
        self.status = widgets.HTML()
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        header = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        self.widget = widgets.VBox([*header, *self.controls.values(), self.status, self.output])
        self.refresh(raise_errors=True)  # the default state is what the book shows: it must work
        self.default_values = self.values()
        self.default_result = self.result

    def values(self) -> dict[str, Any]:
        """The controls' current values, by argument name."""
        return {name: control.value for name, control in self.controls.items()}

    def set(self, **values: Any) -> Any:
        """Move controls as a reader would (their observers run) and return the new result."""
        for name, value in values.items():
            self.controls[name].value = value
        return self.result

    def refresh(self, raise_errors: bool = False) -> None:
        """Call the function with the current values (or take the cached result) and show it. An
        error is shown under the controls (a reader's setting, not a crash) unless ``raise_errors``."""
        values = self.values()
        key = tuple(values.items())
        if key not in self._cache:
            self.status.value = "<i>running...</i>"
            try:
                self._cache[key] = self.function(**values)
                self.calls += 1
            except Exception as error:
                if raise_errors:
                    raise
                self.status.value = f"<b>{type(error).__name__}</b>: {html.escape(str(error))}"
                return
        self.result = self._cache[key]
        self.status.value = ""
        self.output.value = result_html(self.result)

    def _changed(self, change) -> None:
        self.refresh()

    def static_html(self) -> str:
        """The default state as HTML: the note, the settings, and the result they gave."""
        settings = ", ".join(f"{name} = {html.escape(_format(v))}" for name, v in self.default_values.items())
        title = f"<b>{html.escape(self.title)}</b><br>" if self.title else ""
        return (
            f'<div class="course-playground">{title}<p><i>{html.escape(NOTE)}</i><br>'
            f"Default settings: <code>{settings}</code></p>{result_html(self.default_result)}</div>"
        )

    def static_text(self) -> str:
        settings = ", ".join(f"{name} = {_format(v)}" for name, v in self.default_values.items())
        return f"{NOTE}\nDefault settings: {settings}\n{result_text(self.default_result)}"

    def _repr_mimebundle_(self, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None):
        bundle = {"text/plain": self.static_text(), "text/html": self.static_html()}
        view = self.widget._repr_mimebundle_()  # the live widget, for Jupyter and Colab
        bundle[WIDGET_VIEW] = view[WIDGET_VIEW]
        return bundle


def playground(function: Callable[..., Any], title: str = "", **controls: Any) -> Playground:
    """A :class:`Playground` for ``function``, one control per keyword (see the module doc)."""
    return Playground(function, controls, title=title)

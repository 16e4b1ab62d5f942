"""Text panes for what changes on every tick (a status line, a job's progress): a new text goes out as the
text alone.

Panel's Markdown and Alert send every property of the pane's model when their text changes, the stylesheets
among them; a stylesheet is a Bokeh model, so Bokeh re-walks the whole document for models that came or went,
on every change (measured with py-spy on a served lab of 20 sessions: the status lines' updates were two fifths
of the event loop's time; 0.68 ms an update for a dashboard of 322 models, 0.18 ms for a widget's text).
These send the text only; their other settings go out as Panel sends them (each on its own change).
Relies on Panel's `_update` (its pane's hook for a new object) and `_process_param_change`, as StopSlider
relies on its slider.
"""
from __future__ import annotations

import panel as pn


class _TextOnly:
    def _update(self, ref, model) -> None:
        # the object alone through Panel's own conversion (Markdown to HTML): the same text as all the properties'
        # (tests/test_text.py), without computing the others
        text = self._process_param_change({"object": self.object}).get("text")
        if text is not None and model.text != text:
            model.text = text


class Text(_TextOnly, pn.pane.Markdown):
    """A Markdown pane whose text changes often."""


class Status(_TextOnly, pn.pane.Alert):
    """An Alert whose text changes often (the dashboard's status line)."""

"""The text panes for what changes every tick: the same HTML as Panel's panes, sent as the text alone."""
from __future__ import annotations

import panel as pn
import pytest
from bokeh.document import Document

from trainlab.widgets.text import Status, Text

TEXTS = ["**running** · step 12 · lr 0.05", "a &lt; b\n\n⚠ 91% of *fc1*'s ReLUs are dead", "", "line\n\nRejected: x"]


@pytest.mark.parametrize("ours, panels", [(Text, pn.pane.Markdown), (Status, pn.pane.Alert)])
def test_a_new_text_is_what_panels_own_pane_shows_and_goes_out_alone(ours, panels, monkeypatch):
    pane, reference = ours(""), panels("")
    model, ref_model = pane.get_root(Document()), reference.get_root(Document())
    sent = {id(model): [], id(ref_model): []}
    update = type(model).update

    def recorded(self, **props):  # Panel's panes send every property of a new text through it
        sent.setdefault(id(self), []).append(props)
        update(self, **props)

    monkeypatch.setattr(type(model), "update", recorded)
    for text in TEXTS:
        pane.object, reference.object = text, text
        assert model.text == ref_model.text
    assert len(sent[id(ref_model)]) == len(TEXTS)  # every property, its stylesheets (Bokeh models) among them
    assert all("stylesheets" in props for props in sent[id(ref_model)])
    assert sent[id(model)] == []  # ours set the text alone


def test_the_status_line_keeps_its_colour_changes():
    pane = Status("x", alert_type="secondary")
    model = pane.get_root(Document())
    pane.alert_type = "danger"
    assert "alert-danger" in model.css_classes

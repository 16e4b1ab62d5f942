"""A collapsed Card whose contents join it when it is first opened.

A served page pays about a millisecond of server time per Bokeh model it holds (built, then serialized),
whether or not the model is shown. The dashboard's two collapsed cards ("More" and Export) were a fifth
of a page's build (cProfile of Panel's get_root and the document's to_json), so their contents are
only put in when someone opens them; they stay once opened.
"""
from __future__ import annotations

import panel as pn


def card(*objects, **params) -> pn.Card:
    """A `pn.Card` of `objects`, collapsed unless `collapsed=False` is given, holding them once opened."""
    shown = pn.Card(collapsed=params.pop("collapsed", True), **params)

    def fill(*_) -> None:
        if not shown.collapsed:
            shown.param.unwatch(watcher)
            shown.objects = list(objects)

    watcher = shown.param.watch(fill, "collapsed")
    fill()
    return shown

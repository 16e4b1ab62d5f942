"""A page of the dashboard as the server sees it, without a browser: Bokeh's wire protocol over a websocket.

A classroom's browsers run on the students' laptops; on a 2-core test machine 20 Chromium pages need 40
CPU-seconds just to draw themselves, so a load test with real browsers measures the machine, not the server.
This client does to the server what a page does (GET the page and its scripts, open the websocket, pull the
document, click buttons, move sliders, receive every patch) and keeps only what the load test reads: the
columns streamed to the plots and the status line. It decodes messages with Bokeh's own Receiver and builds no
Document, so 20 of them cost a fraction of a core.
"""
from __future__ import annotations

import base64
import json
import re
import time
from html import unescape
from itertools import count
from urllib.parse import urljoin

import numpy as np
from bokeh.protocol import Protocol
from bokeh.protocol.receiver import Receiver
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

STATUS = re.compile(r"step (\d+) · lr")


def _objects(x, into: dict) -> dict:
    """Every model representation ({"type": "object", "id": ...}) in a JSON value, by id."""
    if isinstance(x, dict):
        if x.get("type") == "object" and "id" in x:
            into[x["id"]] = x
        for v in x.values():
            _objects(v, into)
    elif isinstance(x, list):
        for v in x:
            _objects(v, into)
    return into


def _entries(m) -> dict:
    """A serialized map (Bokeh's {"type": "map", "entries": [...]}) or a plain object, as a dict."""
    if isinstance(m, dict) and m.get("type") == "map":
        return dict(m.get("entries", []))
    return dict(m or {})


class Page:
    """One session: `await Page.open(url)`, then `click`, `move`, and the plotted columns as patches arrive."""

    def __init__(self, url: str):
        self.url, self.ids, self.objects = url, count(1), {}
        self.columns: dict[str, dict[str, list]] = {}  # ColumnDataSource id -> column -> values plotted
        self.status_step: int | None = None
        self.changed = 0.0  # perf_counter of the newest patch
        self._status_ids: set[str] = set()

    @classmethod
    async def open(cls, url: str, scripts: bool = True) -> "Page":
        """GET the page (and, as a browser does, the scripts it names), connect, pull the document."""
        self = cls(url)
        http = AsyncHTTPClient()
        html = (await http.fetch(url, request_timeout=300)).body.decode()
        if scripts:  # each browser context fetches them anew: the server pays for that too
            for src in re.findall(r'<script[^>]+src="([^"]+)"', html):
                await http.fetch(urljoin(url, src), request_timeout=300, raise_error=False)
        token = re.search(r'"token":"([^"]+)"', html)
        if token is None:
            raise RuntimeError(f"no session token in the page at {url} (a full lab's message?): {html[:300]}")
        ws_url = urljoin(url, "ws").replace("http", "ws", 1)
        self.ws = await websocket_connect(HTTPRequest(ws_url, request_timeout=300),
                                          subprotocols=["bokeh", token.group(1)], max_message_size=1 << 30)
        self.rx = Receiver(Protocol())
        await self._receive()  # ACK
        await self._send("PULL-DOC-REQ", {})
        reply = await self._receive()
        self._absorb(reply.content, reply)
        # BokehJS sends this once it has drawn the document; Panel's onload callbacks (the plots' feeds) wait on it
        await self._event("document_ready", {})
        return self

    async def _event(self, name: str, values: dict) -> None:
        event = {"type": "event", "name": name, "values": values}
        await self._send("PATCH-DOC", {"events": [{"kind": "MessageSent", "msg_type": "bokeh_event",
                                                   "msg_data": event}]})

    async def _send(self, kind: str, content: dict) -> None:
        header = {"msgid": str(next(self.ids)), "msgtype": kind}
        for part in (header, {}, content):
            await self.ws.write_message(json.dumps(part))

    async def _receive(self):
        while True:
            fragment = await self.ws.read_message()
            if fragment is None:
                raise ConnectionError("the server closed the session")
            message = await self.rx.consume(fragment)
            if message is not None:
                return message

    async def listen(self) -> None:
        """Apply the server's patches until the connection closes (run as a task)."""
        try:
            while True:
                message = await self._receive()
                if message.header["msgtype"] == "PATCH-DOC":
                    self._absorb(message.content, message)
                    self._patch(message.content.get("events", []), message)
                    self.changed = time.perf_counter()
        except (ConnectionError, OSError):
            pass

    def _absorb(self, content, message) -> None:
        """New models (the pulled document, or models a patch brings): keep them, and their columns."""
        for oid, rep in _objects(content, {}).items():
            self.objects[oid] = rep
            attrs = rep.get("attributes", {})
            if rep.get("name") == "ColumnDataSource" and "data" in attrs:
                self.columns[oid] = self._data(attrs["data"], message)
            text = attrs.get("text")
            if isinstance(text, str) and STATUS.search(unescape(text)):
                self._status_ids.add(oid)
                self._status(text)

    def _data(self, data, message) -> dict[str, list]:
        return {k: list(self._array(v, message)) for k, v in _entries(data).items()}

    @staticmethod
    def _array(v, message):
        if isinstance(v, dict) and v.get("type") == "ndarray":
            raw = v["array"].get("data") if isinstance(v["array"], dict) else v["array"]
            if isinstance(raw, dict):  # a buffer sent beside the message
                raw = next(b.data for b in message.buffers if b.id == raw["id"])
            elif isinstance(raw, str):
                raw = base64.b64decode(raw)
            else:
                return list(raw)
            return np.frombuffer(raw, dtype=v["dtype"]).tolist()
        return list(v) if isinstance(v, (list, tuple)) else [v]

    def _status(self, text: str) -> None:
        found = STATUS.search(unescape(text))
        if found:
            self.status_step = int(found.group(1))

    def _patch(self, events: list, message) -> None:
        for e in events:
            oid = (e.get("model") or {}).get("id")
            if e.get("kind") == "ColumnsStreamed" and oid in self.columns:
                rollover = e.get("rollover")
                for k, v in self._data(e["data"], message).items():
                    col = self.columns[oid].setdefault(k, [])
                    col.extend(v)
                    if rollover:
                        del col[:-rollover]
            elif e.get("kind") == "ColumnDataChanged" and oid in self.columns:
                self.columns[oid].update(self._data(e.get("data", e.get("new")), message))
            elif e.get("kind") == "ModelChanged":
                if oid in self.objects and not isinstance(e.get("new"), (dict, list)):
                    self.objects[oid].setdefault("attributes", {})[e["attr"]] = e["new"]
                if e.get("attr") == "data" and oid in self.columns:
                    self.columns[oid] = self._data(e["new"], message)
                elif e.get("attr") == "text" and oid in self._status_ids:
                    self._status(e["new"])
                elif e.get("attr") == "text" and isinstance(e.get("new"), str) and STATUS.search(unescape(e["new"])):
                    self._status_ids.add(oid)
                    self._status(e["new"])

    def plotted(self, column: str) -> list:
        """The longest plotted series of `column` (the history's plot, not a one-point marker)."""
        series = [c[column] for c in self.columns.values() if c.get(column)]
        return max(series, key=len) if series else []

    def find(self, name: str, **attrs) -> str:
        for oid, rep in self.objects.items():
            a = rep.get("attributes", {})
            if rep.get("name", "").endswith(name) and all(a.get(k) == v for k, v in attrs.items()):
                return oid
        raise LookupError(f"no {name} with {attrs} on the page")

    async def click(self, label: str) -> None:
        """A press of the button labelled `label`, as BokehJS sends it."""
        await self._event("button_click", {"model": {"id": self.find("Button", label=label)}})

    def slider(self, label: str) -> str:
        """The Slider of a labelled discrete slider (Panel's Column of a "label: <b>value</b>" Div and a Slider)."""
        for rep in self.objects.values():
            if not rep.get("name", "").endswith("Column"):
                continue
            kids = [self.objects.get(k.get("id"), {}) for k in rep.get("attributes", {}).get("children", [])]
            names = [k.get("name") for k in kids]
            if "Div" in names and "Slider" in names:
                text = unescape(str(kids[names.index("Div")].get("attributes", {}).get("text", "")))
                if re.match(rf"\s*{re.escape(label)}\s*:", text):
                    return kids[names.index("Slider")]["id"]
        raise LookupError(f"no slider labelled {label!r} on the page")

    async def move(self, label: str, stops: int) -> None:
        """The slider labelled `label` moved by `stops` (a key press is one), value and value_throttled as
        noUiSlider's slide and change events set them."""
        oid = self.slider(label)
        attrs = self.objects[oid]["attributes"]
        value = min(max(attrs["value"] + stops, attrs.get("start", 0)), attrs["end"])
        attrs["value"] = value
        await self._send("PATCH-DOC", {"events": [
            {"kind": "ModelChanged", "model": {"id": oid}, "attr": a, "new": value} for a in ("value", "value_throttled")]})

    def close(self) -> None:
        self.ws.close()

"""One open/close cycle of N protocol pages (bokeh_client.Page) on a served dashboard, printed as one JSON line.

All N open at once; each presses Start; after `train` seconds each in turn moves its lr slider one stop left
and waits for the plotted lr to change, as benchmarks/classroom.py does in its browser pages. Run by
classroom.py in a process of its own, so its own work never delays the browser pages it drives beside it.

    python benchmarks/parts/classroom_pages.py URL N TRAIN_SECONDS
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bokeh_client import Page  # noqa: E402


async def opened(url: str) -> tuple[Page, float]:
    t0 = time.perf_counter()
    page = await Page.open(url)
    page.find("Button", label="Start")  # interactive: the document with its Start button has arrived
    return page, time.perf_counter() - t0


async def slider(page: Page, timeout: float = 30.0) -> float:
    before = (page.plotted("lr") or [None])[-1]
    start = time.perf_counter()
    await page.move("lr", -1)
    while time.perf_counter() - start < timeout:
        now = page.plotted("lr")
        if now and before is not None and now[-1] != before:
            break
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


async def cycle(url: str, n: int, train: float) -> dict:
    cpu0 = time.process_time()
    results = await asyncio.gather(*(opened(url) for _ in range(n)))
    pages = [p for p, _ in results]
    listeners = [asyncio.create_task(p.listen()) for p in pages]
    out = {"interactive": [t for _, t in results], "latency": [], "lag": [], "steps": []}
    if train > 0:
        for p in pages:
            await p.click("Start")
        await asyncio.sleep(train)
        for p in pages:
            if p.status_step is not None:
                out["lag"].append(p.status_step - int(max(p.plotted("step") or [0])))
            out["latency"].append(await slider(p))
        out["steps"] = [int(max(p.plotted("step") or [0])) for p in pages]
    for p in pages:
        p.close()
    for t in listeners:
        t.cancel()
    out["cpu"] = time.process_time() - cpu0
    return out


if __name__ == "__main__":
    url, n, train = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(cycle(url, n, train))), flush=True)

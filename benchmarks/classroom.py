"""A class on one small server: N browser sessions on `trainlab serve`, each training, each moving its lr slider.

Measured, on loopback with headless Chromium (one page per session, each in its own browser context):
- time to interactive: from a page's navigation to its Start button being visible (all N opened at once);
- the lr slider: one key press in each page in turn while all N train, and the time until the plotted lr
  (the history's `lr` column streamed to the page) shows the new value; p50 and p95 over the pages;
- the status line against the plots: the step the status reports minus the last plotted step;
- memory: the server's RSS before the pages open and 60 s after they close, over `--cycles` open/close cycles;
- the server log: tracebacks.
Targets (issue 17): interactive <= 5 s, slider p95 <= 250 ms, status lag <= 1 s of steps, RSS back within 10 %
of its baseline, no traceback.

The browsers share the server's cores here: each page costs its renderer about 2 CPU-seconds to open and the
server about 0.6, so with 20 pages on 2 cores the browsers alone need 20 s to open them (printed), and they keep
1.5 cores busy drawing while the runs train. Measured with /proc's schedstat while 20 pages trained: the server's
threads waited on the run queue twelve times as long as they ran (its event loop 7.4 s of 10 s), so the figures
are the machine's more than the server's. Putting the browsers at a lower priority, or the server at a higher
one, does not stand in for laptops of their own: whichever side is starved answers late (tried both ways,
through Linux's per-session autogroups, where nice values alone do nothing).

    python benchmarks/classroom.py [--sessions 20] [--cycles 3] [--train 10]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the browser tests' page helpers: one way to read a page

from conftest import answers, free_port  # noqa: E402
from test_browser import COLUMNS_JS, HANDLE_JS  # noqa: E402

STATUS_JS = r"""() => {
  const all = [];
  const walk = (root) => { for (const el of root.querySelectorAll("*")) { all.push(el); if (el.shadowRoot) walk(el.shadowRoot); } };
  walk(document);
  for (const el of all) { const t = el.textContent || ""; const m = t.match(/step (\d+) · lr/); if (m && el.children.length < 3) return Number(m[1]); }
  return null;
}"""


def rss(pid: int) -> float:
    """Resident memory of a process, MiB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def browser_cpu_seconds() -> float:
    """CPU time of every Chromium process on the machine (the pages' renderers share the server's cores)."""
    total = 0.0
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and "chrom" in (d / "comm").read_text():
                total += cpu_seconds(int(d.name))
        except (OSError, ValueError, IndexError):
            pass  # gone meanwhile
    return total


def lr_plotted(page) -> list[float]:
    sources = [s for s in (page.evaluate(COLUMNS_JS, "lr") or []) if s]
    return max(sources, key=len) if sources else []


def steps_plotted(page) -> int:
    sources = [s for s in (page.evaluate(COLUMNS_JS, "step") or []) if s]
    return int(max(max(s) for s in sources)) if sources else 0


def cycle(browser, url: str, n: int, train: float, server_pid: int) -> dict:
    contexts = [browser.new_context(viewport={"width": 1280, "height": 900}) for _ in range(n)]
    pages = [c.new_page() for c in contexts]
    t0 = {}
    opening = cpu_seconds(server_pid), browser_cpu_seconds()
    for i, p in enumerate(pages):  # all at once: navigation starts, nobody waits for the page before
        t0[i] = time.perf_counter()
        p.goto(url, wait_until="commit", timeout=120_000)
    ready = {}
    deadline = time.perf_counter() + 300
    while len(ready) < n and time.perf_counter() < deadline:
        for i, p in enumerate(pages):
            if i not in ready and p.get_by_role("button", name="Start", exact=True).is_visible():
                ready[i] = time.perf_counter() - t0[i]
        time.sleep(0.05)
    opened = {"server": cpu_seconds(server_pid) - opening[0], "browsers": browser_cpu_seconds() - opening[1]}
    for p in pages:
        p.get_by_role("button", name="Start", exact=True).click(timeout=120_000)
    cpu0, browsers0, wall0 = cpu_seconds(server_pid), browser_cpu_seconds(), time.perf_counter()
    time.sleep(train)
    lags, latencies = [], []
    for p in pages:
        status, plotted = p.evaluate(STATUS_JS), steps_plotted(p)
        if status is not None:
            lags.append(status - plotted)
        handle = p.evaluate_handle(HANDLE_JS, "lr").as_element()
        before = lr_plotted(p)
        start = time.perf_counter()
        handle.focus()
        handle.press("ArrowLeft")
        while time.perf_counter() - start < 30:
            v = lr_plotted(p)
            if v and before and v[-1] != before[-1]:
                break
            time.sleep(0.05)  # polled every 10 ms, the page's reads starved its own slider message (measured)
        latencies.append(time.perf_counter() - start)
        if os.environ.get("CLASSROOM_DEBUG"):
            print("lr before", before[-3:] if before else before, "after", lr_plotted(p)[-3:])
    wall = time.perf_counter() - wall0
    cpu = {"server": (cpu_seconds(server_pid) - cpu0) / wall, "browsers": (browser_cpu_seconds() - browsers0) / wall}
    rate = [steps_plotted(p) for p in pages]
    for c in contexts:
        c.close()
    return {"interactive": [ready.get(i, float("inf")) for i in range(n)], "latency": latencies, "lag": lags,
            "steps": rate, "cpu": cpu, "opened": opened}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--train", type=float, default=10.0, help="seconds every session trains before the slider moves")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="classroom-"))
    log = folder / "server.log"
    script = Path(sys.executable).parent / "trainlab"
    cmd = [str(script), "serve", "--port", str(port), "--address", "127.0.0.1", "--no-show",
           "--max-sessions", str(max(30, args.sessions + 1))]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    try:
        while not answers(port):
            time.sleep(0.25)
        deadline = time.perf_counter() + 120  # the warm-up thread: lab modules imported, kernels compiled
        while "warmed up" not in log.read_text(errors="replace") and time.perf_counter() < deadline:
            time.sleep(0.25)
        url = f"http://127.0.0.1:{port}/"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            start = rss(server.pid)
            # the first page builds what every later one reuses (Panel's templates, Bokeh's model classes, the
            # labs' widgets): one session opened and closed first, so the cycles measure what sessions leave
            warm = browser.new_context()
            page = warm.new_page()
            page.goto(url, timeout=120_000)
            page.get_by_role("button", name="Start", exact=True).wait_for(timeout=120_000)
            warm.close()
            time.sleep(5)
            base = rss(server.pid)
            print(f"{args.sessions} sessions, {args.cycles} cycles, {os.cpu_count()} CPUs, load "
                  f"{os.getloadavg()[0]:.1f}; server RSS at start {start:.0f} MiB, after one warm-up session "
                  f"{base:.0f} MiB (the baseline)")
            for k in range(args.cycles):
                r = cycle(browser, url, args.sessions, args.train, server.pid)
                inter, lat = sorted(r["interactive"]), sorted(r["latency"])
                p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
                after, t = rss(server.pid), time.perf_counter()
                while after > 1.1 * base and time.perf_counter() - t < 60:
                    time.sleep(2)
                    after = rss(server.pid)
                print(f"cycle {k + 1}: interactive first {inter[0]:.1f} s, median {statistics.median(inter):.1f} s, "
                      f"max {inter[-1]:.1f} s (target <= 5 s)")
                n, opened = args.sessions, r["opened"]
                print(f"  CPU to open the pages: server {opened['server']:.1f} s, browsers {opened['browsers']:.1f} s "
                      f"({opened['browsers'] / n:.2f} s a page: on {os.cpu_count()} cores the browsers alone need "
                      f"{opened['browsers'] / os.cpu_count():.1f} s)")
                print(f"  lr slider to plot: median {1000 * statistics.median(lat):.0f} ms, p95 {1000 * p95:.0f} ms, "
                      f"max {1000 * lat[-1]:.0f} ms (target p95 <= 250 ms)")
                if r["lag"]:
                    print(f"  status ahead of the plots: at most {max(r['lag'])} steps (median "
                          f"{statistics.median(r['lag']):.0f}); steps trained per session median "
                          f"{statistics.median(r['steps']):.0f}")
                print(f"  CPU while training and moving sliders: server {r['cpu']['server']:.2f} cores, "
                      f"browsers {r['cpu']['browsers']:.2f} cores (of {os.cpu_count()})")
                print(f"  server RSS {after:.0f} MiB {time.perf_counter() - t:.0f} s after the pages closed "
                      f"({after / base:.2f}x the start; target <= 1.10x)")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    text = log.read_text(errors="replace")
    print(f"server log: {len(re.findall('Traceback', text))} tracebacks, "
          f"{len(re.findall('Failed sending', text))} 'Failed sending' warnings ({log})")


if __name__ == "__main__":
    main()

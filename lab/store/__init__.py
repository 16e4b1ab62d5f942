"""trainlab.store: runs saved in folders, listed, compared, reopened, and recorded live so a crash loses little.

    from trainlab.store import Store
    store = Store("runs")                   # a folder (created if absent); a file there is refused
    name = store.save(run, "adam-lr3e-3")   # whole: settings, events, weights, optimizer state, history
    run = store.load(name)                  # continues exactly where it stopped (as Run.load)
    store.list()                            # DataFrame: name, status, step, saved, settings, last metrics
    store.history(["a", "b"])               # one tidy frame: a `run` column + the history's columns
    store.events(name)                      # every mid-run change: [{"step", "event"} | {"step", "set"}]
    store.delete(name)

Recording live (what a sweep worker does):

    with store.track(run, name) as t:       # history appended as it trains, flushed every 0.25 s
        run.step(1000)                      # ... or run.start(); ...; run.stop()
        store.save(run)                     # optional checkpoints meanwhile (status stays "running")
    # leaving the block = store.untrack(run): the history compacted to Parquet, the run saved "complete"

    Without `with`: `t = store.track(run, name)`, train, then `store.untrack(run)` (or `t.close()`).

Forking at a past step (trainlab.store.points, trainlab.store.fork):

    store.track(run, name, every=100)       # + a checkpoint every 100 steps (seconds=, keep= too)
    store.checkpoints(name)                 # [0, 100, 200, ...]: the steps a fork starts from exactly
    fork = store.fork(name, step=500, lr=0.01)  # the run as it was at the nearest checkpoint <= 500, lr lowered
    fork.parent                             # {"run": name, "step": 500, "asked": 500}
    `store.save(run, name)` alone (no tracking) saves a finished run complete in one call.

Layout of a store:

    runs/<name>/manifest.json         written last, atomically: status, step, the checkpoint it points at,
                                      every file's size and BLAKE2b hash, a summary for `list()`
    runs/<name>/ckpt-<n>/             the checkpoint (trainlab.store.format): settings.json, events.json,
                                      weights.safetensors, optimizer.safetensors + optimizer.json,
                                      state.safetensors (sampling state), history.parquet
    runs/<name>/points/step-<n>/      periodic checkpoints (each committed by renaming its folder whole)
    runs/<name>/live/                 while recorded live: history.<k>.arrows (Arrow IPC streams) and
                                      events.jsonl (run.set changes); removed when the run is saved complete

Guarantees: a checkpoint folder is written whole under a temporary name (each file fsynced), renamed, and
only then does the manifest (temp file, fsync, os.replace) point at it; the old checkpoint goes after. So
a kill -9 at any moment leaves the previous checkpoint or the new one, never a mix, and a run shows as
"complete" only when its manifest says so. Status: complete | running | crashed (recorded live, its
process gone: its last checkpoint loads, its live history reads up to the last whole batch, at most
0.25 s behind) | incomplete (a first save that never finished). Names are checked (letters, digits,
`_.=+,@-`; no path separators, no `..`, not hidden); every path is resolved and refused outside the
root; loading reads JSON, safetensors and Parquet only: nothing is unpickled. `Run.save(path)` writes
the same files (and manifest) as one zip file; `Run.load` reads such a file or a run's folder.
"""
from .store import Store, Tracked

__all__ = ["Store", "Tracked"]

"""`trainlab sweep CONFIG.toml [--scheduler tcp://host:8786]`: progress as runs end, then the results table.

Only the core is imported (no Panel): `python -m trainlab.sweeps CONFIG.toml` runs the same on a machine
without the dashboard's packages.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import TextIO


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the sweep's TOML file (see trainlab.sweeps.tomlfile or the README)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="an existing Dask scheduler, e.g. tcp://host:8786 (default: a local cluster)")
    parser.add_argument("--workers", type=int, default=None, help="the local cluster's size (default: the CPUs)")
    parser.add_argument("--store", default=None, metavar="FOLDER", help="save the finished runs in this store")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the results table (.csv or .parquet)")


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    from .launch import sweep
    from .tomlfile import read

    out = sys.stdout if out is None else out  # looked up now: a test's captured stdout, a redirected one
    try:
        kwargs = read(args.config)
        for key in ("scheduler", "workers", "store"):
            if getattr(args, key) is not None:
                kwargs[key] = getattr(args, key)
        sw = sweep(**kwargs)
    except (ValueError, ConnectionError) as e:
        print(f"trainlab sweep: {e}", file=sys.stderr)
        return 2
    where = kwargs.get("scheduler") or f"a local cluster of {sum(sw.client.nthreads().values())} workers"
    print(f"sweep {sw.name}: {sw.progress().total} runs on {where}", file=out, flush=True)
    try:
        for row in sw.as_completed():
            i = row["index"]
            loss = row.get("val_loss")
            shown = f"val_loss {loss:.4g}" if isinstance(loss, float) and math.isfinite(loss) else row["error"]
            print(f"[{sw.progress()}] {i}: {sw.describe(i)}: {row['status']}, {shown}", file=out, flush=True)
    except KeyboardInterrupt:
        print("cancelling...", file=out, flush=True)
        sw.cancel()
    sw.wait()
    table = sw.results().drop(columns=["worker"])
    print(table.to_string(index=False), file=out, flush=True)
    if args.out:
        (table.to_parquet if str(args.out).endswith(".parquet") else table.to_csv)(args.out, index=False)
    return 0 if sw.progress().failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainlab.sweeps", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))

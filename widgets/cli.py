"""`trainlab serve`, `trainlab sweep CONFIG.toml` and `trainlab --version`."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from trainlab import __version__

    parser = argparse.ArgumentParser(prog="trainlab", description="An interactive lab for training dynamics.")
    parser.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the dashboard (an MLP on digits) with Panel's server")
    serve.add_argument("--port", type=int, default=5006, help="port to listen on (default 5006)")
    serve.add_argument("--address", default="localhost", help="address to listen on (default localhost)")
    serve.add_argument("--show", action=argparse.BooleanOptionalAction, default=False,
                       help="open a browser tab (default: no)")
    serve.add_argument("--allow-websocket-origin", action="append", default=None, metavar="HOST[:PORT]",
                       help="a host name (with its port) the server answers to and whose pages may connect, "
                            "beside localhost and --address (repeatable; '*' for any): the name a class "
                            "types in its browsers, or a proxy's")
    serve.add_argument("--torch-threads", type=int, default=1, metavar="N",
                       help="torch intra-op threads (default 1: each session trains on its own thread, and "
                            "small models run fastest on one; raise it for large models)")
    sweep = sub.add_parser("sweep", help="run a sweep described in a TOML file on Dask (a local cluster, or "
                                          "--scheduler), printing progress and the results table")
    from trainlab.sweeps.cli import add_arguments, run as run_sweep  # the core only: no Panel

    add_arguments(sweep)
    args = parser.parse_args(argv)
    if args.command == "sweep":
        return run_sweep(args)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if args.torch_threads < 1:
        parser.error(f"--torch-threads must be at least 1, got {args.torch_threads}")
    import torch

    torch.set_num_threads(args.torch_threads)
    from .app import serve as run_server

    print(f"trainlab {__version__}: serving the dashboard at http://{args.address}:{args.port}/", flush=True)
    run_server(port=args.port, address=args.address, show=args.show, origins=args.allow_websocket_origin)
    return 0


if __name__ == "__main__":
    sys.exit(main())

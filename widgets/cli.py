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
    limits = serve.add_argument_group("limits of a shared server (defaults fit a class on a small machine)")
    for flag, kind, default, text in (
            ("--max-sessions", int, 30, "browser sessions at once; the next page says the lab is full"),
            ("--max-training", int, 1, "runs stepping at once; the others take turns (a small model's step holds "
                                       "the GIL, so one at a time trains as fast and keeps pages responsive; raise "
                                       "it for models whose steps are long tensor work)"),
            ("--max-params", int, 2_000_000, "parameters of a model a session may build"),
            ("--max-steps-per-second", float, 2000.0, "training steps per second of each session"),
            ("--max-jobs", int, None, "analyses (landscapes, Hessians, ...) at once (default: CPUs); others wait"),
            ("--idle-minutes", float, 20.0, "pause a run nobody has touched for this long (0: never)"),
            ("--ready", int, 20, "pages made ahead while the server is idle, so a class opening the lab at once "
                                 "does not wait (about 5 MiB each; 0: each page makes its own)")):
        limits.add_argument(flag, type=kind, default=default, help=text if default is None else f"{text} (default {default:g})")
    access = serve.add_argument_group("access (passed to Panel's server)")
    access.add_argument("--basic-auth", metavar="PASSWORD|FILE", help="one password, or a JSON file of users")
    access.add_argument("--cookie-secret", help="the secret that signs cookies (required with --oauth-provider)")
    access.add_argument("--oauth-provider", help="an OAuth provider Panel knows (github, google, generic, ...)")
    access.add_argument("--oauth-key", help="the OAuth client id")
    access.add_argument("--oauth-secret", help="the OAuth client secret")
    access.add_argument("--num-procs", type=int, default=1, help="server processes (each with its own limits)")
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

    for name in ("max_sessions", "max_training", "max_params", "max_jobs", "num_procs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.max_steps_per_second <= 0 or args.idle_minutes < 0 or args.ready < 0:
        parser.error("--max-steps-per-second must be > 0, --idle-minutes >= 0 and --ready >= 0")
    if args.oauth_provider and not args.cookie_secret:
        parser.error("--oauth-provider needs --cookie-secret")
    torch.set_num_threads(args.torch_threads)
    from .app import Limits
    from .app import serve as run_server

    limits = Limits(sessions=args.max_sessions, training=args.max_training, params=args.max_params,
                    steps_per_second=args.max_steps_per_second, jobs=args.max_jobs, idle_minutes=args.idle_minutes,
                    ready=args.ready)
    access = {k: getattr(args, k) for k in ("basic_auth", "cookie_secret", "oauth_provider", "oauth_key",
                                            "oauth_secret") if getattr(args, k)}
    if args.num_procs > 1:
        access["num_procs"] = args.num_procs
    print(f"trainlab {__version__}: serving the dashboard at http://{args.address}:{args.port}/", flush=True)
    run_server(port=args.port, address=args.address, show=args.show, origins=args.allow_websocket_origin,
               limits=limits, **access)
    return 0


if __name__ == "__main__":
    sys.exit(main())

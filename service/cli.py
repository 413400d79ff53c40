"""``lethe``: serve sampling and the admin API, run the job worker, bootstrap the embedded
default, run forget jobs offline (the same job code the service runs), evaluate, list and
activate versions, and show the audit trail.

The library's commands are ``unlearning.cli``'s; this module adds the two that run the
service (``serve``, ``worker``). It sits above both layers, so the library never imports
the service."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from unlearning import cli as library_cli


def cmd_serve(args: argparse.Namespace) -> int:
    from service.launcher import serve

    return serve(port=args.port, host=args.host, workers=args.workers, job_worker=not args.no_job_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from service.worker import main as worker_main

    return worker_main([])


def add_service_commands(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve sampling and the admin API (bootstraps first if needed)")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--workers", type=int, default=1, help="serving worker processes")
    p.add_argument("--no-job-worker", action="store_true",
                   help="do not run redaction jobs here (another instance or `lethe worker` does)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run queued redaction jobs, one at a time")
    p.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    parser = library_cli.build_parser(add_service_commands)
    parser.description = __doc__.split("\n\n")[0]
    return parser


def main(argv: list[str] | None = None) -> int:
    return library_cli.main(argv, build_parser())


if __name__ == "__main__":
    sys.exit(main())

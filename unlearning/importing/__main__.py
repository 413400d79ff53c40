"""``python -m unlearning.importing MODEL --domain D PATH [--no-activate]``: one import, its
result as one JSON line on stdout: ``{"version": manifest}`` or ``{"error": message,
"kind": the error's class}``. ``POST /admin/models`` runs it in a process of its own, so an
upload that crashes a parser (ONNX, onnx2torch, a plugin's code) never takes a serving
worker with it, and the domain's data leaves memory with the process."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearning.errors import LetheError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearning.importing")
    parser.add_argument("model")
    parser.add_argument("--domain", required=True)
    parser.add_argument("path")
    parser.add_argument("--no-activate", action="store_true")
    args = parser.parse_args(argv)
    from unlearning.importing import import_model
    from unlearning.registry import Registry

    try:
        manifest = import_model(Registry(), args.model, args.domain, Path(args.path), activate=not args.no_activate)
    except LetheError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}), flush=True)
        return 2
    print(json.dumps({"version": manifest.model_dump(mode="json")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

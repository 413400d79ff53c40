"""What every benchmark script shares: stderr logging, JSON without inf/nan, atomic writes."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def finite(x: Any) -> Any:
    """JSON has no inf/nan: store them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)

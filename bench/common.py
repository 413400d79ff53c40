"""What every benchmark script shares: stderr logging, JSON without inf/nan, atomic writes,
and the processor a run was measured on."""

from __future__ import annotations

import json
import math
import os
import platform
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


def processor() -> str:
    """The CPU, precisely enough to tell two machines apart: ``platform.processor()`` is
    empty on Linux, and cloud VMs all report "AMD EPYC" whatever the generation, so the
    family and model numbers come along (Zen 1 is family 23, Zen 4 family 25 model 17)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        if not line.strip():
            break  # the first processor is enough
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor() or platform.machine()
    numbers = [f"{k} {fields[k]}" for k in ("cpu family", "model") if k in fields]
    return f"{name} ({', '.join(numbers)})" if numbers else name


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)

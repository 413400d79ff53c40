"""Multipart file parts written into a request's staging folder: one rule for the names an
upload may have and one copy loop, shared by the redaction route (``POST /admin/redactions``)
and the import route (``POST /admin/models``)."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.datastructures import UploadFile

from unlearning.errors import LetheError

UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
COPY_CHUNK = 1 << 20


async def save_part(upload: UploadFile, staging: Path, name: str) -> Path:
    """Stream ``upload`` to ``staging/name`` in chunks (the request size limit already holds
    the total); a name sent twice is refused rather than overwritten."""
    staging.mkdir(parents=True, exist_ok=True)
    target = staging / name
    if target.exists():
        raise LetheError(f"file {name!r} was uploaded twice")
    with open(target, "wb") as out:
        while chunk := await upload.read(COPY_CHUNK):
            out.write(chunk)
    return target

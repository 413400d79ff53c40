"""``POST /admin/models``: import a generator trained elsewhere (as ``lethe import``).

multipart/form-data with fields ``model`` (the new model's name), ``domain``, optionally
``activate`` (default true), and the files of the import folder, each in a part named
after it (``generator.safetensors``, ``generator.json``, ``generator.onnx``,
``discriminator.*``, ...; a part whose file name is one of these may be named anything).

What is cheap is checked here first (the name is free, the domain exists, the files fit
the layout); the import itself runs in a process of its own (``python -m
unlearning.importing``), so a hostile upload that crashes a parser cannot take a serving
worker down, and it is killed if it outlives the request. The reply is 201 with the new
version, or the import's error with its status: 400 (the files), 404 (the domain), 409
(the name is taken), 413 (over LETHE_MAX_UPLOAD_MB, answered by ``BodySizeLimit``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.staging import UPLOAD_NAME, save_part
from unlearning.errors import ConflictError, IntegrityError, LetheError, NotFoundError
from unlearning.importing.sources import UPLOAD_NAMES, check_upload_name, find_components
from unlearning.names import shown
from unlearning.store.events import record_import

log = logging.getLogger(__name__)

IMPORT_TIMEOUT_S = 100.0  # under the service's traffic timeout (120 s), which would cut the reply off
FIELDS = ("model", "domain", "activate")
# the import process's error kinds, raised again here so the admin API answers them as its own
ERRORS_OF_KIND = {"NotFoundError": NotFoundError, "ConflictError": ConflictError, "IntegrityError": IntegrityError}


def _truthy(text: str | None, name: str) -> bool:
    if text is None or text.strip().lower() in ("", "1", "true", "yes"):
        return True
    if text.strip().lower() in ("0", "false", "no"):
        return False
    raise LetheError(f"{name} must be true or false, not {shown(text)}")


async def read_import_form(request: Request, staging: Path) -> dict[str, str]:
    """The form's fields; its files written into ``staging`` under their component names."""
    form = await request.form(max_files=len(UPLOAD_NAMES), max_fields=len(FIELDS) + len(UPLOAD_NAMES),
                              max_part_size=1 << 20)
    fields: dict[str, str] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                filename = Path(value.filename or "").name
                name = key if key in UPLOAD_NAMES else filename
                if name not in UPLOAD_NAMES and not UPLOAD_NAME.match(name):
                    raise LetheError(f"file part {shown(key)} ({shown(filename)}) is not a component file: name the "
                                     f"part {', '.join(sorted(UPLOAD_NAMES))}")
                check_upload_name(name)
                await save_part(value, staging, name)
            elif key in UPLOAD_NAMES:  # a file sent as a plain field (curl -F 'generator.json=<file')
                staging.mkdir(parents=True, exist_ok=True)
                if (staging / key).exists():
                    raise LetheError(f"file {key!r} was uploaded twice")
                (staging / key).write_bytes(value.encode())
            elif key in FIELDS:
                if key in fields:
                    raise LetheError(f"field {key!r} was sent twice")
                fields[key] = value
            else:
                raise LetheError(f"unknown form field {shown(key)}; send model, domain, optionally activate, and the "
                                 "component files")
    finally:
        await form.close()
    return fields


async def import_model(request: Request, registry, store, uploads_root: Path, actor: str) -> JSONResponse:
    """The route (the admin API's exception handlers answer LetheErrors with their status)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return JSONResponse({"error": "send multipart/form-data: fields model and domain (and optionally activate) "
                                      "plus the component files"}, status_code=415)
    # the pid marks it as live: a sweep of uploads/ removes only a dead process's staging (store.files)
    staging = uploads_root / f".tmp-{os.getpid()}-import-{uuid.uuid4().hex}"
    try:
        fields = await read_import_form(request, staging)
        missing = [name for name in ("model", "domain") if not fields.get(name)]
        if missing:
            raise LetheError(f"missing form field(s) {', '.join(missing)}: name the new model and its domain")
        activate = _truthy(fields.get("activate"), "activate")
        # off the event loop: with PostgreSQL and S3 these are network round trips
        await anyio.to_thread.run_sync(_cheap_checks, registry, fields["model"], fields["domain"], staging)
        answer = await _run_import(registry.home, fields["model"], fields["domain"], staging, activate)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if answer.get("kind") == "Timeout":
        return JSONResponse({"error": answer["error"]}, status_code=503)
    if answer.get("kind") == "Internal":
        return JSONResponse({"error": answer["error"]}, status_code=500)
    if "error" in answer:
        raise ERRORS_OF_KIND.get(answer.get("kind"), LetheError)(answer["error"])
    from unlearning.registry import VersionManifest

    manifest = VersionManifest.model_validate(answer["version"])
    await anyio.to_thread.run_sync(lambda: record_import(store, manifest, actor, activated=activate))
    log.warning("model %s imported as %s by %s", manifest.model, manifest.version, actor)
    return JSONResponse(_view(manifest, activate), status_code=201)


def _cheap_checks(registry, model: str, domain: str, staging: Path) -> None:
    """What fails fast, before the import process: 409 when the name is taken (now, not
    after a minute of checks), 404 naming the known domains, 400 for the files' layout."""
    from unlearning.importing import require_new_model

    require_new_model(registry, model)
    registry.get_domain(domain)
    if not staging.is_dir():
        raise LetheError(f"no files: send the component files ({', '.join(sorted(UPLOAD_NAMES))})")
    find_components(staging)


def _view(manifest, activated: bool) -> dict[str, Any]:
    quality = manifest.metrics.get("quality", {})
    return {
        "version": manifest.version, "model": manifest.model, "domain": manifest.domain, "active": activated,
        "status": manifest.status, "onnx_parity": manifest.metrics.get("onnx_parity"),
        "quality": {k: quality.get(k) for k in ("fid", "inception_score", "extractor", "samples", "judged_by")},
        "import": manifest.metrics.get("import"),
        "links": {"activate": f"/admin/models/{manifest.version}/activate", "models": "/models"},
    }


async def _run_import(home: Path, model: str, domain: str, folder: Path, activate: bool) -> dict[str, Any]:
    """The import in its own process; its JSON answer. Killed when it outlives
    IMPORT_TIMEOUT_S or the request is cancelled."""
    command = [sys.executable, "-m", "unlearning.importing", model, "--domain", domain, str(folder),
               *([] if activate else ["--no-activate"])]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE,
                                                   env={**os.environ, "LETHE_HOME": str(home)})
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), IMPORT_TIMEOUT_S)
    except asyncio.TimeoutError:
        return {"error": f"the import took longer than {IMPORT_TIMEOUT_S:.0f} s and was stopped; import large models "
                         "with `lethe import` on the server", "kind": "Timeout"}
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    lines = stdout.decode(errors="replace").strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not ({"version", "error"} & set(answer)):
        log.error("import of %s failed (exit %s): %s", model, process.returncode, stderr.decode(errors="replace")[-4000:])
        return {"error": "the import failed unexpectedly (the server log has the details); nothing was stored",
                "kind": "Internal"}
    return answer

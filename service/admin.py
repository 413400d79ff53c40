"""The admin API (mounted at ``/admin``): submit, watch, cancel and report redaction
jobs, import and activate versions, and read the audit trail. Every route needs
``Authorization: Bearer $LETHE_ADMIN_TOKEN``.

It only translates HTTP into library calls: uploads are checked by ``unlearning.data``,
specs and checks by ``unlearning.jobs.preflight``, jobs live in the job store (``unlearning.store``) and run in
the separate job worker (``service/worker.py``), never in a serving worker.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from service.admin_auth import ACTOR_SCOPE_KEY, BearerAuth, actor_key
from service.http_limits import RequestTooLarge
from service.settings import Settings
from service.staging import UPLOAD_NAME, save_part
from service.uploads import remove_ended
from unlearning.errors import ConflictError, IntegrityError, LetheError, NotFoundError
from unlearning.names import shown
from unlearning.registry import Registry
from unlearning.store import (
    AUDIT_ACTIONS, AUDIT_MAX_LIMIT, JOB_STATES, JobFinishedError, JobStoreBusyError, QueueFullError,
    StorageUnavailableError, StoreUnavailableError, open_store,
)
from unlearning.store.events import record_activation

log = logging.getLogger(__name__)

MAX_FILES = 32
LIST_MAX_LIMIT = 1000
SPEC_TYPES = ("application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _status_for(exc: LetheError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, JobFinishedError):
        return 409
    if isinstance(exc, (JobStoreBusyError, StoreUnavailableError, StorageUnavailableError)):  # try again
        return 503
    if isinstance(exc, QueueFullError):
        return 429
    if isinstance(exc, (IntegrityError, ConflictError)):
        return 409
    return 400


def _job_view(job) -> dict[str, Any]:
    view = job.model_dump(mode="json")
    result = job.result or {}
    view["metrics"] = {"before": result.get("before"), "after": result.get("after"), "gates": result.get("gates")}
    view["links"] = {"self": f"/admin/redactions/{job.id}", "report": f"/admin/redactions/{job.id}/report",
                     "cancel": f"/admin/redactions/{job.id}/cancel"}
    return view


def inline_report(folder: Path) -> str:
    """The job's report page with its pictures inlined (a browser cannot send the bearer
    token for <img> requests)."""
    page = (folder / "index.html").read_text()

    def inline(match: re.Match) -> str:
        picture = folder / match.group(1)
        if not picture.is_file():
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(picture.read_bytes()).decode()}"'

    return re.sub(r'src="([a-z_]+\.png)"', inline, page)


class AdminAPI:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.registry = Registry(settings.home)
        self.store = open_store(settings.home)
        self.uploads_root = settings.home / "uploads"

    def app(self):
        routes = [
            Route("/redactions", self.submit, methods=["POST"]),
            Route("/redactions", self.list_jobs, methods=["GET"]),
            Route("/redactions/{job_id}", self.status, methods=["GET"]),
            Route("/redactions/{job_id}/cancel", self.cancel, methods=["POST"]),
            Route("/redactions/{job_id}/report", self.report, methods=["GET"]),
            Route("/models", self.import_model, methods=["POST"]),
            Route("/models/{version}/activate", self.activate, methods=["POST"]),
            Route("/audit", self.audit, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
        ]
        app = Starlette(routes=routes, exception_handlers={
            LetheError: lambda request, exc: error(_status_for(exc), self._public(str(exc))),
            RequestTooLarge: lambda request, exc: error(413, str(exc)),
            # Starlette's own refusals (no such route, wrong method, too many files): JSON too
            HTTPException: lambda request, exc: error(exc.status_code, str(exc.detail)),
        })
        key = actor_key(self.settings.home, self.store) if self.settings.admin_token else (lambda: b"")
        return BearerAuth(app, self.settings.admin_token, key)

    def _public(self, message: str) -> str:
        """An error message as a client may read it: where the server keeps its files is its own."""
        return message.replace(str(self.settings.home), "LETHE_HOME")

    # ------------------------------------------------------------------------- submit

    async def submit(self, request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        staging = self.uploads_root / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"  # the pid: see store.files
        try:
            if content_type == "multipart/form-data":
                spec_bytes, form_parent = await self._read_multipart(request, staging)
            elif content_type in SPEC_TYPES:
                spec_bytes, form_parent = await request.body(), None
            else:
                return error(415, "send multipart/form-data (a 'spec' field plus files), or a spec alone as "
                                  "application/json or application/yaml")
            parent = _requested_parent(request.query_params.get("from"), form_parent)
            if not spec_bytes:
                return error(400, "no 'spec' field: send the forget specification (JSON or YAML) in a form field named 'spec'")
            uploads = staging if staging.exists() else None
            model = request.query_params.get("model")
            spec, method, parent_manifest = await anyio.to_thread.run_sync(
                self._preflight, spec_bytes, parent, uploads, model
            )
            from unlearning.spec import referenced_files, retain_files, spec_hash

            if uploads is not None:
                named = set(referenced_files(spec)) | set(retain_files(spec)) | _onnx_names(spec)
                extra = sorted({p.name for p in uploads.iterdir()} - named)
                if extra:
                    return error(400, f"uploaded file(s) {', '.join(extra)} are not referenced by the spec")
            job_uploads = None
            if uploads is not None:  # with object storage, published for a job worker on another node
                job_uploads = await anyio.to_thread.run_sync(self.registry.keep_uploads, staging)
            try:
                job = self.store.submit(
                    spec.model_dump(mode="json"), spec_hash=spec_hash(spec), spec_name=spec.name,
                    parent=parent_manifest.version, actor=_actor(request), uploads_dir=job_uploads,
                    model=parent_manifest.model, detail={"method": method},
                    max_queued=self.settings.max_queued_jobs,
                )  # its audit entry is written in the same transaction: no job without one
            except BaseException:
                if job_uploads is not None:  # no job refers to them: leave nothing behind (published too)
                    with contextlib.suppress(LetheError):
                        self.registry.discard_uploads(job_uploads)
                raise
            log.info("job %s submitted: %s (%s) from %s", job.id, spec.name, method, parent_manifest.version)
            return JSONResponse({"job_id": job.id, "state": job.state, "method": method,
                                 "parent": parent_manifest.version, **_job_view(job)["links"]}, status_code=202)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _preflight(self, spec_bytes: bytes, parent: str | None, uploads: Path | None, model: str | None):
        from unlearning.jobs import preflight

        return preflight(spec_bytes, self.registry, parent=parent, uploads_dir=uploads, model=model)

    async def _read_multipart(self, request: Request, staging: Path) -> tuple[bytes | None, str | None]:
        form = await request.form(max_files=MAX_FILES, max_fields=8, max_part_size=1 << 20)
        try:
            spec_bytes: bytes | None = None
            parent: str | None = None
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key == "spec":
                        spec_bytes = await value.read(1 << 20)
                        continue
                    name = Path(value.filename or key).name
                    if not UPLOAD_NAME.match(name):
                        raise LetheError(f"upload name {shown(value.filename)} is not allowed: use letters, digits, '_', '.', '-'")
                    await save_part(value, staging, name)
                elif key == "spec":
                    spec_bytes = value.encode()
                elif key == "from":
                    parent = value
                else:
                    raise LetheError(f"unknown form field {shown(key)}; send 'spec', optionally 'from', and files")
            return spec_bytes, parent
        finally:
            await form.close()

    # ------------------------------------------------------------------- the others

    async def list_jobs(self, request: Request) -> JSONResponse:
        """Jobs, newest first, a page at a time: ``limit`` (default 100, at most 1000),
        ``before`` (a job id: the jobs submitted before it), ``state``. ``next`` is the
        link to the following page, while there may be one."""
        params = request.query_params
        unknown = sorted(set(params) - {"limit", "before", "state"})
        if unknown:
            return error(400, f"unknown query parameter {shown(unknown[0])}; use limit, before, state")
        text = params.get("limit", "100")
        limit = int(text) if re.fullmatch(r"\d{1,4}", text) else 0
        if not 1 <= limit <= LIST_MAX_LIMIT:
            return error(400, f"limit must be a whole number from 1 to {LIST_MAX_LIMIT}, not {shown(text)}")
        state = params.get("state")
        if state is not None and state not in JOB_STATES:
            return error(400, f"state must be one of {', '.join(JOB_STATES)}, not {shown(state)}")
        before = params.get("before")
        jobs = self.store.list(limit=limit, states=[state] if state else None, before=before)
        page: dict[str, Any] = {"jobs": [_job_view(j) for j in jobs]}
        if len(jobs) == limit:
            query = f"limit={limit}&before={jobs[-1].id}" + (f"&state={state}" if state else "")
            page["next"] = f"/admin/redactions?{query}"
        return JSONResponse(page)

    async def status(self, request: Request) -> JSONResponse:
        return JSONResponse(_job_view(self.store.get(request.path_params["job_id"])))

    async def cancel(self, request: Request) -> JSONResponse:
        job = self.store.cancel(request.path_params["job_id"], actor=_actor(request))
        await anyio.to_thread.run_sync(remove_ended, job, self.registry)  # cancelled before it started: now
        return JSONResponse(_job_view(job), status_code=202 if not job.final else 200)

    async def report(self, request: Request) -> HTMLResponse:
        job = self.store.get(request.path_params["job_id"])
        folder = await anyio.to_thread.run_sync(self.registry.report, job.id)  # another node's, fetched
        if not (folder / "index.html").is_file():
            state = f"it is {job.state}" + (f": {job.reason}" if job.reason else "")
            raise NotFoundError(f"job {job.id} has no report yet ({state})")
        return HTMLResponse(inline_report(folder))

    async def activate(self, request: Request) -> JSONResponse:
        version = request.path_params["version"]
        force = request.query_params.get("force", "").lower() in ("1", "true", "yes")
        actor = _actor(request)

        def activate():
            try:
                previous = self.registry.active(self.registry.get(version).model)
            except LetheError:
                previous = None  # activate names the problem (unknown version, bad pointer)
            manifest = self.registry.activate(version, force=force)
            record_activation(self.store, manifest, actor, previous=previous, force=force)
            return manifest

        manifest = await anyio.to_thread.run_sync(activate)
        log.warning("version %s activated by %s", version, actor)
        return JSONResponse({"active": manifest.version, "model": manifest.model, "status": manifest.status})

    async def import_model(self, request: Request) -> JSONResponse:
        """A generator trained elsewhere as version 1 of a new model (``service/model_import.py``)."""
        from service.model_import import import_model

        return await import_model(request, self.registry, self.store, self.uploads_root, _actor(request))

    async def openapi(self, request: Request) -> JSONResponse:
        """The OpenAPI document of /models and the admin API (BentoML's /docs.json has the rest)."""
        from service.openapi import admin_openapi

        return JSONResponse(admin_openapi())

    async def audit(self, request: Request) -> JSONResponse:
        """The audit trail, newest first: ``limit`` (default 100, at most 1000), ``since_seq``
        (only entries after it, to tail the log), ``action``, ``job_id``."""
        params = request.query_params
        unknown = sorted(set(params) - {"limit", "since_seq", "action", "job_id"})
        if unknown:
            return error(400, f"unknown query parameter {shown(unknown[0])}; use limit, since_seq, action, job_id")
        numbers: dict[str, int | None] = {}
        for name, default, low, high in (("limit", 100, 1, AUDIT_MAX_LIMIT), ("since_seq", None, 0, None)):
            text = params.get(name)
            if text is None:
                numbers[name] = default
                continue
            value = int(text) if re.fullmatch(r"\d{1,18}", text) else None
            if value is None or value < low or (high is not None and value > high):
                bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
                return error(400, f"{name} must be a whole number {bounds}, not {shown(text)}")
            numbers[name] = value
        action = params.get("action")
        if action is not None and action not in AUDIT_ACTIONS:
            return error(400, f"action must be one of {', '.join(AUDIT_ACTIONS)}, not {shown(action)}")
        entries = self.store.audit_log(limit=numbers["limit"], since_seq=numbers["since_seq"],
                                       action=action, job_id=params.get("job_id"))
        return JSONResponse({"entries": [e.model_dump(mode="json") for e in entries]})


def _onnx_names(spec) -> set[str]:
    return {s.classifier for s in spec.sets if getattr(s, "classifier", "").endswith(".onnx")} | {
        r.classifier for r in _rules(spec) if getattr(r, "classifier", "").endswith(".onnx")
    }


def _rules(spec):
    stack = [s.rule for s in spec.sets if hasattr(s, "rule")]
    while stack:
        rule = stack.pop()
        yield rule
        stack.extend(getattr(rule, "rules", []) or [])


def _actor(request: Request) -> str:
    """Who did it: the keyed fingerprint of the token that ``BearerAuth`` checked."""
    return request.scope[ACTOR_SCOPE_KEY]


def _requested_parent(query: str | None, form: str | None) -> str | None:
    """The parent version a submit asks for: ``?from=`` or a ``from`` form field (multipart),
    one parse for both; both at once must agree."""
    query, form = query or None, form or None
    if query is not None and form is not None and query != form:
        raise LetheError(f"from: the query asks for {shown(query)} and the form for {shown(form)}; send one")
    return query or form

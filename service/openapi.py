"""The OpenAPI 3.1 document of the routes BentoML's own ``/docs.json`` does not describe:
``GET /models`` and the admin API under ``/admin`` (served at ``GET /admin/openapi.json``).

BentoML documents only its ``@bentoml.api`` routes and mounted FastAPI apps; ours are
Starlette apps, so this document is built here, from the same pydantic models the routes
use (the forget specification, the job record, the audit entry), so it cannot drift from
what they accept and return. The fuzz tests (``tests/test_fuzz.py``) run against both.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from unlearning.store import AUDIT_ACTIONS, AUDIT_MAX_LIMIT, JOB_STATES, AuditEntry, JobRecord

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A $ref to ``model``, its nested models hoisted into ``components``."""
    schema = model.model_json_schema(ref_template=_REF)
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": _REF.format(model=model.__name__)}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "minLength": 1}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


@lru_cache(maxsize=1)  # built once per worker: it only depends on the code
def admin_openapi() -> dict[str, Any]:
    from unlearning.spec.schema import ForgetSpec

    components: dict[str, Any] = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "what was wrong, in words"}}},
    }
    spec = _schema(ForgetSpec, components)
    job = _schema(JobRecord, components)
    entry = _schema(AuditEntry, components)
    job_view = {"allOf": [job, {"type": "object", "properties": {
        "metrics": {"type": "object", "description": "before, after and gates of the outcome"},
        "links": {"type": "object", "additionalProperties": {"type": "string"}}}}]}
    unauthorised = _error("missing or wrong admin token")
    job_id = _path("job_id", "the job id (uuid4 hex) that POST /admin/redactions returned")
    common = {"401": unauthorised, "404": _error("no such job")}
    parent = _query("from", "the version to start from (default: the model's active version)", {"type": "string"})
    model = _query("model", "the model to edit when `from` is not given (default: the service's)", {"type": "string"})
    submitted = _json("queued", {"type": "object", "required": ["job_id", "state"], "properties": {
        "job_id": {"type": "string"}, "state": {"type": "string"}, "method": {"type": "string"},
        "parent": {"type": "string"}, "self": {"type": "string"}, "report": {"type": "string"},
        "cancel": {"type": "string"}}})
    paths: dict[str, Any] = {
        "/models": {"get": {
            "operationId": "models", "summary": "The hosted models: active version, kind and routes of each",
            "security": [],
            "responses": {"200": _json("the models", {"type": "object", "required": ["models", "default"]})},
        }},
        "/admin/redactions": {
            "post": {
                "operationId": "submit_redaction", "summary": "Submit a forget specification (202 + a job id)",
                "parameters": [parent, model],
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {
                        "schema": {"type": "object", "required": ["spec"], "properties": {
                            "spec": {"type": "string", "description": "the forget specification, JSON or YAML"},
                            "from": {"type": "string", "description": "the version to start from"}},
                            "additionalProperties": {"type": "string", "contentMediaType": "application/octet-stream",
                                                     "description": "an uploaded file the spec names"}},
                    },
                    "application/json": {"schema": spec},
                    "application/yaml": {"schema": spec},
                }},
                "responses": {"202": submitted, "400": _error("the spec or an upload is invalid (named)"),
                              "401": unauthorised, "404": _error("unknown parent version or model"),
                              "409": _error("the parent version is corrupted"),
                              "413": _error("the request is too large"),
                              "415": _error("not multipart, JSON or YAML"),
                              "429": _error("as many jobs are queued as LETHE_MAX_QUEUED_JOBS allows"),
                              "503": _error("the job store is busy; retry")},
            },
            "get": {"operationId": "list_redactions", "summary": "Jobs, newest first, a page at a time",
                    "parameters": [
                        _query("limit", "jobs per page (default 100, at most 1000)",
                               {"type": "integer", "minimum": 1, "maximum": 1000}),
                        _query("before", "a job id: the page of jobs submitted before it (the `next` link)",
                               {"type": "string"}),
                        _query("state", "only jobs in this state", {"type": "string", "enum": list(JOB_STATES)}),
                    ],
                    "responses": {"200": _json("jobs", {"type": "object", "required": ["jobs"], "properties": {
                        "jobs": {"type": "array", "items": job_view},
                        "next": {"type": "string", "description": "the next page, while there may be one"}}}),
                        "400": _error("a bad query parameter (named)"), "401": unauthorised,
                        "404": _error("`before` names no job")}},
        },
        "/admin/redactions/{job_id}": {"get": {
            "operationId": "get_redaction", "summary": "One job: state, progress, metrics, gates",
            "parameters": [job_id], "responses": {"200": _json("the job", job_view), **common}}},
        "/admin/redactions/{job_id}/cancel": {"post": {
            "operationId": "cancel_redaction", "summary": "Cancel a job (202 while it stops, 200 if it had ended)",
            "parameters": [job_id], "responses": {
                "200": _json("already final", job_view), "202": _json("cancelling", job_view), **common}}},
        "/admin/redactions/{job_id}/report": {"get": {
            "operationId": "redaction_report", "summary": "The job's HTML report, pictures inlined",
            "parameters": [job_id], "responses": {
                "200": {"description": "the report", "content": {"text/html": {"schema": {"type": "string"}}}},
                **common}}},
        "/admin/models/{version}/activate": {"post": {
            "operationId": "activate_version", "summary": "Serve this version (promote or roll back)",
            "parameters": [_path("version", "a version name, such as digits-v3"),
                           _query("force", "serve it even though its gates rejected it",
                                  {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no"]})],
            "responses": {
                "200": _json("now active", {"type": "object", "properties": {
                    "active": {"type": "string"}, "model": {"type": "string"}, "status": {"type": "string"}}}),
                "400": _error("the version was rejected (use force)"), "401": unauthorised,
                "404": _error("no such version"), "409": _error("a file of the version is corrupted (named)")}}},
        "/admin/audit": {"get": {
            "operationId": "audit", "summary": "The audit trail, newest first",
            "parameters": [
                _query("limit", f"entries to return (default 100, at most {AUDIT_MAX_LIMIT})",
                       {"type": "integer", "minimum": 1, "maximum": AUDIT_MAX_LIMIT}),
                _query("since_seq", "only entries after this sequence number (to tail the log)",
                       {"type": "integer", "minimum": 0}),
                _query("action", "only this action", {"type": "string", "enum": list(AUDIT_ACTIONS)}),
                _query("job_id", "only this job's entries", {"type": "string"}),
            ],
            "responses": {"200": _json("entries", {"type": "object", "properties": {
                "entries": {"type": "array", "items": entry}}}),
                "400": _error("a bad query parameter (named)"), "401": unauthorised}}},
        "/admin/openapi.json": {"get": {
            "operationId": "admin_openapi", "summary": "This document",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object"}), "401": unauthorised}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Lethe admin API", "version": "1",
                 "description": "Submit forget specifications, watch and cancel jobs, activate versions, "
                                "read the audit trail. Sampling routes: /docs.json (BentoML's)."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "LETHE_ADMIN_TOKEN"}}},
        "paths": paths,
    }

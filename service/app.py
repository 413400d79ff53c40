"""The BentoML service: sampling over ONNX Runtime, with the admin API mounted at /admin.

A thin translation layer (STYLE.md): sampling calls ``OnnxGenerator`` through the
hot-swapping ``ActiveGenerator``; everything else is library code. Run with
``lethe serve`` (which also starts the job worker) or ``bentoml serve service.app:Lethe``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import gc
import logging
import os
import secrets
import threading
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
import numpy as np
from PIL import Image
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.admin import AdminAPI
from service.error_body import ErrorBodyShape
from service.http_limits import BodySizeLimit
from service.log_escape import install as escape_logged_client_text
from unlearning.store import open_store
from service.metrics import metrics, publish_version
from service.monitor import OnlineMonitor
from service.refusal_log import install as log_refusals_without_tracebacks
from service.relative_redirects import RelativeRedirects
from service.request_timer import install as cancel_request_timers
from service.route_labels import install as label_request_metrics_by_route
from service.settings import Settings
from service.swap import ActiveGenerator, ActiveUnservableError, LoadedVersion, NotServableError
from unlearning.errors import IntegrityError, LetheError, NotFoundError
from unlearning.registry import Registry

log = logging.getLogger("lethe.service")

SETTINGS = Settings.from_env()
MAX_IMAGES = 1024
MAX_SEED = 2**63 - 1

Count = Annotated[int, Field(ge=1, le=MAX_IMAGES, strict=True, description="images to generate, 1-1024")]
Seed = Annotated[int | None, Field(ge=0, le=MAX_SEED, strict=True, description="same seed + version = same images")]
ModelName = Annotated[str | None, Field(max_length=64, description="hosted generator (GET /models); default: the service's")]
VersionName = Annotated[str | None, Field(max_length=80, description="a version (<model>-v<N>); default: the active one")]
I2IModelName = Annotated[str | None, Field(
    max_length=64, description="hosted image-to-image model (GET /models); default: LETHE_INPAINTER_MODEL")]
PngImages = Annotated[list[str], Field(
    min_length=1, max_length=MAX_IMAGES, description="base64 PNGs of the model's size (8x8 grey for digits)")]


def _png(image: np.ndarray) -> bytes:
    """One CHW float image in [-1, 1] -> PNG bytes."""
    from unlearning.data.files import png_bytes
    import torch

    return png_bytes(torch.from_numpy(image))


def _models_view(registry: Registry, model: str) -> dict[str, Any]:
    versions = []
    manifests = registry.list_versions(model)
    for m in manifests:
        after = (m.metrics or {}).get("after") or {}
        versions.append({
            "version": m.version, "parent": m.parent, "status": m.status, "created_at": m.created_at,
            "spec": (m.spec or {}).get("name") if m.spec else None, "reason": m.reason,
            "metrics": {k: after.get(k) for k in ("invalidity", "judge_invalidity", "fid", "filtered_fid",
                                                  "inception_score", "extractor", "judged_by", "forget", "retain")
                        if k in after} or (m.metrics or {}).get("quality") or None,
        })
    image_to_image = bool(manifests) and manifests[-1].image_to_image
    domain = manifests[-1].domain_name if manifests else None
    view = {"model": model, "domain": domain, "kind": "image-to-image" if image_to_image else "generator",
            "routes": ["/inpaint"] if image_to_image else ["/generate", "/grid"], "versions": versions}
    try:
        view["active"] = registry.active(model)
    except LetheError as exc:  # a garbled pointer: the other models, and this one's versions, still show
        view["active"], view["problem"] = None, str(exc)
    return view


def public_app(registry: Registry, model: str) -> Starlette:
    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"models": [_models_view(registry, name) for name in registry.models()] or
                             [_models_view(registry, model)], "default": model})

    return Starlette(routes=[Route("/models", models, methods=["GET"])])


_REGISTRY = Registry(SETTINGS.home)
cancel_request_timers()
log_refusals_without_tracebacks()
escape_logged_client_text()
label_request_metrics_by_route()


@bentoml.asgi_app(AdminAPI(SETTINGS).app(), path="/admin")
@bentoml.asgi_app(public_app(_REGISTRY, SETTINGS.model), path="/")
@bentoml.service(
    name="lethe",
    workers=int(os.environ.get("LETHE_WORKERS", "1")),
    threads=int(os.environ.get("LETHE_REQUEST_THREADS", "4")),
    traffic={"timeout": 120},
)
class Lethe:
    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)  # torch only runs the monitor's checks here
        self.registry = _REGISTRY
        self.actives: dict[str, ActiveGenerator] = {}  # model -> its hot-swapping session
        self._actives_lock = threading.Lock()
        self.monitor = OnlineMonitor(self.registry, open_store(SETTINGS.home), SETTINGS.monitor_share)
        for manifest in self.registry.list_versions():
            publish_version(manifest)
        for model in {SETTINGS.model, *self.registry.models()}:
            self._active_for(model)
        self.monitor.start()
        # What is loaded by now (torch, ONNX Runtime, BentoML: ~350k objects) lives as long
        # as the worker. Freezing it keeps it out of the collector's full passes, which
        # otherwise walk it all every few seconds under load: 100-200 ms pauses.
        gc.collect()
        gc.freeze()

    def _active_for(self, model: str) -> ActiveGenerator:
        """The model's hot-swapping session; one is started for a model that appears later."""
        with self._actives_lock:
            if model not in self.actives:
                if model != SETTINGS.model and model not in self.registry.models():
                    known = ", ".join(self.registry.models()) or "none"
                    raise NotFoundError(f"model {model!r} is not hosted here (known: {known})")
                self.actives[model] = ActiveGenerator(
                    self.registry, model, threads=SETTINGS.threads, poll_s=SETTINGS.swap_poll_s,
                    retry_s=SETTINGS.swap_retry_s,
                    on_swap=self._swapped,
                ).start()
            return self.actives[model]

    @staticmethod
    def _swapped(old: LoadedVersion | None, new: LoadedVersion | None) -> None:
        m = metrics()
        if old is not None:
            m.active_model.labels(old.version).set(0)
        if new is None:  # refusing: the active version cannot be served
            return
        publish_version(new.manifest)
        if old is not None:
            m.swaps.inc()
        m.active_model.labels(new.version).set(1)

    @bentoml.on_shutdown
    def _stop(self) -> None:
        for active in self.actives.values():
            active.stop()
        self.monitor.stop()

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: not ready while a model's active version cannot be served. Every
        worker decides from the same files on disk, so every worker gives the same answer."""
        return all(active.ready for active in list(self.actives.values()))

    def _resolve(self, version: str | None, model: str | None, default: str) -> LoadedVersion:
        with _client_errors():
            if model is None:  # a named version says which model; else the route's default
                model = self.registry.get(version).model if version else default
            return self._active_for(model).resolve(version)

    def _sample(
        self, n: int, seed: int | None, version: str | None, model: str | None,
    ) -> tuple[LoadedVersion, int, np.ndarray]:
        loaded = self._resolve(version, model, SETTINGS.model)
        with _client_errors():
            generator = loaded.generator
        if seed is None:
            seed = secrets.randbelow(2**31)
        images = generator.sample(n, seed)
        metrics().generated_images.labels(loaded.version).inc(n)
        self.monitor.offer(loaded.version, images)
        return loaded, seed, images

    @staticmethod
    def _headers(ctx: bentoml.Context, loaded: LoadedVersion, seed: int | None) -> None:
        ctx.response.headers["X-Lethe-Model-Version"] = loaded.version
        if seed is not None:
            ctx.response.headers["X-Lethe-Seed"] = str(seed)
        ctx.response.headers["X-Lethe-Worker"] = str(os.getpid())  # which worker answered

    @bentoml.api(route="/generate")
    def generate(
        self, ctx: bentoml.Context, n: Count = 1, seed: Seed = None, version: VersionName = None, model: ModelName = None,
    ) -> dict[str, Any]:
        """``n`` images as base64 PNGs, with the model and version that made them and the seed."""
        loaded, seed, images = self._sample(n, seed, version, model)
        self._headers(ctx, loaded, seed)
        return {
            "model": loaded.manifest.model, "model_version": loaded.version, "seed": seed,
            "images": [base64.b64encode(_png(img)).decode() for img in images],
        }

    @bentoml.api(route="/grid")
    def grid(
        self, ctx: bentoml.Context, n: Count = 64, seed: Seed = None, version: VersionName = None, model: ModelName = None,
    ) -> Image.Image:
        """The same images as ``/generate``, as one PNG grid."""
        import torch
        from unlearning.images import grid_image

        loaded, seed, images = self._sample(n, seed, version, model)
        self._headers(ctx, loaded, seed)
        return grid_image(torch.from_numpy(images))

    @bentoml.api(route="/inpaint")
    def inpaint(
        self, ctx: bentoml.Context, images: PngImages, version: VersionName = None, model: I2IModelName = None,
    ) -> dict[str, Any]:
        """Restore ``images`` with an image-to-image model: it erases its own degradation
        (a fixed mask or the centre) and fills it in. Base64 PNGs in, base64 PNGs out."""
        from unlearning.data.files import decode_pngs

        loaded = self._resolve(version, model, SETTINGS.inpainter_model)
        with _client_errors():
            inpainter = loaded.inpainter
            try:
                blobs = [base64.b64decode(text, validate=True) for text in images]
            except (binascii.Error, ValueError):
                raise LetheError("images: every item must be a base64-encoded PNG") from None
            pixels = decode_pngs(blobs, expected_shape=inpainter.image_shape, label="images")
        restored = inpainter.restore(pixels.numpy())
        metrics().generated_images.labels(loaded.version).inc(len(restored))
        self.monitor.offer(loaded.version, restored)  # does what it serves still show the forgotten?
        self._headers(ctx, loaded, None)
        return {
            "model": loaded.manifest.model, "model_version": loaded.version,
            "images": [base64.b64encode(_png(img)).decode() for img in restored],
        }


@contextlib.contextmanager
def _client_errors():
    """Our errors as HTTP answers: an unknown model or version is 404; a version whose files
    fail their checksums (or an active version that would not load) is 409; anything else
    the caller can fix (a rejected version, the wrong route for a model, bad pixels) is 400."""
    try:
        yield
    except (ActiveUnservableError, IntegrityError) as exc:
        # the server's files, not the caller's request: 409 as the admin API answers; not a
        # 5xx, whose message BentoML replaces with "an unexpected error" (/readyz says 503)
        raise bentoml.exceptions.BentoMLException(str(exc), error_code=HTTPStatus.CONFLICT) from None
    except NotServableError as exc:
        raise bentoml.exceptions.InvalidArgument(str(exc)) from None
    except NotFoundError as exc:
        raise bentoml.exceptions.NotFound(str(exc)) from None
    except LetheError as exc:
        raise bentoml.exceptions.InvalidArgument(str(exc)) from None


Lethe.add_asgi_middleware(BodySizeLimit, limit=SETTINGS.max_request_bytes, admin_limit=SETTINGS.max_upload_bytes)
Lethe.add_asgi_middleware(ErrorBodyShape)
Lethe.add_asgi_middleware(RelativeRedirects)

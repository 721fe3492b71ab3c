"""The web service: ``create_app(checkpoint)`` -> a FastAPI app (page + JSON API).

Endpoints (the OpenAPI schema is at ``/openapi.json``):

``GET  /``          the page: drop an X-ray, see the findings as a sorted bar chart of
                    probabilities, pick a finding for its Grad-CAM overlay
``POST /predict``   multipart ``file`` -> per-finding probability, threshold, positive flag
``POST /explain``   multipart ``file`` (+ optional ``finding``) -> Grad-CAM overlay as a
                    base64 PNG, with that finding's probability
``GET  /info``      the model, its findings and thresholds, the upload limits
``GET  /healthz``   liveness

Every prediction goes through :class:`cxrkit.inference.LoadedModel`, i.e. the checkpoint's
own preprocessing, so a probability here equals ``cxrkit.load(ckpt).predict(image)``.
Uploads are checked by :mod:`cxrkit.serve.uploads`; a refused upload is a 4xx with
``{"detail": "..."}`` naming what was wrong, and the service keeps serving.

Inference is CPU-bound and a PyTorch module with Grad-CAM hooks is not safe to share
between threads, so decoding runs in Starlette's thread pool (off the event loop, in
parallel) while the model calls take one lock, one request at a time.

Research use only: not a medical device. The page, every response and ``/info`` say so.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from pathlib import Path

import cv2
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrkit.inference import TTA_MODES, LoadedModel, load
from cxrkit.messages import quote
from cxrkit.serve.uploads import (DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS,
                                  DecodedUpload, UploadError, decode_upload)

log = logging.getLogger(__name__)

DISCLAIMER = ("Research use only. Not a medical device: not for diagnosis, treatment or any "
              "clinical decision.")
#: Multipart framing (boundaries, part headers, the ``finding`` field) allowed on top of
#: ``max_upload_bytes`` when FastAPI caps the whole request body.
FORM_OVERHEAD_BYTES = 64 * 1024
#: The overlay is drawn on the cache-stage image (what the model saw); smaller cache
#: images are enlarged (bilinear) to this side in pixels so the overlay's label is legible.
OVERLAY_MIN_SIDE = 512
STATIC = Path(__file__).with_name("static")


# -- response schemas (they become the OpenAPI schema) ---------------------------------------
class FindingResult(BaseModel):
    finding: str
    probability: float = Field(description="sigmoid of the model's logit, 0..1")
    threshold: float = Field(description="decision threshold (checkpoint sidecar, else 0.5)")
    positive: bool = Field(description="probability >= threshold")


class ImageInfo(BaseModel):
    filename: str
    format: str = Field(description="PNG, JPEG or DICOM, from the content")
    width: int = Field(description="pixels")
    height: int = Field(description="pixels")
    bytes: int


class ModelInfo(BaseModel):
    model: str = Field(description="registry name of the architecture")
    checkpoint: str = Field(description="checkpoint file name")
    checkpoint_sha256: str
    input_size: int = Field(description="side of the network input, pixels")
    cache_size: int = Field(description="side of the cache-stage image, pixels")
    tta: str
    thresholds_source: str | None = None
    warning: str | None = Field(None, description="why the results need extra care, if any")
    disclaimer: str = DISCLAIMER


class PredictResponse(ModelInfo):
    image: ImageInfo
    findings: list[FindingResult] = Field(description="one per finding, in the model's order")


class ExplainResponse(ModelInfo):
    image: ImageInfo
    finding: str
    probability: float
    threshold: float
    positive: bool
    method: str = "gradcam"
    overlay_png_base64: str = Field(description="RGB PNG: Grad-CAM heat over the cache-stage image")
    overlay_width: int
    overlay_height: int


class InfoResponse(ModelInfo):
    findings: list[str]
    thresholds: dict[str, float]
    max_upload_bytes: int
    max_pixels: int


class Health(BaseModel):
    status: str
    model: str
    checkpoint: str


class ErrorResponse(BaseModel):
    detail: str


ERRORS = {s: {"model": ErrorResponse, "description": d} for s, d in (
    (400, "empty upload"), (413, "file over max_upload_bytes or image over max_pixels"),
    (415, "not a PNG, JPEG or DICOM image"), (422, "corrupt image, unknown finding or "
                                                  "missing file field"))}


# -- the model behind the service ------------------------------------------------------------
class Service:
    """One loaded model, its thresholds and a lock; what every endpoint calls."""

    def __init__(self, lm: LoadedModel, *, tta: str, max_upload_bytes: int, max_pixels: int):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.lm, self.tta = lm, tta
        self.max_upload_bytes, self.max_pixels = int(max_upload_bytes), int(max_pixels)
        self.lock = threading.Lock()
        self.thresholds = {f: float(t) for f, t in zip(lm.findings, lm.threshold_vector())}
        notes = []
        if not lm.thresholds:
            notes.append("no thresholds were chosen for this checkpoint (run cxrkit "
                         "evaluate); 'positive' uses 0.5 for every finding")
        if lm.thresholds_mismatch(tta):
            notes.append(lm.thresholds_mismatch(tta))
        if lm.tta_note(tta):
            notes.append(lm.tta_note(tta))
        if lm.metadata:
            notes.append("this model was trained with patient metadata, which the service "
                         "does not take: age is marked missing and sex/view default to "
                         "female/PA")
        self.model_info = ModelInfo(
            model=str(getattr(lm.model.cxr_config, "name", type(lm.model).__name__)),
            checkpoint=lm.checkpoint.name, checkpoint_sha256=lm.checkpoint_sha256,
            input_size=lm.preprocessing.input_size, cache_size=lm.preprocessing.cache.size, tta=tta,
            thresholds_source=lm.thresholds_source, warning="; ".join(notes) or None)

    def decode(self, data: bytes, filename: str) -> DecodedUpload:
        return decode_upload(data, filename, max_upload_bytes=self.max_upload_bytes,
                             max_pixels=self.max_pixels)

    def _image_info(self, up: DecodedUpload, filename: str) -> ImageInfo:
        return ImageInfo(filename=filename, format=up.format, width=up.width,
                         height=up.height, bytes=up.bytes)

    def _result(self, finding: str, p: float) -> FindingResult:
        t = self.thresholds[finding]
        return FindingResult(finding=finding, probability=p, threshold=t, positive=p >= t)

    def predict(self, data: bytes, filename: str) -> PredictResponse:
        up = self.decode(data, filename)
        with self.lock:
            probs = self.lm.predict(up.image, tta=self.tta).iloc[0]
        rows = [self._result(f, float(probs[f])) for f in self.lm.findings]
        return PredictResponse(**self.model_info.model_dump(),
                               image=self._image_info(up, filename), findings=rows)

    def explain(self, data: bytes, filename: str, finding: str | None) -> ExplainResponse:
        from cxrkit.explain.overlay import overlay
        from cxrkit.explain.saliency import saliency_maps

        if finding is not None:
            finding = self._finding(finding)
        up = self.decode(data, filename)
        cached = self.lm.load_images([up.image])  # (1, 1, S, S) uint8, the cache stage
        with self.lock:
            probs = self.lm.predict(up.image, tta=self.tta).iloc[0]  # the same as /predict
            if finding is None:  # the most probable finding
                finding = str(probs.idxmax())
            heat = saliency_maps(self.lm, cached, finding, method="gradcam")[0]
        p = float(probs[finding])
        base = cached[0, 0].numpy()
        if base.shape[0] < OVERLAY_MIN_SIDE:
            base = cv2.resize(base, (OVERLAY_MIN_SIDE, OVERLAY_MIN_SIDE),
                              interpolation=cv2.INTER_LINEAR)
        rgb = overlay(base, heat, label=f"{finding}  p={p:.2f}")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        r = self._result(finding, p)
        return ExplainResponse(**self.model_info.model_dump(), image=self._image_info(up, filename),
                               finding=finding, probability=p, threshold=r.threshold,
                               positive=r.positive,
                               overlay_png_base64=base64.b64encode(buf.getvalue()).decode(),
                               overlay_width=int(rgb.shape[1]), overlay_height=int(rgb.shape[0]))

    def _finding(self, name: str) -> str:
        """Canonical spelling (case and aliases as :func:`cxrkit.labels.canonical_finding`)."""
        from cxrkit.labels import canonical_finding

        try:
            canonical = canonical_finding(name, allow_no_finding=False)
        except ValueError:
            canonical = None
        if canonical not in self.lm.findings:
            raise UploadError(422, f"finding {quote(name)} is not one of the model's findings: "
                                   f"{', '.join(self.lm.findings)}")
        return canonical

    def info(self) -> InfoResponse:
        return InfoResponse(**self.model_info.model_dump(), findings=list(self.lm.findings),
                            thresholds=self.thresholds, max_upload_bytes=self.max_upload_bytes,
                            max_pixels=self.max_pixels)


# -- the app ---------------------------------------------------------------------------------
def create_app(checkpoint: str | Path | LoadedModel, *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, tta: str = "none",
               device: str | None = None, thresholds: str | Path | None = None) -> FastAPI:
    """The service for one checkpoint (a file, a run folder, or an already loaded model).

    ``max_upload_bytes``: largest accepted file; the whole request body is capped at that
    plus :data:`FORM_OVERHEAD_BYTES` while it streams in (:class:`BodyLimit`). ``max_pixels``:
    largest image (width x height), checked from the header before decoding. ``tta``:
    test-time augmentation for every request (see :mod:`cxrkit.inference`).
    ``device``/``thresholds``: passed to :func:`cxrkit.inference.load` for a path.
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise ValueError("max_upload_bytes and max_pixels must be positive")
    lm = checkpoint if isinstance(checkpoint, LoadedModel) else load(
        checkpoint, device=device, thresholds=thresholds)
    service = Service(lm, tta=tta, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    body_limit = max_upload_bytes + FORM_OVERHEAD_BYTES
    # no /docs or /redoc: FastAPI's docs pages load Swagger/ReDoc from a CDN, and the
    # service must work without internet; the schema itself is at /openapi.json
    app = FastAPI(title="cxrkit", version=_version(),
                  docs_url=None, redoc_url=None,
                  description=f"Chest X-ray findings from a cxrkit checkpoint "
                              f"({service.model_info.model}, {lm.checkpoint.name}). "
                              f"{DISCLAIMER}")
    app.state.service = service

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, e: UploadError):
        log.info("refused %s %s: %s", request.method, request.url.path, e.detail)
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    async def read(file: UploadFile) -> tuple[bytes, str]:
        # one byte past the limit is enough to know it is over
        return await file.read(max_upload_bytes + 1), file.filename or "upload"

    upload = File(description="a chest X-ray: PNG, JPEG or DICOM (checked by content)")

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(file: UploadFile = upload) -> PredictResponse:
        """Probability, threshold and positive flag for every finding of one X-ray."""
        data, name = await read(file)
        return await run_in_threadpool(service.predict, data, name)

    @app.post("/explain", response_model=ExplainResponse, responses=ERRORS)
    async def explain(file: UploadFile = upload,
                      finding: str | None = Form(None, description="default: the most probable")
                      ) -> ExplainResponse:
        """Grad-CAM overlay (base64 PNG) for one finding, with its probability."""
        data, name = await read(file)
        return await run_in_threadpool(service.explain, data, name, finding or None)

    @app.get("/info", response_model=InfoResponse)
    async def info() -> InfoResponse:
        """The model, its findings and thresholds, and the upload limits."""
        return service.info()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok", model=service.model_info.model, checkpoint=lm.checkpoint.name)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # the page loads only its own files: no CDN, nothing from the internet
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                                       "object-src 'none'; base-uri 'none'",
            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_body_size=body_limit, max_upload_bytes=max_upload_bytes)
    return app


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, detail: str):
        super().__init__(status_code=413, detail=detail)


class BodyLimit:
    """Cap the request body at ``max_body_size`` bytes while it streams in (ASGI middleware).

    A declared ``Content-Length`` over the cap is refused before any byte is read; a body
    without one (chunked) is counted as it arrives and refused at the first chunk past the
    cap, so nothing larger is ever buffered. Hand-written (30 lines) rather than FastAPI's
    ``max_body_size``, which answers a text/plain "Content Too Large" naming no limit,
    where this API promises JSON ``{"detail": ...}`` saying which limit was hit.
    """

    def __init__(self, app, *, max_body_size: int, max_upload_bytes: int):
        self.app, self.max_body_size = app, int(max_body_size)
        self.max_upload_bytes = int(max_upload_bytes)

    def detail(self, size: int | None) -> str:
        body = "request body" if size is None else f"request body of {size:,} bytes"
        return (f"{body} is over the limit of {self.max_body_size:,} bytes: files are limited "
                f"to {self.max_upload_bytes:,} bytes (max_upload_bytes)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_size:
            response = JSONResponse({"detail": self.detail(int(declared))}, 413)
            return await response(scope, receive, send)
        total = 0

        async def limited_receive():
            nonlocal total
            message = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_size:
                    raise BodyTooLarge(self.detail(None))
            return message

        await self.app(scope, limited_receive, send)


def _version() -> str:
    from cxrkit import __version__
    return __version__


__all__ = ["DISCLAIMER", "ExplainResponse", "PredictResponse", "Service", "create_app"]

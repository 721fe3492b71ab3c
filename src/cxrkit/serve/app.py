"""The web service: ``create_app(checkpoint)`` -> a FastAPI app (page + JSON API).

Endpoints (the OpenAPI schema is at ``/openapi.json``):

``GET  /``          the page: drop an X-ray, see the findings as a sorted bar chart of
                    probabilities, pick a finding for its Grad-CAM overlay
``POST /predict``   multipart ``file`` -> per-finding probability, threshold, positive flag
``POST /explain``   multipart ``file`` (+ optional ``finding``) -> Grad-CAM overlay as a
                    base64 PNG, with that finding's probability
                    (both take optional ``age``, ``sex`` and ``view`` form fields for a
                    model trained with patient metadata; a DICOM's own tags fill the
                    fields not sent, and the rest get the training defaults)
``GET  /info``      the model, its findings and thresholds, the upload limits
``GET  /healthz``   liveness

Every prediction goes through :class:`cxrkit.inference.LoadedModel`, i.e. the checkpoint's
own preprocessing, so a probability here equals ``cxrkit.load(ckpt).predict(image)``.
Uploads are checked by :mod:`cxrkit.serve.uploads`; a refused upload is a 4xx with
``{"detail": "..."}`` naming what was wrong, and the service keeps serving.

Inference is CPU-bound and a PyTorch module with Grad-CAM hooks is not safe to share
between threads, so decoding runs off the event loop (a Starlette thread waits on a
decoding worker process of :class:`cxrkit.data.decoder.Decoder`, under a deadline and a
memory bound, so a hostile upload gets a 422 and cannot hang or exhaust the service)
while the model calls take one lock. Concurrent ``/predict`` requests are gathered into
one forward pass (:mod:`cxrkit.serve.batching`: ``max_batch``, ``max_wait_ms``); ``/info``
reports the precision the model runs at and the batching.

Research use only: not a medical device. The page, every response and ``/info`` say so.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import warnings
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np

import cv2
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from cxrkit.data.decoder import DecodeLimitError, DecodeLimits, Decoder, default_workers
from cxrkit.data.metadata import FIELDS, parse_age, parse_sex, parse_view
from cxrkit.inference.core import TTA_MODES, LoadedModel, load
from cxrkit.messages import quote
from cxrkit.metrics import sigmoid
from cxrkit.inference.predictor import OodMissingWarning
from cxrkit.serve.batching import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, Batcher
from cxrkit.serve.uploads import (
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_PIXELS,
    DecodedUpload,
    UploadError,
    decode_upload,
)

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Research use only. Not a medical device: not for diagnosis, treatment or any "
    "clinical decision."
)
#: Multipart framing (boundaries, part headers, the ``finding`` field) allowed on top of
#: ``max_upload_bytes`` when FastAPI caps the whole request body.
FORM_OVERHEAD_BYTES = 64 * 1024
#: The overlay is drawn on the cache-stage image (what the model saw); smaller cache
#: images are enlarged (bilinear) to this side in pixels so the overlay's label is legible.
OVERLAY_MIN_SIDE = 512
STATIC = Path(__file__).with_name("static")
OOD_WARNING = (
    "This image does not look like the images this model was trained on "
    "(out-of-distribution score {score:.1f}; above 1 is flagged). The findings "
    "below are unreliable: check that it is a frontal chest radiograph, upright, "
    "not inverted, of the kind the model was trained on."
)
#: How each patient-metadata form field is read, and what a refused value is told.
META_PARSERS = {
    "age": (parse_age, "not an age: years from 0 to 120, or DICOM's 058Y / 011M / 006W / 003D"),
    "sex": (parse_sex, "not a sex: M or F (male/female accepted)"),
    "view": (parse_view, "not a view: PA or AP"),
}


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
    takes_metadata: bool = Field(
        description="whether the model was trained with patient "
        "metadata (send age, sex and view with each image)"
    )
    thresholds_source: str | None = None
    warning: str | None = Field(None, description="why the results need extra care, if any")
    disclaimer: str = DISCLAIMER


class PatientMetadata(BaseModel):
    age: float | None = Field(
        None, description="years; null: missing (the model's 'age missing' input is set)"
    )
    sex: str | None = Field(
        None, description="M or F; null: missing (the training default, F, was used)"
    )
    view: str | None = Field(
        None, description="PA or AP; null: missing (the training default, PA, was used)"
    )
    source: dict[str, str] = Field(
        description="per field: 'form', 'dicom' (the upload's own tag) or 'missing'"
    )
    missing: list[str] = Field(description="the fields no source gave")


class PredictResponse(ModelInfo):
    image: ImageInfo
    metadata: PatientMetadata | None = Field(
        None,
        description="the patient metadata the model was given; null when the model "
        "takes none (age, sex and view sent to it are ignored)",
    )
    ood_score: float | None = Field(
        None,
        description="out-of-distribution score: > 1 means unlike the training images "
        "(null when the checkpoint has no OOD record)",
    )
    ood_flag: bool | None = Field(None, description="ood_score > 1")
    ood_warning: str | None = Field(None, description="what the flag means, when flagged")
    findings: list[FindingResult] = Field(description="one per finding, in the model's order")


class ExplainResponse(ModelInfo):
    image: ImageInfo
    metadata: PatientMetadata | None = Field(None, description="as in /predict")
    finding: str
    probability: float
    threshold: float
    positive: bool
    method: str = "gradcam"
    overlay_png_base64: str = Field(description="RGB PNG: Grad-CAM heat over the cache-stage image")
    overlay_width: int
    overlay_height: int


class BatchingInfo(BaseModel):
    enabled: bool = Field(description="false when max_batch is 1: one forward pass per request")
    max_batch: int = Field(description="most images in one forward pass")
    max_wait_ms: float = Field(
        description="longest wait for more requests after the first "
        "(only while others are still decoding)"
    )
    batches: int = Field(
        description="forward passes run so far for /predict (a lone "
        "request's own pass counts as a batch of 1)"
    )
    images: int = Field(description="images in them")
    largest_batch: int
    mean_batch: float | None = None


class InfoResponse(ModelInfo):
    findings: list[str]
    thresholds: dict[str, float]
    max_upload_bytes: int
    max_pixels: int
    precision: dict = Field(
        description="how the forward pass runs (cxrkit.runtime): "
        "requested, used (fp32, onnxruntime, openvino-bf16, "
        "...), why, and the engine's details"
    )
    batching: BatchingInfo


class Health(BaseModel):
    status: str
    model: str
    checkpoint: str


class ErrorResponse(BaseModel):
    detail: str


ERRORS: dict[int | str, dict] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in (
        (400, "empty upload"),
        (413, "file over max_upload_bytes or image over max_pixels"),
        (415, "not a PNG, JPEG or DICOM image"),
        (422, "corrupt image, unknown finding, unreadable age/sex/view or missing file field"),
    )
}


# -- the model behind the service ------------------------------------------------------------
class Service:
    """One loaded model, its thresholds and a lock; what every endpoint calls."""

    def __init__(
        self,
        lm: LoadedModel,
        *,
        tta: str,
        max_upload_bytes: int,
        max_pixels: int,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
        decode_limits: DecodeLimits | None = None,
        decode_workers: int | None = None,
    ):
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.lm, self.tta = lm, tta
        self.max_upload_bytes, self.max_pixels = int(max_upload_bytes), int(max_pixels)
        limits = decode_limits or DecodeLimits()
        self.decode_limits = replace(limits, max_pixels=self.max_pixels)
        # uploads are decoded in worker processes: a hostile file costs one worker
        self.decoder = Decoder(
            decode_workers or default_workers(64),
            limits=self.decode_limits,
            preload=("cxrkit.serve.uploads",),
        )
        self.lock = threading.Lock()
        self.batcher = Batcher(
            lm, tta=tta, max_batch=max_batch, max_wait_ms=max_wait_ms, lock=self.lock
        )
        self.thresholds = {f: float(t) for f, t in zip(lm.findings, lm.threshold_vector())}
        notes = []
        if not lm.thresholds:
            notes.append(
                "no thresholds were chosen for this checkpoint (run cxrkit "
                "evaluate); 'positive' uses 0.5 for every finding"
            )
        if lm.thresholds_mismatch(tta):
            notes.append(lm.thresholds_mismatch(tta))  # type: ignore[arg-type]  # not None: checked above
        if lm.tta_note(tta):
            notes.append(lm.tta_note(tta))  # type: ignore[arg-type]  # not None: checked above
        if lm.ood_note():
            notes.append(lm.ood_note())  # type: ignore[arg-type]  # not None: checked above
        self.model_info = ModelInfo(
            model=str(getattr(lm.model.cxr_config, "name", type(lm.model).__name__)),
            checkpoint=lm.checkpoint.name,
            checkpoint_sha256=lm.checkpoint_sha256,
            input_size=lm.preprocessing.input_size,
            cache_size=lm.preprocessing.cache.size,
            tta=tta,
            takes_metadata=bool(lm.metadata),
            thresholds_source=lm.thresholds_source,
            warning="; ".join(notes) or None,
        )

    def decode(self, data: bytes, filename: str) -> DecodedUpload:
        """The upload checked and decoded in a worker process (:mod:`cxrkit.data.decoder`:
        a deadline and a memory bound); a bound that is hit is a 422 (413 for memory)."""
        kwargs = {"max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels}
        if not data or len(data) > self.max_upload_bytes:  # refused at once, here
            return decode_upload(data, filename, **kwargs)
        try:
            return self.decoder.call(decode_upload, data, filename, label=filename, **kwargs)
        except DecodeLimitError as e:
            raise UploadError(
                413 if e.kind == "memory" else 422, f"{filename}: cannot decode: {e.reason}"
            ) from None

    @staticmethod
    def _parse_field(name: str, raw) -> float | str | None:
        """One age/sex/view value read as :mod:`cxrkit.data.metadata` reads it; None when
        it is absent, empty or unreadable."""
        if raw is None or not str(raw).strip():
            return None
        value = META_PARSERS[name][0](str(raw))
        return None if isinstance(value, float) and math.isnan(value) else value

    def check_metadata(self, form: dict[str, str | None]) -> dict:
        """The age/sex/view form fields sent, parsed (422 naming a field it cannot read).
        Checked before the upload is decoded; empty fields count as not sent."""
        given = {}
        for name in FIELDS:
            raw = form.get(name)
            value = self._parse_field(name, raw)
            if value is None and raw is not None and str(raw).strip():
                raise UploadError(422, f"{name} {quote(raw)}: {META_PARSERS[name][1]}")
            if value is not None:
                given[name] = value
        return given

    def metadata(
        self, given: dict, up: DecodedUpload
    ) -> tuple[list[dict] | None, PatientMetadata | None]:
        """``meta`` for the model (None when it takes none) and what the response reports:
        per field the form value, else the upload's DICOM tag (an unreadable tag is a
        missing value, as in cxrkit predict), else missing."""
        if not self.lm.metadata:
            return None, None
        values, source = {}, {}
        for name in FIELDS:
            tag = self._parse_field(name, up.tags.get(name))
            if name in given:
                values[name], source[name] = given[name], "form"
            elif tag is not None:
                values[name], source[name] = tag, "dicom"
            else:
                values[name], source[name] = None, "missing"
        report = PatientMetadata(
            **values, source=source, missing=[n for n in FIELDS if source[n] == "missing"]
        )
        return [values], report

    def _decode_with_metadata(self, data: bytes, filename: str, form: dict | None):
        """The form's metadata checked, then the upload decoded: ``(upload, meta, report)``."""
        given = self.check_metadata(form or {})
        up = self.decode(data, filename)
        return (up, *self.metadata(given, up))

    def _image_info(self, up: DecodedUpload, filename: str) -> ImageInfo:
        return ImageInfo(
            filename=filename, format=up.format, width=up.width, height=up.height, bytes=up.bytes
        )

    def _result(self, finding: str, p: float) -> FindingResult:
        t = self.thresholds[finding]
        return FindingResult(finding=finding, probability=p, threshold=t, positive=p >= t)

    def predict(self, data: bytes, filename: str, form: dict | None = None) -> PredictResponse:
        with self.batcher.incoming():  # decoding: a batch being gathered may wait for it
            up, meta, meta_report = self._decode_with_metadata(data, filename, form)
            cached = self.lm.cached_batch([up.image])[0]  # (1, S, S) uint8
            mm = self.lm.meta_matrix(1, meta)
        z, score, flag = self.batcher.score(cached, mm)
        p = sigmoid(np.asarray(z))
        rows = [self._result(f, float(v)) for f, v in zip(self.lm.findings, p, strict=True)]
        return PredictResponse(
            **self.model_info.model_dump(),
            image=self._image_info(up, filename),
            findings=rows,
            metadata=meta_report,
            ood_score=score,
            ood_flag=flag,
            ood_warning=OOD_WARNING.format(score=score) if flag else None,
        )

    def explain(
        self, data: bytes, filename: str, finding: str | None, form: dict | None = None
    ) -> ExplainResponse:
        from cxrkit.explain.overlay import overlay
        from cxrkit.explain.saliency import saliency_maps

        if finding is not None:
            finding = self._finding(finding)
        up, meta, meta_report = self._decode_with_metadata(data, filename, form)
        cached = self.lm.load_images([up.image])  # (1, 1, S, S) uint8, the cache stage
        with self.lock:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OodMissingWarning)
                probs = self.lm.predict(up.image, meta=meta, tta=self.tta).iloc[0]  # as /predict
            if finding is None:  # the most probable finding
                finding = str(probs[list(self.lm.findings)].astype(float).idxmax())
            heat = saliency_maps(self.lm, cached, finding, method="gradcam", meta=meta)[0]
        p = float(probs[finding])
        base = cached[0, 0].numpy()
        if base.shape[0] < OVERLAY_MIN_SIDE:
            base = cv2.resize(
                base, (OVERLAY_MIN_SIDE, OVERLAY_MIN_SIDE), interpolation=cv2.INTER_LINEAR
            )
        rgb = overlay(base, heat, label=f"{finding}  p={p:.2f}")
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        r = self._result(finding, p)
        return ExplainResponse(
            **self.model_info.model_dump(),
            image=self._image_info(up, filename),
            metadata=meta_report,
            finding=finding,
            probability=p,
            threshold=r.threshold,
            positive=r.positive,
            overlay_png_base64=base64.b64encode(buf.getvalue()).decode(),
            overlay_width=int(rgb.shape[1]),
            overlay_height=int(rgb.shape[0]),
        )

    def _finding(self, name: str) -> str:
        """Canonical spelling (case and aliases as :func:`cxrkit.labels.canonical_finding`)."""
        from cxrkit.labels import canonical_finding

        try:
            canonical = canonical_finding(name, allow_no_finding=False)
        except ValueError:
            canonical = None
        if canonical not in self.lm.findings:
            raise UploadError(
                422,
                f"finding {quote(name)} is not one of the model's findings: "
                f"{', '.join(self.lm.findings)}",
            )
        return canonical

    def info(self) -> InfoResponse:
        return InfoResponse(
            **self.model_info.model_dump(),
            findings=list(self.lm.findings),
            thresholds=self.thresholds,
            max_upload_bytes=self.max_upload_bytes,
            max_pixels=self.max_pixels,
            precision=self.lm.precision,
            batching=BatchingInfo(**self.batcher.stats()),
        )


# -- the app ---------------------------------------------------------------------------------
def _add_routes(app: FastAPI, service: Service, max_upload_bytes: int) -> None:
    """The service's routes: ``/predict``, ``/explain``, ``/info``, ``/healthz`` and the page
    at ``/``, and the handler that answers a refused upload with JSON ``{"detail": ...}``."""

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, e: UploadError):
        log.info("refused %s %s: %s", request.method, request.url.path, e.detail)
        return JSONResponse({"detail": e.detail}, status_code=e.status)

    async def read(file: UploadFile) -> tuple[bytes, str]:
        # one byte past the limit is enough to know it is over
        return await file.read(max_upload_bytes + 1), file.filename or "upload"

    upload = File(description="a chest X-ray: PNG, JPEG or DICOM (checked by content)")
    age_field = Form(
        None,
        description="patient age: years, or DICOM's 058Y (models trained "
        "with metadata; default: the DICOM tag, else missing)",
    )
    sex_field = Form(None, description="M or F (default: the DICOM tag, else missing)")
    view_field = Form(None, description="PA or AP (default: the DICOM tag, else missing)")

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS)
    async def predict(
        file: UploadFile = upload,
        age: str | None = age_field,
        sex: str | None = sex_field,
        view: str | None = view_field,
    ) -> PredictResponse:
        """Probability, threshold and positive flag for every finding of one X-ray."""
        data, name = await read(file)
        form = {"age": age, "sex": sex, "view": view}
        return await run_in_threadpool(service.predict, data, name, form)

    @app.post("/explain", response_model=ExplainResponse, responses=ERRORS)
    async def explain(
        file: UploadFile = upload,
        finding: str | None = Form(None, description="default: the most probable"),
        age: str | None = age_field,
        sex: str | None = sex_field,
        view: str | None = view_field,
    ) -> ExplainResponse:
        """Grad-CAM overlay (base64 PNG) for one finding, with its probability."""
        data, name = await read(file)
        form = {"age": age, "sex": sex, "view": view}
        return await run_in_threadpool(service.explain, data, name, finding or None, form)

    @app.get("/info", response_model=InfoResponse)
    async def info() -> InfoResponse:
        """The model, its findings and thresholds, and the upload limits."""
        return service.info()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(
            status="ok", model=service.model_info.model, checkpoint=service.lm.checkpoint.name
        )

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        # the page loads only its own files: no CDN, nothing from the internet
        return FileResponse(
            STATIC / "index.html",
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
                "object-src 'none'; base-uri 'none'",
                "Cache-Control": "no-cache",
            },
        )


def create_app(
    checkpoint: str | Path | LoadedModel,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    tta: str = "none",
    device: str | None = None,
    thresholds: str | Path | None = None,
    precision: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    decode_limits: DecodeLimits | None = None,
    decode_workers: int | None = None,
) -> FastAPI:
    """The service for one checkpoint (a file, a run folder, or an already loaded model).

    ``max_upload_bytes``: largest accepted file; the whole request body is capped at that
    plus :data:`FORM_OVERHEAD_BYTES` while it streams in (:class:`BodyLimit`). ``max_pixels``:
    largest image (width x height), checked from the header before decoding. ``tta``:
    test-time augmentation for every request (see :mod:`cxrkit.inference`).
    ``device``/``thresholds``/``precision``: passed to :func:`cxrkit.inference.load` for a
    path (``precision``: see :mod:`cxrkit.inference.runtime`). ``max_batch``/``max_wait_ms``:
    concurrent ``/predict`` requests gathered into one forward pass
    (:mod:`cxrkit.serve.batching`; ``max_batch=1``: one pass per request).
    deadline and memory bound of one upload's decoding
    (:class:`cxrkit.data.decoder.DecodeLimits`; its ``max_pixels`` is this ``max_pixels``);
    ``decode_workers``: decoding processes (default: half the cores).
    """
    if max_upload_bytes < 1 or max_pixels < 1:
        raise ValueError("max_upload_bytes and max_pixels must be positive")
    lm = (
        checkpoint
        if isinstance(checkpoint, LoadedModel)
        else load(checkpoint, device=device, thresholds=thresholds, precision=precision)
    )
    service = Service(
        lm,
        tta=tta,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        decode_limits=decode_limits,
        decode_workers=decode_workers,
    )

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.decoder.close()  # the decoding workers stop with the service

    body_limit = max_upload_bytes + FORM_OVERHEAD_BYTES
    # no /docs or /redoc: FastAPI's docs pages load Swagger/ReDoc from a CDN, and the
    # service must work without internet; the schema itself is at /openapi.json
    app = FastAPI(
        title="cxrkit",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description=f"Chest X-ray findings from a cxrkit checkpoint "
        f"({service.model_info.model}, {lm.checkpoint.name}). "
        f"{DISCLAIMER}",
    )
    app.state.service = service

    _add_routes(app, service, max_upload_bytes)
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
        return (
            f"{body} is over the limit of {self.max_body_size:,} bytes: files are limited "
            f"to {self.max_upload_bytes:,} bytes (max_upload_bytes)"
        )

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

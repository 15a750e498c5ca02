"""The HTTP side: FastAPI routes, error shapes, the gateway middleware and the drain switch.

Handlers validate, queue a job with the batcher and wait for it; they never touch the pipeline.
PNG encoding and the response happen here, in a thread of the event loop's pool, so the worker
starts the next batch (and the GPU its work) while this batch's images are encoded and sent;
the native response's timings (``batch_started_at``, ``batch_finished_at``, ``encode_s``) show it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import random
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, Cancelled, DeadlineExceeded, Job, NotAccepting, QueueFull
from .config import Settings
from .engine import Engine, ImageResult
from .logs import prompt_hash
from .metrics import Metrics
from .safety import DefaultSafetyFilter
from .schemas import (
    ApiError,
    GenerateRequest,
    ImageGenerationRequest,
    decode_b64_image,
    decode_image,
    parse_size,
    resolve,
)

log = logging.getLogger("diffusion_sampler.http")

#: ``X-Diffusion-Probe: golden-render``: a request of the operator's golden-render gate.
PROBE_HEADER, PROBE_VALUE = b"x-diffusion-probe", b"golden-render"

ENDPOINT_PATHS = {
    "/v1/images/generations": "generations",
    "/v1/generate": "generate",
    "/v1/images/edits": "edits",
}
_POLL_S = 0.2  # how often a waiting handler checks its deadline and whether the client is gone


@dataclass
class State:
    settings: Settings
    metrics: Metrics
    engine: Engine
    batcher: Batcher
    safety: DefaultSafetyFilter
    draining: bool = False
    inflight: int = 0
    exit_code: int = 0
    loop: asyncio.AbstractEventLoop | None = None
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def build(cls, settings: Settings) -> State:
        metrics = Metrics(settings.pool, settings.revision, settings.slo_latency_thresholds_s)
        safety = DefaultSafetyFilter(settings.safety_blocklist, settings.safety_checker == "auto")
        engine = Engine(settings, metrics, safety)
        batcher = Batcher(engine, metrics, settings.max_batch_size, settings.max_wait_ms / 1000.0,
                          settings.max_queue, settings.fault_latency_s)
        return cls(settings, metrics, engine, batcher, safety)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    err = ApiError(status, message, param, code, headers)
    return JSONResponse(err.body(), status_code=status, headers=err.headers)


class Gateway:
    """Outermost ASGI layer for the generation endpoints: request ids, the drain and readiness
    gate (503), fault injection, in-flight accounting, request metrics and one log line each."""

    def __init__(self, app, state: State) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        endpoint = ENDPOINT_PATHS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        st = self.state
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        if endpoint == "generate" and headers.get(PROBE_HEADER) == PROBE_VALUE:
            # The operator's golden renders: counted apart, so the canary analysis (which reads
            # the serving endpoints) never judges its own probes.
            endpoint = "golden-render"
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = {"code": 500}
        # Which revision answered: behind a weighted route a client (or an SRE with curl) can
        # tell the canary's answers from the stable's.
        served_by = [(b"x-request-id", request_id.encode()),
                     (b"x-diffusion-revision", st.settings.revision.encode("latin-1", "replace"))]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + served_by
            await send(message)

        st.inflight += 1
        try:
            if st.draining:
                response = _error(503, "the server is shutting down; retry on another replica", None,
                                  "draining", {"Retry-After": "1"})
                await response(scope, receive, send_wrapper)
            elif not st.batcher.ready.is_set():
                response = _error(503, "the model is still loading", None, "loading", {"Retry-After": "5"})
                await response(scope, receive, send_wrapper)
            elif _content_length(headers) > st.settings.max_body_bytes:
                # Answered before reading: the body limit middleware would answer in plain text.
                response = _error(413, f"request body is larger than {st.settings.max_body_bytes} bytes "
                                       "(SAMPLER_MAX_BODY_BYTES)", None, "body_too_large")
                await response(scope, receive, send_wrapper)
            elif st.settings.fault_error_rate and st.rng.random() < st.settings.fault_error_rate:
                response = _error(500, "injected fault (SAMPLER_FAULT_ERROR_RATE)", None, "injected_fault")
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive, send_wrapper)
        finally:
            st.inflight -= 1
            elapsed = time.perf_counter() - started
            code = status["code"]
            m = st.metrics
            m.l(m.requests, endpoint=endpoint, code=str(code)).inc()
            m.l(m.request_duration, endpoint=endpoint).observe(elapsed)
            info = scope["state"].get("log", {})
            log.info("request", extra={"request_id": request_id, "endpoint": endpoint, "code": code,
                                       "duration_s": round(elapsed, 4), **info})


def _content_length(headers: dict[bytes, bytes]) -> int:
    try:
        return int(headers.get(b"content-length", b"0") or 0)
    except ValueError:
        return 0  # the server rejects a malformed header itself


def create_app(state: State) -> Gateway:
    settings = state.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.loop = asyncio.get_running_loop()
        yield

    app = FastAPI(
        title="diffusion-sampler",
        version="0.1.0",
        description="Text-to-image, image-to-image and inpainting with a diffusers pipeline; "
                    "OpenAI Images API compatible.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        max_body_size=settings.max_body_bytes,
    )

    # -- errors ----------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
        if bad_json is not None:
            detail = (bad_json.get("ctx") or {}).get("error", "invalid JSON")
            return _error(400, f"malformed JSON body: {detail}", None, "invalid_json")
        first = errors[0]
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or "body"
        if first.get("type") == "missing" and param == "body":
            return _error(400, "a JSON request body is required", None, "missing_body")
        return _error(422, f"{param}: {first.get('msg', 'invalid value')}", param, first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            return _error(413, f"request body is larger than {settings.max_body_bytes} bytes "
                               "(SAMPLER_MAX_BODY_BYTES)", None, "body_too_large")
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8, a broken form)
            return _error(400, f"malformed request body ({exc.detail}): send a JSON object in UTF-8", None,
                          "invalid_body")
        return _error(exc.status_code, str(exc.detail), None, None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Not inside an except block, so pass the exception explicitly for the traceback.
        log.error("unhandled error", exc_info=exc)
        return _error(500, "internal error", None, "internal_error")

    # -- probes and metrics ----------------------------------------------------------------
    @app.get("/healthz", tags=["probes"], responses={500: _STATUS_RESPONSE})
    async def healthz():
        if state.batcher.failed is not None:
            return JSONResponse({"status": "failed"}, status_code=500)
        return {"status": "alive"}

    @app.get("/readyz", tags=["probes"], responses={503: _STATUS_RESPONSE})
    async def readyz():
        if state.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        if state.batcher.failed is not None:
            return JSONResponse({"status": "failed"}, status_code=503)
        if not state.batcher.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "model": settings.model_name, "revision": settings.revision}

    @app.get("/metrics", tags=["probes"], response_class=Response,
             responses={200: {"description": "Prometheus text exposition", "content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", tags=["openai"])
    async def models():
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": 0,
                                            "owned_by": "diffusion-operator"}]}

    # -- generation ------------------------------------------------------------------------
    async def run(request: Request, shape, items, timeout: float) -> tuple[list[dict], list[bytes]]:
        """Queue, wait, encode. Returns per-image info dicts and PNG bytes."""
        request.state.log = {"prompt_hash": prompt_hash(items[0].prompt), "n": len(items),
                             "size": f"{shape.width}x{shape.height}", "steps": shape.steps}
        if not state.safety.check_prompt(items[0].prompt):
            state.metrics.l(state.metrics.safety, outcome="blocked_prompt").inc(len(items))
            request.state.log["safety"] = "blocked_prompt"
            blank = np.zeros((shape.height, shape.width, 3), dtype=np.uint8)
            results = [ImageResult(blank, it.seed, "blocked_prompt", "ok") for it in items]
            timings = {"queue_wait_s": 0.0, "denoise_s": 0.0, "decode_s": 0.0, "batch_size": 0,
                       "batch_started_at": 0.0, "batch_finished_at": 0.0}
            return await _finish(results, timings)
        job = Job(shape, items, time.monotonic() + timeout, request.state.request_id)
        try:
            future = state.batcher.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the queue is full ({settings.max_queue} requests waiting); retry later",
                           None, "queue_full", {"Retry-After": str(exc.retry_after_s)}) from None
        except NotAccepting:
            raise ApiError(503, "the server is not accepting requests", None, "unavailable",
                           {"Retry-After": "1"}) from None
        waiter = asyncio.wrap_future(future)
        while not waiter.done():
            # Queued: wake up to check the deadline and the client. Started: just wait, it finishes.
            queued = job.state == "queued"
            poll = max(0.0, min(_POLL_S, job.deadline - time.monotonic())) if queued else None
            await asyncio.wait({waiter}, timeout=poll)
            if waiter.done() or job.state != "queued":
                continue
            if time.monotonic() >= job.deadline:
                state.batcher.cancel(job, DeadlineExceeded())
            elif await request.is_disconnected():
                state.batcher.cancel(job, Cancelled())
        try:
            result = waiter.result()
        except DeadlineExceeded:
            raise ApiError(504, f"the request did not start within its deadline of {timeout:g} s", None,
                           "deadline_exceeded") from None
        except Cancelled:
            raise ApiError(499, "client closed the request", None, "client_closed") from None
        except Exception:
            log.exception("generation failed", extra={"request_id": request.state.request_id})
            raise ApiError(500, "generation failed", None, "generation_failed") from None
        timings = {"queue_wait_s": round(result.queue_wait_s, 4), "denoise_s": round(result.batch.denoise_s, 4),
                   "decode_s": round(result.batch.decode_s, 4), "batch_size": result.batch.batch_size,
                   "batch_started_at": round(result.batch_started_at, 4),
                   "batch_finished_at": round(result.batch_finished_at, 4)}
        return await _finish(result.images, timings)

    def _encode(results: list[ImageResult]) -> tuple[list[bytes], float]:
        started = time.perf_counter()
        if settings.fault_encode_latency_s > 0:
            time.sleep(settings.fault_encode_latency_s)  # fault injection: a slow encoder
        return [_png(r.pixels) for r in results], time.perf_counter() - started

    async def _finish(results: list[ImageResult], timings: dict):
        pngs, encode_s = await asyncio.to_thread(_encode, results)
        timings = {**timings, "encode_s": round(encode_s, 4)}
        info = [{"seed": r.seed, "safety": r.safety, "quality": r.quality, "timings": timings} for r in results]
        return info, pngs

    @app.post("/v1/images/generations", tags=["openai"], responses=ERROR_RESPONSES)
    async def generations(body: ImageGenerationRequest, request: Request):
        """OpenAI Images API: text to image. Extensions: negative_prompt, steps, guidance_scale,
        seed, scheduler, timeout_s."""
        width, height = parse_size(body.size, settings)
        shape, items, timeout = resolve(
            settings, prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.n, width=width,
            height=height, steps=body.steps, guidance_scale=body.guidance_scale, seed=body.seed,
            scheduler=body.scheduler, timeout_s=body.timeout_s)
        info, pngs = await run(request, shape, items, timeout)
        return _openai_response(info, pngs, body.response_format, shape)

    @app.post("/v1/generate", tags=["native"], responses=ERROR_RESPONSES)
    async def generate(body: GenerateRequest, request: Request):
        """Native form: per image its seed, the model revision, timings and the safety outcome."""
        image, mask = body.image, body.mask
        if settings.pipeline_kind != "text-to-image":  # a text-to-image model refuses them unread
            image = decode_b64_image(image, "image") if image is not None else None
            mask = decode_b64_image(mask, "mask") if mask is not None else None
        shape, items, timeout = resolve(
            settings, prompt=body.prompt, negative_prompt=body.negative_prompt, n=body.n, width=body.width,
            height=body.height, steps=body.steps, guidance_scale=body.guidance_scale, seed=body.seed,
            scheduler=body.scheduler, timeout_s=body.timeout_s, strength=body.strength, image=image, mask=mask)
        info, pngs = await run(request, shape, items, timeout)
        return {
            "id": request.state.request_id,
            "created": int(time.time()),
            "model": settings.model_name,
            "revision": settings.revision,
            "images": [
                {
                    "index": i,
                    "seed": inf["seed"],
                    "image": base64.b64encode(png).decode("ascii"),
                    "format": "png",
                    "width": shape.width,
                    "height": shape.height,
                    "revision": settings.revision,
                    "timings": inf["timings"],
                    "safety": {"outcome": inf["safety"], "replaced": inf["safety"] != "passed"},
                    "quality": inf["quality"],
                }
                for i, (inf, png) in enumerate(zip(info, pngs, strict=True))
            ],
        }

    @app.post("/v1/images/edits", tags=["openai"], openapi_extra=_EDITS_OPENAPI, responses=ERROR_RESPONSES)
    async def edits(request: Request):
        """OpenAI Images API edits (multipart): image-to-image, or inpainting with a mask."""
        if settings.pipeline_kind == "text-to-image":
            raise ApiError(422, f"model {settings.model_name} is a text-to-image pipeline; image edits need an "
                                "image-to-image or inpainting model", "image", "unsupported_pipeline_kind")
        form = await request.form(max_part_size=settings.max_body_bytes)
        images = form.getlist("image") or form.getlist("image[]")
        if not images or isinstance(images[0], str):
            raise ApiError(422, "image is required (a file part)", "image", "missing_image")
        image = decode_image(await images[0].read(), "image")
        mask_part = form.get("mask")
        mask = None
        if mask_part is not None and not isinstance(mask_part, str):
            mask = decode_image(await mask_part.read(), "mask")

        def field(name: str, kind):
            raw = form.get(name)
            if raw is None or raw == "":
                return None
            try:
                return kind(raw)
            except (TypeError, ValueError):
                raise ApiError(422, f"{name} must be a {kind.__name__}; got {raw!r}", name, "invalid_type") from None

        prompt = field("prompt", str)
        if prompt is None:
            raise ApiError(422, "prompt is required", "prompt", "missing_prompt")
        response_format = field("response_format", str)
        if response_format not in (None, "b64_json", "url"):
            raise ApiError(422, "response_format must be b64_json or url", "response_format", "invalid_value")
        width, height = parse_size(field("size", str), settings)
        shape, items, timeout = resolve(
            settings, prompt=prompt, negative_prompt=field("negative_prompt", str), n=field("n", int),
            width=width, height=height, steps=field("steps", int), guidance_scale=field("guidance_scale", float),
            seed=field("seed", int), scheduler=field("scheduler", str), timeout_s=field("timeout_s", float),
            strength=field("strength", float), image=image, mask=mask)
        info, pngs = await run(request, shape, items, timeout)
        return _openai_response(info, pngs, response_format, shape)

    return Gateway(app, state)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    # compress_level 1: several times faster than the default 6, still a valid PNG
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _openai_response(info: list[dict], pngs: list[bytes], response_format: str | None, shape) -> dict:
    data = []
    for inf, png in zip(info, pngs, strict=True):
        b64 = base64.b64encode(png).decode("ascii")
        entry: dict[str, object]  # the extensions below are not all strings (revised_prompt is None)
        if response_format == "url":
            entry = {"url": f"data:image/png;base64,{b64}"}
        else:
            entry = {"b64_json": b64}
        entry.update(revised_prompt=None, seed=inf["seed"], safety=inf["safety"], quality=inf["quality"])
        data.append(entry)
    return {"created": int(time.time()), "data": data, "output_format": "png"}


#: The OpenAI error shape every non-2xx answer of the generation endpoints has.
_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}},
    }},
}
_STATUS_RESPONSE = {"description": "Not alive or not ready",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}}}}


def _error_response(why: str) -> dict:
    return {"description": why, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


#: Every status the generation endpoints answer besides 200, as documented in docs/sampler.md.
ERROR_RESPONSES: dict[int | str, dict] = {
    400: _error_response("Malformed JSON or no body"),
    413: _error_response("Body larger than SAMPLER_MAX_BODY_BYTES"),
    422: _error_response("A field out of its limits or of the wrong type (param names it)"),
    429: _error_response("Queue full; Retry-After says when to retry"),
    499: _error_response("The client closed the request while it was queued"),
    500: _error_response("Generation failed (or injected fault, tests only)"),
    503: _error_response("Loading, draining or failed; Retry-After"),
    504: _error_response("Not started within its deadline (timeout_s)"),
}

_EDITS_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image", "prompt"],
                    "properties": {
                        "image": {"type": "string", "format": "binary"},
                        "mask": {"type": "string", "format": "binary",
                                 "description": "Alpha 0 (or white, without alpha) marks the area to repaint."},
                        "prompt": {"type": "string"},
                        "n": {"type": "integer"},
                        "size": {"type": "string", "example": "512x512"},
                        "response_format": {"type": "string", "enum": ["b64_json", "url"]},
                        "negative_prompt": {"type": "string"},
                        "steps": {"type": "integer"},
                        "guidance_scale": {"type": "number"},
                        "strength": {"type": "number"},
                        "seed": {"type": "integer"},
                        "scheduler": {"type": "string"},
                        "timeout_s": {"type": "number"},
                    },
                }
            }
        },
    }
}

"""The HTTP service: ``create_app(model_path)`` returns a FastAPI app that classifies uploaded recordings.

Endpoints: ``POST /classify`` (multipart upload, field ``file``), ``GET /health``, ``GET /classes``,
``GET /`` (a single page to try it in a browser) and ``GET /openapi.json`` (the API description).

Every rejected request gets a 4xx with a JSON ``detail`` naming the problem, never a stack trace:

* 400: empty upload, or audio without samples;
* 413: upload larger than ``max_upload_bytes``, or longer than ``max_duration_s``;
* 415: the upload is not audio that libsndfile can decode;
* 422: missing ``file`` field, bad query parameters, or audio holding NaN/infinite samples.

The model call is blocking, so it runs in Starlette's thread pool; :class:`Predictor` serialises forward
passes with a lock while decoding and resampling of concurrent requests proceed in parallel.
"""

from __future__ import annotations

import io
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from urbansound import __version__
from urbansound.errors import DataError
from urbansound.inference import Predictor

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20  # 50 MiB: ~5 min of 44.1 kHz 16-bit stereo WAV
DEFAULT_MAX_DURATION_S = 600.0  # 10 min: bounds decode memory and compute per request
# Multipart framing (boundaries, part headers) around the file, allowed on top of max_upload_bytes.
MULTIPART_SLACK_BYTES = 64 * 2**10
# Resolution of the page's pictures: waveform envelope columns and spectrogram frames at most.
ENVELOPE_POINTS = 800
SPECTROGRAM_FRAMES = 400


class BodySizeLimit:
    """ASGI middleware refusing request bodies over ``max_bytes`` with 413, before they are parsed.

    A declared ``Content-Length`` over the limit is refused without reading the body; a chunked body is
    counted as it arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        detail = f"upload too large: the limit is {self.max_bytes / 2**20:.1f} MiB"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside body parsing, FastAPI passes an HTTPException through unchanged.
                    raise HTTPException(status_code=413, detail=detail)
            return message

        await self.app(scope, counting_receive, send)


def decode_upload(data: bytes, max_duration_s: float) -> tuple[np.ndarray, int]:
    """Decode uploaded bytes to ``(samples, channels)`` float32 and the sample rate (Hz).

    The duration is read from the header first, so an over-long file is refused before it is decoded.

    Raises:
        HTTPException: 400 (no samples), 413 (too long), 415 (not decodable audio), 422 (NaN samples).
    """
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as handle:
            frames, sample_rate = handle.frames, handle.samplerate
            if frames <= 0 or sample_rate <= 0:
                raise HTTPException(status_code=400, detail="the audio holds no samples")
            if frames / sample_rate > max_duration_s:
                raise HTTPException(
                    status_code=413,
                    detail=f"audio too long: {frames / sample_rate:.1f} s, the limit is {max_duration_s:g} s",
                )
            samples = handle.read(dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as error:
        # libsndfile's own reason ("Format not recognised."), without the in-memory file's repr.
        reason = getattr(error, "error_string", None) or str(error)
        raise HTTPException(status_code=415, detail=f"cannot decode the upload as audio: {reason}") from None
    if samples.shape[0] == 0:
        raise HTTPException(status_code=400, detail="the audio holds no samples")
    if not np.isfinite(samples).all():
        raise HTTPException(status_code=422, detail="the audio holds NaN or infinite samples")
    return samples, int(sample_rate)


def envelope(waveform: np.ndarray, points: int = ENVELOPE_POINTS) -> dict[str, list[float]]:
    """Min and max of the waveform in ``points`` equal slices: enough to draw it at any screen width."""
    n = min(points, waveform.shape[0])
    edges = np.linspace(0, waveform.shape[0], n + 1).astype(np.int64)
    lows = np.minimum.reduceat(waveform, edges[:-1])
    highs = np.maximum.reduceat(waveform, edges[:-1])
    return {"min": np.round(lows, 4).tolist(), "max": np.round(highs, 4).tolist()}


def downsample_frames(features: np.ndarray, frames: int = SPECTROGRAM_FRAMES) -> np.ndarray:
    """``(bands, n)`` -> ``(bands, <= frames)``, each group's maximum (keeps short events visible)."""
    if features.shape[1] <= frames:
        return features
    edges = np.linspace(0, features.shape[1], frames + 1).astype(np.int64)
    return np.maximum.reduceat(features, edges[:-1], axis=1)


def create_app(
    model_path: str | Path,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    device: str = "cpu",
) -> FastAPI:
    """Build the service for one model file (loaded once, here; DataError if it is unreadable)."""
    predictor = Predictor.from_file(model_path, device=device)
    model_name = Path(model_path).name
    page = resources.files("urbansound.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    app = FastAPI(
        title="urbansound",
        version=__version__,
        summary="Environmental sound classification",
        description=(
            f"Classifies recordings with `{model_name}`: {len(predictor.class_names)} classes, "
            f"windows of {predictor.window_s:g} s at {predictor.sample_rate} Hz. Uploads up to "
            f"{max_upload_bytes / 2**20:.1f} MiB and {max_duration_s:g} s."
        ),
    )
    app.add_middleware(BodySizeLimit, max_bytes=max_upload_bytes + MULTIPART_SLACK_BYTES)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        # A bug must not leak a traceback to the client; it is logged here in full instead.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health", summary="Liveness and the loaded model")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "n_classes": len(predictor.class_names),
            "sample_rate": predictor.sample_rate,
            "window_s": predictor.window_s,
            "max_upload_bytes": max_upload_bytes,
            "max_duration_s": max_duration_s,
        }

    @app.get("/classes", summary="The model's class names, in output order")
    async def classes() -> dict[str, list[str]]:
        return {"classes": predictor.class_names}

    def classify_bytes(
        data: bytes, filename: str, top_k: int, hop: float | None, visuals: bool
    ) -> dict[str, Any]:
        started = time.perf_counter()
        samples, sample_rate = decode_upload(data, max_duration_s)
        try:
            waveform = predictor.prepare(samples, sample_rate)  # mono, model's rate
            prediction = predictor.predict_waveform(waveform, hop=hop, source=filename)
        except DataError as error:
            raise HTTPException(status_code=422, detail=str(error)) from None
        result: dict[str, Any] = {
            "filename": filename,
            "sample_rate": predictor.sample_rate,
            "window_s": predictor.window_s,
            "hop_s": predictor.hop_samples(hop) / predictor.sample_rate,
            **prediction.to_dict(top_k=top_k),
        }
        if visuals:
            features = downsample_frames(predictor.features(waveform))  # (bands, frames), dB
            features = np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)  # JSON has no inf/NaN
            result["waveform"] = envelope(waveform)
            result["spectrogram"] = {
                "db": np.round(features, 1).tolist(),  # rows: bands, lowest first
                "n_bands": int(features.shape[0]),
                "n_frames": int(features.shape[1]),
                "min_db": float(features.min()),
                "max_db": float(features.max()),
            }
        logger.info(
            "classified %s (%.1f s): %s %.2f in %.0f ms",
            filename,
            prediction.duration_s,
            prediction.label,
            prediction.probability,
            1000 * (time.perf_counter() - started),
        )
        return result

    @app.post(
        "/classify",
        summary="Classify an uploaded recording",
        description=(
            "Upload a sound file (any format libsndfile reads: WAV, FLAC, OGG, ...; any sample rate, mono "
            "or stereo) as the multipart field `file`. Returns the clip-level result (mean of the windows' "
            "probabilities) and the per-window timeline; with `visuals=true` also a waveform envelope and "
            "the model's spectrogram in dB."
        ),
        responses={
            400: {"description": "empty upload or no audio samples"},
            413: {"description": "upload too large or too long"},
            415: {"description": "not decodable audio"},
            422: {"description": "missing file, bad parameters or NaN samples"},
        },
    )
    async def classify(
        file: UploadFile = File(..., description="the recording"),
        top_k: int = Query(5, ge=1, le=1000, description="classes listed in clip.top_k"),
        hop: float | None = Query(
            None, gt=0, le=3600, description="seconds between window starts (default: half a window)"
        ),
        visuals: bool = Query(False, description="add waveform envelope and spectrogram (for the page)"),
    ) -> dict[str, Any]:
        data = await file.read(max_upload_bytes + 1)
        if not data:
            raise HTTPException(status_code=400, detail="empty upload")
        if len(data) > max_upload_bytes:
            raise HTTPException(
                status_code=413, detail=f"upload too large: the limit is {max_upload_bytes / 2**20:.1f} MiB"
            )
        filename = file.filename or "upload"
        return await run_in_threadpool(classify_bytes, data, filename, top_k, hop, visuals)

    return app

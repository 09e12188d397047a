"""The HTTP service: ``create_app(model_path)`` returns a FastAPI app that classifies uploaded recordings.

Endpoints: ``POST /classify`` (multipart upload, field ``file``; ``events=true`` adds sound events),
``GET /health``, ``GET /classes``, ``GET /`` (a single page to try it in a browser), ``GET /openapi.json``
(the API description) and the WebSocket ``/stream`` (live audio in, one result per hop out: see
:func:`_add_stream_route`).

Every rejected request gets a 4xx with a JSON ``detail`` naming the problem, never a stack trace:

* 400: empty upload, or audio without samples;
* 413: upload larger than ``max_upload_bytes``, or longer than ``max_duration_s``;
* 415: the upload is not audio that libsndfile can decode (its header cannot be read);
* 422: missing ``file`` field, bad query parameters, audio holding NaN/infinite samples, or audio damaged
  after a readable header;
* 503: the model's device is out of memory even for one window at a time.

Memory does not grow with the upload: Starlette spools the multipart file to a temporary file on disk (past
1 MiB), its header is checked against the limits, and the recording is then decoded, resampled, classified
and drawn block by block from that file (:meth:`Predictor.predict_stream`, :class:`StreamingVisuals`).
The work is blocking, so it runs in Starlette's thread pool; :class:`Predictor` serialises forward passes
with a lock while decoding and resampling of concurrent requests proceed in parallel.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import soundfile
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from urbansound import __version__
from urbansound.config import EventConfig
from urbansound.data.audio import resampled_length, stream_audio
from urbansound.errors import ConfigError, DataError, ResourceError
from urbansound.events import prediction_events
from urbansound.features.spectrogram import band_frequencies
from urbansound.inference import Predictor
from urbansound.live import LiveClassifier
from urbansound.serve.examples import describe_model, find_examples
from urbansound.serve.schemas import Classes, ClassifyResponse, Example, Examples, Health

logger = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20  # 50 MiB: ~5 min of 44.1 kHz 16-bit stereo WAV
DEFAULT_MAX_DURATION_S = 600.0  # 10 min: bounds decode memory and compute per request
# Multipart framing (boundaries, part headers) around the file, allowed on top of max_upload_bytes.
MULTIPART_SLACK_BYTES = 64 * 2**10
# Resolution of the page's pictures: waveform envelope columns and spectrogram frames at most.
ENVELOPE_POINTS = 800
# A raw audio body is held in memory up to this size, then on disk: Starlette's choice for multipart files.
RAW_BODY_SPOOL_BYTES = 2**20
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


def probe_upload(upload: BinaryIO, max_duration_s: float) -> tuple[int, int]:
    """Frames and sample rate (Hz) from the uploaded file's header, before any sample is decoded.

    Raises:
        HTTPException: 400 (no samples), 413 (longer than ``max_duration_s``), 415 (not decodable audio).
    """
    try:
        upload.seek(0)
        with soundfile.SoundFile(upload) as handle:
            frames, sample_rate = int(handle.frames), int(handle.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as error:
        # libsndfile's own reason ("Format not recognised."), without the file object's repr.
        reason = getattr(error, "error_string", None) or str(error)
        raise HTTPException(status_code=415, detail=f"cannot decode the upload as audio: {reason}") from None
    if frames <= 0 or sample_rate <= 0:
        raise HTTPException(status_code=400, detail="the audio holds no samples")
    if frames / sample_rate > max_duration_s:
        raise HTTPException(
            status_code=413,
            detail=f"audio too long: {frames / sample_rate:.1f} s, the limit is {max_duration_s:g} s",
        )
    return frames, sample_rate


def upload_size(upload: BinaryIO) -> int:
    """Bytes in a spooled upload (its end's offset); leaves it at its start."""
    size = upload.seek(0, 2)
    upload.seek(0)
    return size


def envelope(waveform: np.ndarray, points: int = ENVELOPE_POINTS) -> dict[str, list[float]]:
    """Min and max of the waveform in ``points`` equal slices: enough to draw it at any screen width.

    The whole-waveform definition; :class:`StreamingVisuals` computes the same block by block.
    """
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


def fold_groups(
    target: np.ndarray, edges: np.ndarray, values: np.ndarray, first: int, reduce: np.ufunc
) -> None:
    """Reduce items ``first, first + 1, ...`` (along ``values``' last axis) into ``target``'s groups, group
    ``g`` holding items ``edges[g]`` to ``edges[g + 1] - 1``: piece by piece, ``reduce.reduceat`` of the
    whole at ``edges[:-1]``. Items past ``edges[-1]`` are ignored."""
    count = min(values.shape[-1], int(edges[-1]) - first)
    if count <= 0:
        return
    group = int(np.searchsorted(edges, first, side="right")) - 1
    inside = edges[(edges > first) & (edges < first + count)] - first  # group starts within this piece
    starts = np.concatenate([np.zeros(1, dtype=np.int64), inside.astype(np.int64)])
    reduced = reduce.reduceat(values[..., :count], starts, axis=-1)
    span = slice(group, group + starts.shape[0])
    target[..., span] = reduce(target[..., span], reduced)


class StreamingVisuals:
    """The page's waveform envelope and spectrogram of a recording of known length, fed block by block.

    Equal to :func:`envelope` of the whole waveform and :func:`downsample_frames` of the front end's features
    of it, while holding about one block of audio. The spectrogram is computed in pieces without the front
    end's ``top_db`` floor, which is applied once at the end: a floor at the recording's maximum minus
    ``top_db`` commutes with the maximum over groups of frames.
    """

    def __init__(self, predictor: Predictor, n_samples: int) -> None:
        self.predictor = predictor
        self.n_samples = max(n_samples, 1)  # at the model's rate
        points = min(ENVELOPE_POINTS, self.n_samples)
        self._sample_edges = np.linspace(0, self.n_samples, points + 1).astype(np.int64)
        self._low = np.full(points, np.inf, dtype=np.float32)
        self._high = np.full(points, -np.inf, dtype=np.float32)
        config = predictor.model.frontend.config
        self._features = config
        self._n_fft, self._hop, self._top_db = config.n_fft, config.hop_length, config.top_db
        self._n_frames = 1 + self.n_samples // self._hop  # centred frames, as the front end counts them
        columns = min(SPECTROGRAM_FRAMES, self._n_frames)
        self._frame_edges = np.linspace(0, self._n_frames, columns + 1).astype(np.int64)
        self._bands: np.ndarray | None = None  # (n_bands, columns) maxima, from the first frames on
        # A piece starts this far (a multiple of the hop, at least n_fft // 2 samples) before its first
        # frame's centre, so that frame sees the recording's samples, not the piece's zero padding.
        self._context = -(-(self._n_fft // 2) // self._hop) * self._hop
        self._received = 0
        self._tail = np.zeros(0, dtype=np.float32)  # samples [self._tail_start, self._received)
        self._tail_start = 0
        self._next_frame = 0

    def tap(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Pass mono blocks ``(samples,)`` at the model's rate through unchanged, taking each in."""
        for block in blocks:
            self.push(block)
            yield block
        self._add_frames(final=True)

    def push(self, block: np.ndarray) -> None:
        """Take in the next mono block ``(samples,)`` at the model's rate."""
        fold_groups(self._low, self._sample_edges, block, self._received, np.minimum)
        fold_groups(self._high, self._sample_edges, block, self._received, np.maximum)
        self._tail = np.concatenate([self._tail, block.astype(np.float32, copy=False)])
        self._received += block.shape[0]
        self._add_frames(final=False)

    def _add_frames(self, final: bool) -> None:
        """Fold in the frames whose samples have all arrived (at the end: the rest, zero-padded)."""
        pad = self._n_fft // 2  # frame f covers samples [f * hop - pad, f * hop - pad + n_fft)
        complete = max(0, (self._received + pad - self._n_fft) // self._hop + 1)
        end = self._n_frames if final else min(self._n_frames, complete)
        first = self._next_frame
        if end <= first:
            return
        start = max(0, first * self._hop - self._context)
        stop = self._received if final else (end - 1) * self._hop - pad + self._n_fft
        piece = self._tail[start - self._tail_start : stop - self._tail_start]
        features = self.predictor.features(piece, floor=False)  # (n_bands, frames) centred at start + j hop
        skip = (first * self._hop - start) // self._hop
        if self._bands is None:
            self._bands = np.full((features.shape[0], len(self._frame_edges) - 1), -np.inf, dtype=np.float32)
        fold_groups(self._bands, self._frame_edges, features[:, skip : skip + end - first], first, np.maximum)
        self._next_frame = end
        keep = max(0, end * self._hop - self._context)
        self._tail, self._tail_start = self._tail[keep - self._tail_start :], keep

    def result(self) -> dict[str, Any]:
        """``waveform`` (min/max envelope) and ``spectrogram`` (dB, bands x columns) for the JSON response."""
        bands = self._bands if self._bands is not None else np.zeros((1, 1), dtype=np.float32)
        if self._top_db is not None:
            bands = np.maximum(bands, bands.max() - self._top_db)
        features = np.nan_to_num(bands, nan=0.0, posinf=0.0, neginf=0.0)  # JSON has no inf/NaN
        low, high = (np.where(np.isfinite(x), x, 0.0) for x in (self._low, self._high))  # unfilled: 0
        return {
            "waveform": {"min": np.round(low, 4).tolist(), "max": np.round(high, 4).tolist()},
            "spectrogram": {
                "db": np.round(features, 1).tolist(),  # rows: bands, lowest first
                "n_bands": int(features.shape[0]),
                "n_frames": int(features.shape[1]),
                "min_db": float(features.min()),
                "max_db": float(features.max()),
                # for the page's frequency axis
                "band_hz": np.round(band_frequencies(self._features, self.predictor.sample_rate), 1).tolist(),
            },
        }


def classify_upload(
    predictor: Predictor,
    upload: BinaryIO,
    filename: str,
    max_duration_s: float,
    top_k: int = 5,
    hop: float | None = None,
    visuals: bool = False,
    events: EventConfig | None = None,
) -> dict[str, Any]:
    """The JSON response for one spooled upload: its header checked, then classified (and with
    ``visuals``, drawn; with ``events``, its sound events listed) block by block from the file.

    Raises:
        HTTPException: 400, 413, 415 from the header (:func:`probe_upload`); 422 for undecodable or
            non-finite samples; 503 when the device is out of memory even for one window.
    """
    started = time.perf_counter()
    frames, sample_rate = probe_upload(upload, max_duration_s)
    blocks = stream_audio(upload, predictor.sample_rate, name=filename)  # mono, the model's rate
    drawing = None
    if visuals:
        drawing = StreamingVisuals(predictor, resampled_length(frames, sample_rate, predictor.sample_rate))
        blocks = drawing.tap(blocks)
    try:
        prediction = predictor.predict_stream(blocks, hop=hop, source=filename)
    except DataError as error:
        raise HTTPException(status_code=422, detail=str(error)) from None
    except ResourceError as error:
        raise HTTPException(status_code=503, detail=str(error)) from None
    result: dict[str, Any] = {
        "filename": filename,
        "sample_rate": predictor.sample_rate,
        "window_s": predictor.window_s,
        "hop_s": predictor.hop_samples(hop) / predictor.sample_rate,
        **prediction.to_dict(top_k=top_k),
    }
    if drawing is not None:
        result.update(drawing.result())
    if events is not None:
        result["events"] = [event.to_dict() for event in prediction_events(prediction, events)]
    logger.info(
        "classified %s (%.1f s): %s %s in %.0f ms",
        filename,
        prediction.duration_s,
        prediction.label,
        "-" if prediction.probability is None else f"{prediction.probability:.2f}",
        1000 * (time.perf_counter() - started),
    )
    return result


def create_app(
    model_path: str | Path,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_duration_s: float = DEFAULT_MAX_DURATION_S,
    device: str = "cpu",
    reject: dict[str, Any] | None = None,
    examples_dir: str | Path | None = None,
) -> FastAPI:
    """Build the service for one model file (loaded once, here; DataError if it is unreadable);
    ``reject`` holds ``RejectConfig`` fields that replace the model file's (silence floor, shortest
    input, confidence floor). ``examples_dir``: a folder of example clips the page offers
    (:func:`~urbansound.serve.examples.find_examples`)."""
    predictor = Predictor.from_file(model_path, device=device)
    predictor.reject = replace(predictor.reject, **(reject or {}))
    predictor.reject.validate()
    model_name, run = describe_model(model_path)
    examples = find_examples(examples_dir) if examples_dir is not None else {}
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
    app.add_exception_handler(Exception, internal_error)
    # Registration order is the order of the paths in /openapi.json.
    _add_info_routes(app, predictor, model_name, page, max_upload_bytes, max_duration_s, run)
    _add_example_routes(app, examples)
    _add_classify_route(app, predictor, max_upload_bytes, max_duration_s)
    _add_stream_route(app, predictor)
    return app


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """The 500 response for an unhandled exception: the traceback goes to the log, never to the client."""
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def _add_info_routes(
    app: FastAPI,
    predictor: Predictor,
    model_name: str,
    page: str,
    max_upload_bytes: int,
    max_duration_s: float,
    run: str | None = None,
) -> None:
    """Register ``GET /`` (the browser page), ``GET /health`` and ``GET /classes``; ``run`` names the run
    folder the model comes from."""

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health", summary="Liveness and the loaded model", response_model=Health)
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": model_name,
            "run": run,
            "n_classes": len(predictor.class_names),
            "sample_rate": predictor.sample_rate,
            "window_s": predictor.window_s,
            "max_upload_bytes": max_upload_bytes,
            "max_duration_s": max_duration_s,
        }

    @app.get("/classes", summary="The model's class names, in output order", response_model=Classes)
    async def classes() -> dict[str, list[str]]:
        return {"classes": predictor.class_names}


def _add_example_routes(app: FastAPI, examples: dict[str, Path]) -> None:
    """Register ``GET /examples`` (the clips bundled with ``serve --examples DIR``) and
    ``GET /examples/{name}`` (one of them; only the listed names are served, so no path leaves the folder)."""

    @app.get("/examples", summary="Example clips the page offers", response_model=Examples)
    async def list_examples() -> dict[str, Any]:
        return {
            "examples": [
                Example(name=name, url=f"examples/{name}", bytes=path.stat().st_size)
                for name, path in examples.items()
            ]
        }

    @app.get("/examples/{name}", summary="One example clip", response_class=FileResponse)
    async def example(name: str) -> FileResponse:
        if name not in examples:
            raise HTTPException(status_code=404, detail=f"no example clip named {name!r}")
        return FileResponse(examples[name], filename=name)


def _add_classify_route(
    app: FastAPI, predictor: Predictor, max_upload_bytes: int, max_duration_s: float
) -> None:
    """Register ``POST /classify``, which checks the upload's size and hands it to :func:`classify_upload`."""

    @app.post(
        "/classify",
        summary="Classify an uploaded recording",
        description=(
            "Upload a sound file (any format libsndfile reads: WAV, FLAC, OGG, ...; any sample rate, mono "
            "or stereo) as the multipart field `file`, or send it as the request body with "
            "`Content-Type: audio/*` (`curl --data-binary @clip.wav -H 'Content-Type: audio/wav'`). "
            "Returns the clip-level result (mean of the windows' "
            "probabilities) and the per-window timeline; with `visuals=true` also a waveform envelope and "
            "the model's spectrogram in dB."
        ),
        responses={
            400: {"description": "empty upload or no audio samples"},
            413: {"description": "upload too large or too long"},
            415: {"description": "not decodable audio"},
            422: {"description": "missing file, bad parameters, NaN samples or damaged audio"},
            503: {"description": "the model's device is out of memory"},
        },
        response_model=ClassifyResponse,
        response_model_exclude_unset=True,  # parts not asked for (waveform, events) are absent, not null
        # The raw-body alternative to the multipart form, added beside it in the request body's content.
        openapi_extra={
            "requestBody": {"content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}}}
        },
    )
    async def classify(
        request: Request,
        file: UploadFile | None = File(None, description="the recording (or send it as an audio/* body)"),
        top_k: int = Query(5, ge=1, le=1000, description="classes listed in clip.top_k"),
        hop: float | None = Query(
            None, gt=0, le=3600, description="seconds between window starts (default: half a window)"
        ),
        visuals: bool = Query(False, description="add waveform envelope and spectrogram (for the page)"),
        events: bool = Query(False, description="add sound events (class, onset, offset, peak probability)"),
        event_threshold: float = Query(
            EventConfig.threshold, gt=0, le=1, description="probability at which a class is active"
        ),
    ) -> dict[str, Any]:
        event_config = EventConfig(threshold=event_threshold) if events else None
        with contextlib.ExitStack() as stack:
            # Either way the recording stays in a spooled temporary file (on disk past 1 MiB), never in bytes.
            if file is None:  # a raw audio/* body
                upload, filename = stack.enter_context(await spool_audio_body(request)), "upload"
                size = await run_in_threadpool(upload_size, upload)
            else:
                upload, filename = file.file, file.filename or "upload"
                size = file.size if file.size is not None else await run_in_threadpool(upload_size, upload)
            check_upload_size(size, max_upload_bytes)
            arguments = (upload, filename, max_duration_s, top_k, hop, visuals, event_config)
            return await run_in_threadpool(classify_upload, predictor, *arguments)


async def spool_audio_body(request: Request) -> BinaryIO:
    """The request body of a raw-audio POST (``Content-Type: audio/*``) in a temporary file spooled as
    multipart uploads are (memory up to 1 MiB, then disk); the caller closes it. Its size was bounded by
    :class:`BodySizeLimit` while it arrived.

    Raises:
        HTTPException: 422 when the request is neither multipart with a ``file`` nor audio.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("audio/"):
        raise HTTPException(
            status_code=422,
            detail="no recording: send it as the multipart field `file` or as the request body with "
            f"Content-Type audio/* (got {content_type or 'no Content-Type'})",
        )
    body = tempfile.SpooledTemporaryFile(max_size=RAW_BODY_SPOOL_BYTES)  # noqa: SIM115  (the caller closes it)
    try:
        async for chunk in request.stream():
            await run_in_threadpool(body.write, chunk)  # past the spool size this is a disk write
    except BaseException:
        body.close()
        raise
    body.seek(0)
    return body


def check_upload_size(size: int, max_upload_bytes: int) -> None:
    """Refuse an empty upload (400) or one over ``max_upload_bytes`` (413) with an :class:`HTTPException`."""
    if size == 0:
        raise HTTPException(status_code=400, detail="empty upload")
    if size > max_upload_bytes:
        raise HTTPException(
            status_code=413, detail=f"upload too large: the limit is {max_upload_bytes / 2**20:.1f} MiB"
        )


def _add_stream_route(app: FastAPI, predictor: Predictor) -> None:
    """Register the WebSocket ``/stream``: live classification, one JSON result per hop.

    The client sends binary messages of little-endian float32 mono samples at the model's sample rate
    (``GET /health`` says which), in chunks of any size; the server answers each completed hop with a JSON
    text message (:meth:`~urbansound.live.HopResult.to_dict`: index, start_s, end_s, label, probability,
    status, level_dbfs, latency_ms, top_k), in order. Query parameters: ``hop`` (seconds; default half a
    window) and ``top_k``. A bad message closes the connection with code 1003 and the reason.
    """

    @app.websocket("/stream")
    async def stream(websocket: WebSocket, hop: float | None = None, top_k: int = 3) -> None:
        await websocket.accept()
        try:
            if hop is not None and not 0 < hop <= 3600:
                raise ConfigError(f"hop must be in (0, 3600] seconds, got {hop}")
            live = LiveClassifier(predictor, hop=hop, top_k=max(1, top_k))
            while True:
                data = await websocket.receive_bytes()
                if len(data) % 4:
                    raise ConfigError(f"a message of {len(data)} bytes is not float32 samples (4 bytes each)")
                chunk = np.frombuffer(data, dtype="<f4")
                for result in await run_in_threadpool(live.push, chunk):
                    await websocket.send_json(result.to_dict())
        except WebSocketDisconnect:
            return
        except (ConfigError, KeyError) as error:  # KeyError: a text message where samples were expected
            reason = str(error) if isinstance(error, ConfigError) else "expected binary float32 samples"
            await websocket.close(code=1003, reason=reason[:120])  # close reasons are at most 123 bytes

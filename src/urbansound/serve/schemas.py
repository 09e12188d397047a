"""The service's responses as pydantic models, so ``/openapi.json`` documents every field (FastAPI's
``response_model``).

Each model allows extra keys: a field added to a response before it is declared here is passed through,
not silently dropped. Routes use ``response_model_exclude_unset``, so an optional part a request did not
ask for (``waveform`` without ``visuals=true``) is absent, not ``null``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")


class ClassScore(_Response):
    label: str = Field(description="class name")
    probability: float = Field(description="0..1")


class ClipResult(_Response):
    label: str = Field(description="the most probable class (or the status, when one is set)")
    probability: float | None = Field(
        description="its probability, 0..1; null for silence and too_short (no class; unknown keeps it)"
    )
    status: str | None = Field(None, description="silence, too_short or unknown; null: a class was found")
    level_dbfs: float | None = Field(None, description="level of the loudest window, dB re full scale")
    top_k: list[ClassScore] = Field(
        description="the most probable classes, most probable first; empty for silence and too_short"
    )
    probabilities: dict[str, float] = Field(description="every class's probability, mean over the windows")


class WindowResult(_Response):
    start_s: float = Field(description="window start, seconds from the recording's start")
    end_s: float = Field(description="window end, seconds")
    label: str
    probability: float | None = Field(description="the top class's probability; null: silence, too_short")
    status: str | None = None
    level_dbfs: float | None = None
    probabilities: dict[str, float]


class Envelope(_Response):
    min: list[float] = Field(description="lowest sample in each of up to 800 equal slices of the recording")
    max: list[float] = Field(description="highest sample in each slice")


class Spectrogram(_Response):
    db: list[list[float]] = Field(description="dB, rows: bands (lowest first), columns: frame groups")
    n_bands: int
    n_frames: int = Field(description="columns: groups of the model's frames, each group's maximum")
    min_db: float
    max_db: float
    band_hz: list[float] = Field(description="centre frequency of each band in Hz, lowest first")


class SoundEvent(_Response):
    event_label: str
    onset: float = Field(description="seconds")
    offset: float = Field(description="seconds")
    peak_probability: float


class ClassifyResponse(_Response):
    filename: str = Field(description="the upload's file name (raw bodies: 'upload')")
    sample_rate: int = Field(description="Hz, the model's")
    window_s: float = Field(description="seconds per window (the model's input length)")
    hop_s: float = Field(description="seconds between window starts")
    duration_s: float = Field(description="of the decoded recording")
    clip: ClipResult = Field(description="the whole recording: mean of the windows' probabilities")
    timeline: list[WindowResult] = Field(description="one result per window, in time order")
    waveform: Envelope | None = Field(None, description="with visuals=true: min/max envelope")
    spectrogram: Spectrogram | None = Field(None, description="with visuals=true: the model's bands in dB")
    events: list[SoundEvent] | None = Field(None, description="with events=true: sound events")


class Health(_Response):
    status: str = Field(description="ok")
    model: str = Field(description="the model file's name")
    run: str | None = Field(None, description="the run folder the model comes from (null: a lone file)")
    n_classes: int
    sample_rate: int = Field(description="Hz")
    window_s: float = Field(description="seconds")
    max_upload_bytes: int
    max_duration_s: float


class Classes(_Response):
    classes: list[str] = Field(description="class names in the model's output order")


class Example(_Response):
    name: str = Field(description="file name")
    url: str = Field(description="where to fetch it, relative to the page")
    bytes: int


class Examples(_Response):
    examples: list[Example] = Field(description="clips bundled with `serve --examples DIR` (may be empty)")

"""The HTTP service: endpoints, results equal to the library's, 4xx on bad uploads, a bounded load test."""

from __future__ import annotations

import asyncio
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _server import running_server
from _tiny_model import scene, tiny_model

from urbansound.cli import main
from urbansound.errors import DataError
from urbansound.inference import Predictor

fastapi = pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (dev extra) is not installed")
with warnings.catch_warnings():
    # Starlette announces a future switch of its test client's HTTP library; not ours to act on.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

from urbansound.serve import create_app  # noqa: E402

MAX_UPLOAD = 1_000_000  # bytes
MAX_DURATION = 30.0  # seconds


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


@pytest.fixture(scope="module")
def app(model_path: Path) -> fastapi.FastAPI:
    return create_app(model_path, max_upload_bytes=MAX_UPLOAD, max_duration_s=MAX_DURATION)


@pytest.fixture(scope="module")
def client(app: fastapi.FastAPI) -> TestClient:
    return TestClient(app)  # raises server-side exceptions: any unexpected error fails the test


def encode(audio: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def upload(client: TestClient, data: bytes, name: str = "clip.wav", query: str = "") -> httpx.Response:
    return client.post(f"/classify{query}", files={"file": (name, data, "application/octet-stream")})


def test_health_classes_and_openapi(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["n_classes"] == 4 and health["sample_rate"] == 16_000
    assert health["max_upload_bytes"] == MAX_UPLOAD and health["max_duration_s"] == MAX_DURATION
    assert client.get("/classes").json() == {"classes": ["background", "car_horn", "dog_bark", "siren"]}
    schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/classify"]["post"]
    assert "multipart/form-data" in classify["requestBody"]["content"]
    assert {"400", "413", "415", "422"} <= set(classify["responses"])
    assert {"/health", "/classes"} <= set(schema["paths"])


def test_page_is_self_contained(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ('id="file"', 'id="bars"', 'id="waveform"', 'id="spectrogram"'):
        assert element in page
    # Offline: no scripts, styles or fonts from elsewhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(http" not in page


def test_classify_matches_the_library(client: TestClient, model_path: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    siren = scene("siren", 2.5, 44_100, rng)
    data = encode(np.stack([siren, 0.7 * siren], axis=1), 44_100, "FLAC")
    response = upload(client, data, "siren.flac", "?top_k=2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["filename"] == "siren.flac" and body["duration_s"] == pytest.approx(2.5, abs=1e-3)
    assert body["hop_s"] == 0.5 and body["window_s"] == 1.0
    assert [w["start_s"] for w in body["timeline"]] == [0.0, 0.5, 1.0, 1.5]
    assert body["clip"]["label"] == "siren" and len(body["clip"]["top_k"]) == 2
    assert "waveform" not in body  # visuals only on request
    path = tmp_path / "siren.flac"
    path.write_bytes(data)
    expected = Predictor.from_file(model_path).predict(path)
    got = np.array([body["clip"]["probabilities"][name] for name in expected.class_names])
    np.testing.assert_allclose(got, expected.probabilities, atol=1e-5)


def test_classify_visuals_for_the_page(client: TestClient) -> None:
    rng = np.random.default_rng(4)
    data = encode(scene("dog_bark", 12.0, 16_000, rng), 16_000, "OGG", "VORBIS")
    body = upload(client, data, "bark.ogg", "?visuals=true&hop=2").json()
    # 12 s, hop 2 s, 1 s windows: starts 0, 2, ..., 10, and one aligned to the end.
    assert [w["start_s"] for w in body["timeline"]] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 11.0]
    assert len(body["waveform"]["min"]) == len(body["waveform"]["max"]) == 800
    assert all(lo <= hi for lo, hi in zip(body["waveform"]["min"], body["waveform"]["max"], strict=True))
    spectrogram = body["spectrogram"]
    db = np.array(spectrogram["db"])
    assert db.shape == (32, spectrogram["n_frames"]) and spectrogram["n_frames"] == 400
    assert spectrogram["min_db"] == pytest.approx(db.min(), abs=0.1) and db.max() - db.min() > 20


def test_bad_uploads_get_a_clear_4xx(client: TestClient) -> None:
    rng = np.random.default_rng(5)
    nan_audio = scene(None, 0.5, 16_000, rng)
    nan_audio[100] = np.nan
    cases = {
        "empty": (upload(client, b""), 400, "empty upload"),
        "garbage": (upload(client, b"RIFF" + bytes(range(256)) * 8), 415, "cannot decode"),
        "text": (upload(client, b"hello, world\n" * 100, "notes.txt"), 415, "cannot decode"),
        "too large": (upload(client, b"\x00" * (MAX_UPLOAD + 100_000)), 413, "too large"),
        "too long": (upload(client, encode(np.zeros(16_000 * 31, np.float32), 16_000)), 413, "too long"),
        "nan": (upload(client, encode(nan_audio, 16_000, subtype="FLOAT")), 422, "NaN"),
        "absurd samples": (
            upload(client, encode(np.full(800, 1e30, np.float32), 16_000, subtype="FLOAT")),
            422,
            "far outside",
        ),
        "no samples": (upload(client, encode(np.zeros(0, np.float32), 16_000)), 400, "no samples"),
        "missing file": (client.post("/classify"), 422, "file"),
        "bad top_k": (upload(client, encode(nan_audio[:50], 16_000), query="?top_k=0"), 422, "top_k"),
        "bad hop": (upload(client, encode(nan_audio[:50], 16_000), query="?hop=-1"), 422, "hop"),
    }
    for name, (response, status, detail) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert detail in str(response.json()["detail"]), (name, response.text)
        assert "Traceback" not in response.text, name


def test_cli_serve_runs_the_model_on_one_thread_unless_asked(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A /stream hop is one window: on busy cores, intra-op threads made it ~60x slower (cli.py's note)."""
    import torch

    import urbansound.serve as serve_module

    seen: list[int] = []
    monkeypatch.setattr(serve_module, "serve", lambda model, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    assert main(["serve", str(model_path)]) == 0
    assert main(["serve", str(model_path), "--threads", "3"]) == 0
    assert seen == [1, 3]
    assert torch.get_num_threads() == before  # restored for whatever runs next in this process
    assert main(["serve", str(model_path), "--threads", "0"]) == 2


def test_cli_serve_passes_limits_and_reports_bad_model(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import urbansound.serve as serve_module

    calls: list[dict] = []
    monkeypatch.setattr(
        serve_module, "serve", lambda model, **kwargs: calls.append({"model": model, **kwargs})
    )
    argv = ["serve", str(model_path), "--port", "8123", "--max-upload-mb", "2", "--max-duration", "45"]
    assert main(argv) == 0
    assert calls == [
        {
            "model": str(model_path),
            "host": "127.0.0.1",
            "port": 8123,
            "max_upload_bytes": 2 * 2**20,
            "max_duration_s": 45.0,
            "device": "cpu",
            "reject": {},
            "examples_dir": None,
        }
    ]
    monkeypatch.undo()
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x00" * 100)
    with pytest.raises(DataError):
        create_app(damaged)
    assert main(["serve", str(damaged)]) == 2
    assert "damaged.safetensors" in capsys.readouterr().err


def test_oversized_chunked_upload_is_refused_over_http(app: fastapi.FastAPI) -> None:
    """No Content-Length (chunked): the body is counted as it arrives and refused past the limit."""

    def body() -> object:
        yield b'--boundary\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
        for _ in range(40):
            yield b"\x00" * 65_536  # 2.5 MB in all
        yield b"\r\n--boundary--\r\n"

    with running_server(app) as url, httpx.Client(timeout=30) as http:
        response = http.post(
            f"{url}/classify",
            content=body(),
            headers={"content-type": "multipart/form-data; boundary=boundary"},
        )
        assert response.status_code == 413, response.text
        assert "too large" in response.json()["detail"]
        assert http.get(f"{url}/health").status_code == 200  # the server is still fine


def test_concurrent_requests_on_loopback(app: fastapi.FastAPI) -> None:
    """64 uploads, 16 at a time, of 4 different recordings: all 200, identical results per recording."""
    rng = np.random.default_rng(6)
    recordings = [
        encode(scene(name, duration, rate, rng), rate)
        for name, duration, rate in (
            ("siren", 2.0, 22_050),
            ("dog_bark", 1.0, 16_000),
            ("car_horn", 3.0, 44_100),
            ("background", 0.5, 8_000),
        )
    ]

    async def run(url: str) -> list[tuple[int, int, dict]]:
        limit = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:

            async def one(i: int) -> tuple[int, int, dict]:
                async with limit:
                    files = {"file": (f"{i}.wav", recordings[i % 4], "audio/wav")}
                    response = await http.post("/classify", files=files)
                    return i % 4, response.status_code, response.json()

            return await asyncio.gather(*(one(i) for i in range(64)))

    with running_server(app) as url:
        results = asyncio.run(asyncio.wait_for(run(url), timeout=240))
    assert [status for _, status, _ in results] == [200] * 64, [body for _, s, body in results if s != 200][
        :3
    ]
    for which in range(4):
        bodies = [body for k, _, body in results if k == which]
        assert len(bodies) == 16
        first = bodies[0]["clip"]["probabilities"]
        for body in bodies[1:]:
            assert body["clip"]["probabilities"] == pytest.approx(first, abs=1e-6)
    assert results[0][2]["clip"]["label"] == "siren"


def test_long_upload_is_classified_from_the_spooled_file(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 s of 44.1 kHz stereo WAV (3.5 MB: on disk in Starlette's spool), many windows long: streamed from
    the spooled file, never read into bytes, with the library's result and the whole-waveform pictures."""
    import starlette.datastructures

    import urbansound.serve.app as app_module
    from urbansound.data.audio import load_audio

    async def no_read(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("the upload was read into memory")

    sources: list[object] = []

    def recording_stream(source: object, *args: object, **kwargs: object) -> object:
        sources.append(source)
        return stream_audio(source, *args, **kwargs)

    stream_audio = app_module.stream_audio
    monkeypatch.setattr(starlette.datastructures.UploadFile, "read", no_read)
    monkeypatch.setattr(app_module, "stream_audio", recording_stream)
    rng = np.random.default_rng(8)
    recording = scene(None, 20.0, 44_100, rng)
    recording[8 * 44_100 : 12 * 44_100] += scene("siren", 4.0, 44_100, rng)
    path = tmp_path / "street.wav"
    sf.write(path, np.stack([recording, 0.9 * recording], axis=1), 44_100, subtype="PCM_16")
    client = TestClient(create_app(model_path, max_upload_bytes=8 * 2**20, max_duration_s=60.0))
    response = upload(client, path.read_bytes(), "street.wav", "?visuals=true")
    assert response.status_code == 200, response.text
    body = response.json()
    (source,) = sources
    assert getattr(source, "_rolled", None) is True  # a temporary file on disk, not bytes in memory

    predictor = Predictor.from_file(model_path)
    expected = predictor.predict_waveform(load_audio(path, predictor.sample_rate))
    assert [w["start_s"] for w in body["timeline"]] == [round(w.start_s, 4) for w in expected.windows]
    assert len(body["timeline"]) == 39 and body["duration_s"] == pytest.approx(20.0, abs=1e-4)
    got = np.array([[w["probabilities"][c] for c in expected.class_names] for w in body["timeline"]])
    np.testing.assert_allclose(got, np.stack([w.probabilities for w in expected.windows]), atol=1e-5)
    assert {w["label"] for w in body["timeline"] if w["start_s"] >= 8.0 and w["end_s"] <= 12.0} == {"siren"}
    assert_pictures_equal_whole(body, predictor, load_audio(path, predictor.sample_rate))


def assert_pictures_equal_whole(body: dict, predictor: Predictor, waveform: np.ndarray) -> None:
    """The streamed envelope and spectrogram equal those of the whole waveform (to the JSON's rounding)."""
    from urbansound.serve.app import downsample_frames, envelope

    whole = envelope(waveform)
    np.testing.assert_allclose(body["waveform"]["min"], whole["min"], atol=1e-4)
    np.testing.assert_allclose(body["waveform"]["max"], whole["max"], atol=1e-4)
    features = np.nan_to_num(downsample_frames(predictor.features(waveform)), posinf=0.0, neginf=0.0)
    np.testing.assert_allclose(np.array(body["spectrogram"]["db"]), features, atol=0.05 + 1e-3)


def test_streamed_pictures_equal_whole_waveform(model_path: Path) -> None:
    """Any length (fewer samples than envelope points, fewer frames than columns, many) and block size."""
    from urbansound.serve.app import StreamingVisuals

    predictor = Predictor.from_file(model_path)
    rng = np.random.default_rng(9)
    for n, block in [(300, 7), (20_000, 999), (16_000 * 7 + 5, 4096), (16_000 * 12, 32_768)]:
        waveform = (scene("siren", n / 16_000, 16_000, rng)[:n] * rng.uniform(0.2, 1.0)).astype(np.float32)
        visuals = StreamingVisuals(predictor, n)
        blocks = [waveform[i : i + block] for i in range(0, n, block)]
        assert np.array_equal(np.concatenate(list(visuals.tap(blocks))), waveform)
        assert_pictures_equal_whole(visuals.result(), predictor, waveform)


# ---------------------------------------------------------------- raw bodies, schema, run name, examples


@pytest.fixture(scope="module")
def run_folder(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run's folder as `train` leaves it (the parts serve reads): config.json beside the model."""
    from urbansound.config import RunConfig
    from urbansound.training.run_folder import RunFolder

    folder = tmp_path_factory.mktemp("runs") / "20240101-120000-sirens"
    folder.mkdir()
    (folder / RunFolder.MODEL).write_bytes(model_path.read_bytes())
    RunFolder(folder).write_config(RunConfig())
    return folder


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(11)
    for name in ("siren", "dog_bark"):
        sf.write(folder / f"{name}.wav", scene(name, 2.0, 16_000, rng), 16_000)
    (folder / "README.txt").write_text("not audio: not offered")
    return folder


@pytest.fixture(scope="module")
def run_client(run_folder: Path, examples_dir: Path) -> TestClient:
    return TestClient(create_app(run_folder, max_upload_bytes=MAX_UPLOAD, examples_dir=examples_dir))


def test_raw_audio_body_equals_the_multipart_upload(client: TestClient) -> None:
    rng = np.random.default_rng(12)
    data = encode(scene("car_horn", 2.0, 22_050, rng), 22_050)
    raw = client.post("/classify?top_k=2", content=data, headers={"Content-Type": "audio/wav"})
    assert raw.status_code == 200, raw.text
    form = upload(client, data, "horn.wav", "?top_k=2").json()
    assert raw.json()["filename"] == "upload" and form["filename"] == "horn.wav"
    assert raw.json()["clip"] == form["clip"] and raw.json()["timeline"] == form["timeline"]
    for content, headers, status, detail in (
        (b"", {"Content-Type": "audio/wav"}, 400, "empty upload"),
        (b"hello" * 100, {"Content-Type": "audio/ogg"}, 415, "cannot decode"),
        (data, {"Content-Type": "application/octet-stream"}, 422, "Content-Type audio/*"),
        (b"\x00" * (MAX_UPLOAD + 1000), {"Content-Type": "audio/wav"}, 413, "too large"),
    ):
        response = client.post("/classify", content=content, headers=headers)
        assert response.status_code == status, (headers, response.text)
        assert detail in response.json()["detail"]


def test_openapi_documents_the_responses(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/classify"]["post"]
    assert {"multipart/form-data", "audio/*"} <= set(classify["requestBody"]["content"])
    ok = classify["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/ClassifyResponse"}
    models = schema["components"]["schemas"]
    documented = set(models["ClassifyResponse"]["properties"])
    assert {"clip", "timeline", "duration_s", "hop_s", "spectrogram"} <= documented
    assert "band_hz" in models["Spectrogram"]["properties"]
    assert set(models["ClipResult"]["required"]) >= {"label", "probability", "top_k", "probabilities"}
    health = schema["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert health == {"$ref": "#/components/schemas/Health"} and "run" in models["Health"]["properties"]
    # The documented schema describes what is sent: a real response validates against it.
    from urbansound.serve.schemas import ClassifyResponse

    siren = encode(scene("siren", 1.5, 16_000, np.random.default_rng(1)), 16_000)
    body = upload(client, siren, "s.wav", "?visuals=true").json()
    parsed = ClassifyResponse.model_validate(body)
    assert parsed.spectrogram is not None and len(parsed.spectrogram.band_hz) == parsed.spectrogram.n_bands
    assert parsed.spectrogram.band_hz == sorted(parsed.spectrogram.band_hz)
    assert parsed.spectrogram.band_hz[-1] <= 8000  # the tiny model's Nyquist (16 kHz)


def test_a_run_folder_is_served_under_its_run_name(run_client: TestClient, client: TestClient) -> None:
    health = run_client.get("/health").json()
    assert health["run"] == "20240101-120000-sirens" and health["model"] == "model.safetensors"
    assert client.get("/health").json()["run"] is None  # a model file outside any run folder


def test_examples_are_listed_and_served_and_nothing_else(run_client: TestClient, examples_dir: Path) -> None:
    listed = run_client.get("/examples").json()["examples"]
    assert [e["name"] for e in listed] == ["dog_bark.wav", "siren.wav"]  # audio only, by name
    response = run_client.get(listed[1]["url"])
    assert response.status_code == 200 and response.content == (examples_dir / "siren.wav").read_bytes()
    assert listed[1]["bytes"] == len(response.content)
    for name in ("README.txt", "..%2Fexamples%2Fsiren.wav", "missing.wav"):
        assert run_client.get(f"/examples/{name}").status_code == 404, name


def test_examples_folder_errors_name_the_folder(model_path: Path, tmp_path: Path) -> None:
    from urbansound.errors import ConfigError

    with pytest.raises(ConfigError, match=f"{tmp_path / 'nope'}: not a folder"):
        create_app(model_path, examples_dir=tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="no audio files"):
        create_app(model_path, examples_dir=tmp_path)

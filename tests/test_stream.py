"""Live streams: the WebSocket ``/stream``, ``urbansound listen --input`` (a file and a FIFO) and the page's
microphone button (Chromium with a fake microphone playing a WAV) return one result per hop, in order, and
the same results as classifying those windows directly."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _tiny_model import SAMPLE_RATE, scene, tiny_model

from urbansound.cli import main
from urbansound.inference import Predictor
from urbansound.live import LiveClassifier

HOP_S = 0.5


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")


@pytest.fixture(scope="module")
def recording() -> np.ndarray:
    """4.9 s: a siren, 1.6 s of digital silence, a dog barking."""
    rng = np.random.default_rng(11)
    parts = [
        scene("siren", 1.6, SAMPLE_RATE, rng),
        np.zeros(round(1.6 * SAMPLE_RATE)),
        scene("dog_bark", 1.7, SAMPLE_RATE, rng),
    ]
    return np.concatenate(parts).astype(np.float32)


def expected_hops(model_path: Path, recording: np.ndarray) -> list[tuple[int, float, str]]:
    """``(index, start_s, label)`` of every regular window (starts 0, hop, 2 hop, ...), classified offline."""
    predictor = Predictor.from_file(model_path)
    window, hop = predictor.window, predictor.hop_samples(HOP_S)
    starts = np.arange(0, len(recording) - window + 1, hop)
    prediction = predictor.predict_waveform(recording, hop=HOP_S)
    by_start = {round(w.start_s, 4): w.label for w in prediction.windows}
    return [(i, round(s / SAMPLE_RATE, 4), by_start[round(s / SAMPLE_RATE, 4)]) for i, s in enumerate(starts)]


def test_live_classifier_one_result_per_hop_whatever_the_chunks(
    model_path: Path, recording: np.ndarray
) -> None:
    expected = expected_hops(model_path, recording)
    assert len(expected) == 8 and "silence" in [label for _, _, label in expected]
    live = LiveClassifier(Predictor.from_file(model_path), hop=HOP_S)
    results = []
    rng = np.random.default_rng(0)
    position = 0
    while position < len(recording):  # chunks of random sizes, some far smaller than a hop
        size = int(rng.integers(1, 6000))
        results += live.push(recording[position : position + size])
        position += size
    assert [(r.index, round(r.start_s, 4), r.label) for r in results] == expected
    assert all(r.latency_ms >= 0 for r in results)


def test_stream_websocket_returns_one_result_per_hop_in_order(
    model_path: Path, recording: np.ndarray
) -> None:
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from fastapi.testclient import TestClient

    from urbansound.serve import create_app

    client = TestClient(create_app(model_path))
    expected = expected_hops(model_path, recording)
    received = []
    with client.websocket_connect(f"/stream?hop={HOP_S}") as socket:
        for chunk in np.array_split(recording, 13):  # uneven chunks of ~0.33 s
            socket.send_bytes(chunk.astype("<f4").tobytes())
        while len(received) < len(expected):
            received.append(socket.receive_json())
    assert [(r["index"], r["start_s"], r["label"]) for r in received] == expected
    assert all(r["latency_ms"] >= 0 and "level_dbfs" in r for r in received)

    with client.websocket_connect("/stream") as socket:
        socket.send_bytes(b"\x00" * 7)  # not whole float32 samples
        message = socket.receive()
        assert message["type"] == "websocket.close" and message["code"] == 1003
        assert "not float32 samples" in message["reason"]


def listen_lines(model_path: Path, source: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    assert (
        main(
            ["-q", "listen", str(model_path), "--input", str(source), "--hop", str(HOP_S), "--format", "json"]
        )
        == 0
    )
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_listen_input_file_and_fifo(
    model_path: Path, recording: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = expected_hops(model_path, recording)
    path = tmp_path / "street.wav"
    sf.write(path, recording, SAMPLE_RATE, subtype="FLOAT")
    results = listen_lines(model_path, path, capsys)
    assert [(r["index"], r["start_s"], r["label"]) for r in results] == expected

    fifo = tmp_path / "live.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(path.read_bytes()), daemon=True)
    writer.start()  # another program writing a WAV stream into the FIFO
    results = listen_lines(model_path, fifo, capsys)
    writer.join(10)
    assert [(r["index"], r["start_s"], r["label"]) for r in results] == expected

    assert main(["-q", "listen", str(model_path), "--input", str(tmp_path / "missing.wav")]) == 2
    assert "missing.wav: no such file or FIFO" in capsys.readouterr().err


def test_listen_without_sounddevice_says_what_to_install(
    model_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as when it is not installed
    assert main(["-q", "listen", str(model_path)]) == 2
    assert "pip install 'urbansound[listen]'" in capsys.readouterr().err


def test_page_microphone_streams_results_in_chromium(model_path: Path, tmp_path: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.is_file():
        pytest.skip(f"{chromium} not found (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
    from _server import running_server
    from test_serve_browser import CHROMIUM_ARGS

    from urbansound.serve import create_app

    siren = scene("siren", 4.0, 48_000, np.random.default_rng(12))
    fake_microphone = tmp_path / "microphone.wav"
    sf.write(fake_microphone, siren, 48_000, subtype="PCM_16")  # Chromium loops it as the microphone
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_microphone}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with running_server(create_app(model_path)) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=args, headless=True)
        try:
            context = browser.new_context(permissions=["microphone"])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/")
            page.click("#mic")
            page.wait_for_function("Number(document.body.dataset.liveHops || 0) >= 4", timeout=60_000)
            page.click("#mic")  # stop
            rows = page.eval_on_selector_all(
                "#live-results tbody tr",
                "rows => rows.map(r => [Number(r.dataset.index), r.cells[1].textContent])",
            )
        finally:
            browser.close()
    assert not errors, errors
    indices = [index for index, _ in rows]
    assert indices == sorted(indices, reverse=True) and indices == list(
        range(indices[0], indices[0] - len(rows), -1)
    )
    labels = [label for _, label in rows]
    assert labels.count("siren") >= len(labels) - 1, labels  # the first window may start before the sound

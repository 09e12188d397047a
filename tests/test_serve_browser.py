"""The web page in headless Chromium: pick a file (or an example clip), see the run named, waveform and
spectrogram with time and frequency axes, the per-window strip under them, sound events on the same axis and
in a list, probability bars, and a player; silence is never shown as a class; a failed upload leaves nothing
of the previous result.

Needs Debian's ``chromium`` (``apt-get install chromium``) and the ``playwright`` package; never downloads a
browser. Skipped with the reason when either is missing (CI installs both, see ``.ci/run``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _server import running_server
from _tiny_model import scene, tiny_model

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found (Debian: apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package (dev extra) is not installed"
)
pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
Image = pytest.importorskip("PIL.Image", reason="Pillow (a matplotlib dependency) is not installed")

from urbansound.serve import create_app  # noqa: E402

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BAR_RGB = np.array([31, 119, 180])  # the page's bar colour, #1f77b4
# The page's plot margins, in CSS pixels (screenshots here are at one pixel per CSS pixel).
PLOT_LEFT, PLOT_RIGHT = 58, 14
RUN_NAME = "20240101-120000-sirens"


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The service on a run folder (config.json beside the model file) with two example clips."""
    from urbansound.config import RunConfig
    from urbansound.training.run_folder import RunFolder

    model = tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")
    run = tmp_path_factory.mktemp("runs") / RUN_NAME
    run.mkdir()
    (run / RunFolder.MODEL).write_bytes(model.read_bytes())
    RunFolder(run).write_config(RunConfig())
    examples = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(21)
    for name in ("dog_bark", "siren"):
        sf.write(examples / f"{name}.wav", scene(name, 2.0, 16_000, rng), 16_000)
    with running_server(create_app(run, examples_dir=examples)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> object:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def pixels(png: bytes) -> np.ndarray:
    """``(height, width, 3)`` uint8 RGB of a PNG screenshot."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def open_page(browser: object, url: str) -> tuple[object, list[str]]:
    page = browser.new_page(viewport={"width": 1000, "height": 1300})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(f"{url}/")
    page.wait_for_function("document.getElementById('model').dataset.loaded === 'true'")
    return page, errors


def classify_file(page: object, path: Path) -> str:
    """Pick ``path`` in the page's file input; the page's state when it is done ("done" or "error")."""
    page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    return page.evaluate("document.body.dataset.state")


def image_columns(png: bytes, top: int, bottom: int) -> np.ndarray:
    """Columns of a canvas screenshot that are coloured (neither white nor its #ddd border) over most of rows
    ``top:bottom``."""
    rows = pixels(png)[top:bottom]
    coloured = (np.abs(rows - 255).sum(axis=2) > 30) & (np.abs(rows - 221).sum(axis=2) > 30)
    return np.flatnonzero(coloured.mean(axis=0) > 0.9)


def test_upload_draws_waveform_spectrogram_and_bars(browser: object, server_url: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    siren = scene("siren", 3.0, 22_050, rng)
    path = tmp_path / "siren.wav"
    sf.write(path, np.stack([siren, siren], axis=1), 22_050)

    page, errors = open_page(browser, server_url)
    page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    status = page.inner_text("#status")
    assert page.evaluate("document.body.dataset.state") == "done", status
    assert status.startswith("siren.wav: siren") and "5 window(s)" in status
    assert page.locator("#timeline tbody tr").count() == 5
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # kept in the test's folder to look at

    bars = pixels(page.locator("#bars").screenshot())
    blue = np.abs(bars - BAR_RGB).sum(axis=2) < 30  # (height, width): pixels of a bar
    assert blue.sum() > 500, "no probability bars drawn"
    rows = np.flatnonzero(blue.any(axis=1))
    top_row_width = blue[rows[0] : rows[0] + 5].any(axis=0).sum()
    # The first (most probable) bar is siren at ~99 %: it spans most of the bar area (60 % of the width).
    assert top_row_width > 0.4 * bars.shape[1]
    assert len(np.unique(rows // 10)) >= 2  # more than one bar row is drawn

    waveform = pixels(page.locator("#waveform").screenshot())
    assert (waveform.sum(axis=2) < 3 * 100).sum() > 1000  # dark waveform over a white background
    spectrogram = pixels(page.locator("#spectrogram").screenshot())
    colours = np.unique(spectrogram.reshape(-1, 3) // 8, axis=0)
    assert len(colours) > 20  # a colour map over the dB range, not a flat fill
    assert errors == []


def test_undecodable_file_shows_the_reason(browser: object, server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    page, errors = open_page(browser, server_url)
    page.set_input_files("#file", str(path))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "error"
    assert "cannot decode the upload as audio" in page.inner_text("#status")
    assert page.locator("#results").is_hidden()
    # The browser logs the failed (415) fetch as a console error; nothing else may fail.
    assert all("415" in error for error in errors), errors


def test_page_names_the_run_and_plays_the_upload(browser: object, server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "siren.wav"
    sf.write(path, scene("siren", 3.0, 22_050, np.random.default_rng(8)), 22_050)
    page, errors = open_page(browser, server_url)
    assert page.inner_text("#model").startswith(f"Run {RUN_NAME} (model.safetensors): 4 classes")
    assert classify_file(page, path) == "done"
    page.wait_for_function("document.getElementById('player').duration > 0")
    assert page.evaluate("document.getElementById('player').src").startswith("blob:")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(3.0, abs=0.01)
    assert errors == []


def test_axes_and_the_window_strip_line_up(browser: object, server_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bark.wav"
    sf.write(path, scene("dog_bark", 3.0, 16_000, np.random.default_rng(9)), 16_000)
    page, errors = open_page(browser, server_url)
    assert classify_file(page, path) == "done"
    ticks = {
        name: page.evaluate(f"document.getElementById('{name}').dataset.timeTicks")
        for name in ("waveform", "spectrogram")
    }
    assert ticks["waveform"] == ticks["spectrogram"]  # one time axis for both
    seconds = [float(t) for t in ticks["waveform"].split(",")]
    assert seconds[0] == 0 and seconds == sorted(seconds) and 2.5 <= seconds[-1] <= 3.0 and len(seconds) >= 4
    frequencies = page.evaluate("document.getElementById('spectrogram').dataset.frequencyTicks").split(",")
    assert "1 kHz" in frequencies and "5 kHz" in frequencies and "10 kHz" not in frequencies  # 8 kHz Nyquist
    waveform = pixels(page.locator("#waveform").screenshot())
    assert (waveform[:, 2:PLOT_LEFT].sum(axis=2) < 500).sum() > 60  # tick labels in the left margin

    # Five windows (1 s, hop 0.5 s): a strip of five classes, as wide as the spectrogram's image above it.
    assert page.locator("#window-block").is_visible()
    labels = page.evaluate("document.getElementById('windows').dataset.labels").split(",")
    table = [row.split("\t")[2] for row in page.locator("#timeline tbody tr").all_inner_texts()]
    assert labels == table and len(labels) == 5
    spectrogram_png = page.locator("#spectrogram").screenshot()
    height = pixels(spectrogram_png).shape[0]
    image = image_columns(spectrogram_png, 10, height - 22)
    strip_png = page.locator("#windows").screenshot()
    strip = image_columns(strip_png, 2, pixels(strip_png).shape[0] - 2)
    width = pixels(strip_png).shape[1]
    assert abs(image[0] - PLOT_LEFT) <= 2 and abs(image[-1] - (width - PLOT_RIGHT)) <= 3
    assert abs(strip[0] - image[0]) <= 2 and abs(strip[-1] - image[-1]) <= 3
    assert page.locator("#window-legend span").count() == len(set(labels))
    assert errors == []


def test_failed_upload_clears_the_previous_result(browser: object, server_url: str, tmp_path: Path) -> None:
    good, bad, short = tmp_path / "siren.wav", tmp_path / "broken.wav", tmp_path / "short.wav"
    rng = np.random.default_rng(10)
    sf.write(good, scene("siren", 3.0, 16_000, rng), 16_000)
    bad.write_bytes(b"RIFF" + bytes(200))
    sf.write(short, scene("siren", 0.8, 16_000, rng), 16_000)
    page, errors = open_page(browser, server_url)
    assert classify_file(page, good) == "done"
    assert page.locator("#timeline tbody tr").count() == 5 and page.locator("#results").is_visible()
    assert classify_file(page, bad) == "error"
    assert page.locator("#results").is_hidden() and page.locator("#timeline tbody tr").count() == 0
    assert page.evaluate("document.getElementById('player').getAttribute('src')") is None
    assert page.evaluate("document.getElementById('windows').dataset.labels") is None
    assert "broken.wav" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # kept in the test's folder to look at
    # One window: no strip (the timeline says it all).
    assert classify_file(page, short) == "done"
    assert page.locator("#timeline tbody tr").count() == 1 and page.locator("#window-block").is_hidden()
    assert all("415" in error for error in errors), errors


def test_an_example_clip_is_classified_with_one_click(browser: object, server_url: str) -> None:
    page, errors = open_page(browser, server_url)
    page.wait_for_function("!document.getElementById('examples').hidden")
    buttons = page.locator("#example-buttons button")
    assert buttons.all_inner_texts() == ["dog_bark.wav", "siren.wav"]
    buttons.nth(1).click()
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)", timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "done"
    assert page.inner_text("#status").startswith("siren.wav: siren")
    assert page.evaluate("document.getElementById('player').src").startswith("blob:")
    assert errors == []


def test_a_long_recording_shows_its_sound_events(browser: object, server_url: str, tmp_path: Path) -> None:
    """Events (as POST /classify?events=true lists them) as markers on the strip's time axis and a table."""
    rng = np.random.default_rng(12)
    parts = [("background", 2.0), ("siren", 3.0), ("background", 2.0), ("dog_bark", 3.0)]
    path = tmp_path / "street.wav"
    sf.write(path, np.concatenate([scene(name, seconds, 16_000, rng) for name, seconds in parts]), 16_000)
    page, errors = open_page(browser, server_url)
    assert classify_file(page, path) == "done"
    upload = {"file": {"name": path.name, "mimeType": "audio/wav", "buffer": path.read_bytes()}}
    answer = page.request.post(f"{server_url}/classify?events=true&event_threshold=0.5", multipart=upload)
    events = answer.json()["events"]
    sirens = [e for e in events if e["event_label"] == "siren"]
    assert sirens and any(e["onset"] < 5.0 and e["offset"] > 2.0 for e in sirens), events

    assert page.locator("#event-block").is_visible()
    rows = [row.split("\t") for row in page.locator("#event-table tbody tr").all_inner_texts()]
    assert [(r[0], float(r[1]), float(r[2])) for r in rows] == [
        (e["event_label"], round(e["onset"], 2), round(e["offset"], 2)) for e in events
    ]
    assert page.inner_text("#event-summary").startswith(f"{len(events)} event(s)")
    marked = page.evaluate("document.getElementById('events').dataset.events").split(",")
    marked = [m.split("@") for m in marked]
    assert [(label, tuple(map(float, span.split("-")))) for label, span in marked] == [
        (e["event_label"], (e["onset"], e["offset"])) for e in events
    ]
    # The siren's marker (tab10 red, the fourth class) spans its onset to offset on the shared time axis.
    strip = pixels(page.locator("#events").screenshot())
    red = (np.abs(strip - np.array([214, 39, 40])).sum(axis=2) < 40).any(axis=0)
    width, duration = strip.shape[1], 10.0
    x = lambda seconds: PLOT_LEFT + seconds / duration * (width - PLOT_LEFT - PLOT_RIGHT)  # noqa: E731
    first = sirens[0]
    assert red[int(x(first["onset"])) + 2 : int(x(first["offset"])) - 2].all()
    assert not red[: int(x(first["onset"])) - 3].any()
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)  # kept in the test's folder to look at

    # A failed upload takes the events away with the rest.
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(200))
    assert classify_file(page, broken) == "error"
    assert page.locator("#event-block").is_hidden() and page.locator("#event-table tbody tr").count() == 0
    assert page.evaluate("document.getElementById('events').dataset.events") is None
    assert all("415" in error for error in errors), errors


def test_silence_is_never_shown_as_a_class(browser: object, server_url: str, tmp_path: Path) -> None:
    """The status line says what the server answered (silence, too_short), not the top class underneath."""
    silent, short = tmp_path / "silent.wav", tmp_path / "short.wav"
    sf.write(silent, np.zeros(4 * 16_000, dtype=np.float32), 16_000, subtype="PCM_16")
    sf.write(short, np.random.default_rng(13).normal(0, 0.1, 10), 16_000)
    page, errors = open_page(browser, server_url)
    assert classify_file(page, silent) == "done"
    assert page.inner_text("#status").startswith("silent.wav: silence (no class, level ")
    assert page.locator("#bars").is_hidden()  # no class's probability to show
    rows = [row.split("\t")[2:] for row in page.locator("#timeline tbody tr").all_inner_texts()]
    assert len(rows) == 7 and all(row == ["silence", "-"] for row in rows)  # 1 s windows every 0.5 s
    assert classify_file(page, short) == "done"
    assert page.inner_text("#status").startswith("short.wav: too_short (no class, level ")
    siren = tmp_path / "siren.wav"
    sf.write(siren, scene("siren", 3.0, 16_000, np.random.default_rng(14)), 16_000)
    assert classify_file(page, siren) == "done" and page.locator("#bars").is_visible()
    assert errors == []

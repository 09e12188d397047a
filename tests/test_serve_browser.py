"""The web page in headless Chromium: pick a file, see waveform, spectrogram and probability bars drawn.

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


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> object:
    model = tiny_model(tmp_path_factory.getbasetemp() / "tiny_model")
    with running_server(create_app(model)) as url:
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
    page.wait_for_function("document.getElementById('model').textContent.startsWith('Model ')")
    return page, errors


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

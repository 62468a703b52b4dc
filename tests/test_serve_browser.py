"""The page of `styleengine serve` in a real browser: headless Chromium (Debian's package) driven by Playwright
opens it, uploads a photo and two style images, submits, sees previews arrive, downloads the PNG, and saves
the screenshot the README shows (docs/serve.png)."""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                     "(pip install playwright; the browser is Debian's chromium)")

from PIL import Image  # noqa: E402
from serve_helpers import SETTINGS, uvicorn_server  # noqa: E402

from styleengine.serve.app import Config, create_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
# the README's picture is rewritten only when asked (STYLEENGINE_WRITE_SCREENSHOT=1): tests leave the checkout clean
SCREENSHOT = ROOT / "docs" / "serve.png"


def _chromium() -> Path:
    """Debian's chromium, installed with apt-get when it is missing and this is root on a Debian-like system."""
    if CHROMIUM.is_file():
        return CHROMIUM
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], capture_output=True, timeout=900)
    if not CHROMIUM.is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}, and apt-get could not install Debian's chromium package here")
    return CHROMIUM


def _pictures(folder: Path) -> tuple[Path, Path, Path]:
    """A photo (scikit-image's chelsea) and two paintings cropped from the repository's Figure 3."""
    from skimage import data

    content = folder / "chelsea.png"
    Image.fromarray(data.chelsea()).save(content)
    figure = Image.open(ROOT / "examples" / "figures" / "fig3.png").convert("RGB")
    starry, shipwreck = folder / "starry_night.png", folder / "shipwreck.png"
    figure.crop((415, 222, 655, 382)).save(starry)
    figure.crop((935, 222, 1185, 382)).save(shipwreck)
    return content, starry, shipwreck


def test_the_page_makes_a_picture_in_chromium(tmp_path):
    from conftest import shared_vgg16_path

    chromium = _chromium()
    weights = shared_vgg16_path()  # real weights make the screenshot worth looking at; random ones work too
    settings = dataclasses.replace(SETTINGS, size=128, iterations=20,
                                   weights=str(weights) if weights is not None else "random")
    config = Config(settings=settings.resolved(), root=tmp_path / "srv", max_size=512, max_iters=200)
    content, starry, shipwreck = _pictures(tmp_path)
    with uvicorn_server(create_app(config)) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 900}, accept_downloads=True)
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('server').textContent.includes('vgg16')")
            page.set_input_files("#content", str(content))
            page.set_input_files("#style", [str(starry), str(shipwreck)])
            assert page.locator(".style-item").count() == 2
            page.click("#submit")
            page.wait_for_function("Number(document.getElementById('canvas').dataset.previews || 0) >= 2",
                                   timeout=120_000)
            page.wait_for_function("document.getElementById('st-status').textContent === 'done'", timeout=120_000)
            assert page.locator("#error").text_content() == ""
            with page.expect_download() as download:
                page.click("#download")
            saved = tmp_path / "download.png"
            download.value.save_as(saved)
            assert Image.open(saved).size == (128, 85)  # chelsea is 451x300
            page.wait_for_selector(".gallery img")
            page.wait_for_timeout(300)  # the gallery's image decodes
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shot = SCREENSHOT if os.environ.get("STYLEENGINE_WRITE_SCREENSHOT") == "1" else tmp_path / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


def test_the_page_shows_a_failed_jobs_last_finite_image(tmp_path, monkeypatch):
    """A job whose loss went non-finite after some iterations: the page says why, shows its last finite image and
    offers it for download, as run and batch write it."""
    from styleengine.engine import loop, stylise as stylise_module

    chromium = _chromium()
    real = loop.Result

    def late(image, iterations, stopped, records, distances=None, **kwargs):
        return real(image, iterations, "non-finite loss", records, distances, **kwargs)

    monkeypatch.setattr(stylise_module, "Result", late)
    monkeypatch.setattr(loop, "Result", late)
    settings = dataclasses.replace(SETTINGS, size=64, iterations=10)  # the page's sliders' least values
    config = Config(settings=settings.resolved(), root=tmp_path / "srv", max_size=64, max_iters=10)
    content, starry, _ = _pictures(tmp_path)
    with uvicorn_server(create_app(config)) as url, playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.goto(url + "/")
            page.set_input_files("#content", str(content))
            page.set_input_files("#style", [str(starry)])
            page.click("#submit")
            page.wait_for_function("document.getElementById('st-status').textContent === 'failed'", timeout=60_000)
            assert page.locator("#error").text_content() == ("the loss became non-finite after 10 iterations; its "
                                                             "last finite image is the job's result")
            assert page.locator("#download").get_attribute("aria-disabled") == "false"
            page.wait_for_function("document.getElementById('preview').naturalWidth === 64", timeout=10_000)
            with page.expect_download() as download:
                page.click("#download")
            saved = tmp_path / "download.png"
            download.value.save_as(saved)
            assert max(Image.open(saved).size) == 64
        finally:
            browser.close()

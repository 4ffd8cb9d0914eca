"""The web app (`bin/app`) in a real browser: Playwright driving Debian's Chromium.

The page's result must be bin/stylize's output for the same settings; bad uploads give a message
on the page and the app keeps working; two visitors at once each get their own result; the app
removes its temporary folder when it stops. Skipped, saying why, only when Chromium or Playwright
cannot be found (.ci/run installs Debian's chromium when it is missing).
"""

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fastnst import data, images
from tests.helpers import ROOT, free_port, run_cli

pytestmark = pytest.mark.slow

# The page shows the file `stylize.run_files` wrote, in another process than bin/stylize: the same
# program on the same machine, so equal bits are expected; one level of 255 allows a float32
# reduction split differently between threads (the bound the tiling and export docs use for uint8).
MAX_LEVEL_DIFF = 1
FIRST_SCREEN = {"width": 1366, "height": 768}  # a common laptop screen: what must show unscrolled


def _chromium() -> str:
    path = os.environ.get("FASTNST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's: apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (the dev extra has it)")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """bin/app on a free port; at the end SIGTERM, and its temporary folder must be gone."""
    pytest.importorskip("gradio", reason="the app extra (gradio) is not installed")
    _chromium()
    port = free_port()
    log = tmp_path_factory.mktemp("app") / "app.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "bin/app", f"--port={port}", "--max-megapixels=0.5"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "JAX_PLATFORMS": "cpu"})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    workspace = Path(log.read_text().split("uploads and results go to ")[1].split()[0])
    assert workspace.is_dir()
    yield url, workspace
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert not workspace.exists(), log.read_text()[-2000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium())
        yield b
        b.close()


def _photo(path: Path, h: int, w: int, seed: int) -> Path:
    small = np.random.default_rng(seed).uniform(0, 255, (5, 6, 3)).astype(np.float32)
    return images.save_image(path, images.resize(small, (h, w), method="bilinear"))


def _open(browser, url):
    """A page in a fresh browser context (its own session: cookies, Gradio session, queue entry)."""
    page = browser.new_context(viewport=FIRST_SCREEN).new_page()
    page.goto(url)
    page.wait_for_selector("#style-photo input[type=file]", state="attached")
    return page


def _more(page):
    """Opens the folded options (video, own model file, strength, colours, size)."""
    if not page.locator("#model-file input[type=file]").count():
        page.get_by_text("More: a video").click()
    page.wait_for_selector("#model-file input[type=file]", state="attached", timeout=60_000)  # (under load)


def _stylize(page, photo: Path, style_index: int | None = None, timeout_ms: int = 180_000) -> np.ndarray:
    """Uploads `photo`, optionally picks a gallery style, clicks Stylize, returns the shown result."""
    old = page.locator("#style-result img").last.get_attribute("src") \
        if page.locator("#style-result img").count() else None
    page.locator("#style-photo input[type=file]").set_input_files(str(photo))
    page.wait_for_function("document.querySelectorAll('#style-photo img').length > 0")
    if style_index is not None:
        page.locator("#style-gallery .thumbnail-item").nth(style_index).click()
    page.locator("#stylize").click()
    page.wait_for_function(
        "old => { const im = document.querySelectorAll('#style-result img');"
        " return im.length >= 2 && im[im.length - 1].getAttribute('src') !== old; }", arg=old,
        timeout=timeout_ms)
    return _fetch(page, page.locator("#style-result img").last.get_attribute("src"))


def _fetch(page, src: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"), np.int16)


def _expect_error(page, message: str) -> None:
    """A message toast containing `message` appears (within a minute); then every toast is closed."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.locator(".toast-body", has_text=message).first.wait_for(state="visible", timeout=60_000)
    except PlaywrightTimeout:
        raise AssertionError(f"no message {message!r}; shown: {page.locator('.toast-body').all_inner_texts()}"
                             ) from None
    for close in page.locator(".toast-close").all():
        close.click()
    page.locator(".toast-body").first.wait_for(state="detached", timeout=10_000)


def test_page_result_equals_bin_stylize_and_bad_inputs_get_a_message(server, browser, tmp_path):
    url, workspace = server
    page = _open(browser, url)
    photo = images.save_image(tmp_path / "photo.png",  # the demo photo, small
                              images.resize_max_side(images.load_image(data.content_photo()), 200))
    t = time.perf_counter()
    shown = _stylize(page, photo, style_index=1)  # the_scream (the gallery lists shipped models by name)
    print(f"click to result, 200 px photo, with compilation: {time.perf_counter() - t:.1f} s")
    r = run_cli("bin/stylize", "--model=the_scream", photo, f"--out={tmp_path / 'cli.png'}",
                "--max-size=1024")
    assert r.returncode == 0, r.stderr[-2000:]
    cli = np.asarray(images.load_image(tmp_path / "cli.png"), np.int16)
    assert shown.shape == cli.shape and np.abs(shown - cli).max() <= MAX_LEVEL_DIFF
    print(f"page vs bin/stylize: max difference {np.abs(shown - cli).max()} levels")
    shots = Path(os.environ.get("FASTNST_SCREENSHOTS", tmp_path))  # docs/: FASTNST_SCREENSHOTS=docs

    bad = tmp_path / "notes.jpg"  # a text file named .jpg
    bad.write_text("not a photo")
    page.locator("#style-photo input[type=file]").set_input_files(str(bad))
    page.locator("#stylize").click()
    page.locator(".toast-body", has_text="notes.jpg").first.wait_for(state="visible", timeout=60_000)
    page.wait_for_timeout(500)  # (the toast slides in)
    page.screenshot(path=str(shots / "app_error.png"))
    _expect_error(page, "notes.jpg is not an image or video this app can read")
    huge = images.save_image(tmp_path / "huge.png", np.zeros((1000, 1000, 3)))  # over --max-megapixels
    page.locator("#style-photo input[type=file]").set_input_files(str(huge))
    page.locator("#stylize").click()
    _expect_error(page, "huge.png is 1000x1000 (1.0 MP); the limit is 0.5 MP")
    tiny = images.save_image(tmp_path / "tiny.png", np.zeros((1, 1, 3)))
    page.locator("#style-photo input[type=file]").set_input_files(str(tiny))
    page.locator("#stylize").click()
    _expect_error(page, "tiny.png: 1x1 is too small")
    _more(page)
    alien = tmp_path / "weights.msgpack"  # a model file from elsewhere
    alien.write_bytes(b"\x81\xa3foo\xa3bar")
    page.locator("#model-file input[type=file]").set_input_files(str(alien))
    _expect_error(page, "weights.msgpack: not a valid fastnst model file")
    broken = tmp_path / "broken.mp4"  # a corrupt video
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    page.locator("#style-video input[type=file]").set_input_files(str(broken))
    page.locator("#stylize").click()
    _expect_error(page, "broken.mp4 is not a video file FFmpeg can read")
    page.locator("#style-video button[aria-label='Clear']").first.click()
    page.locator("#model-file button[aria-label='Clear']").first.click()
    again = _stylize(page, _photo(tmp_path / "again.png", 48, 64, 1))  # and the app still works
    assert again.shape == (48, 64, 3)
    page.context.close()


def test_the_first_screen_shows_photo_styles_and_button_and_a_sample_photo_is_one_click_away(server, browser):
    url, _ = server
    page = _open(browser, url)
    page.wait_for_selector("#style-gallery .thumbnail-item")
    for sel in ("#style-photo", "#style-samples", "#style-gallery", "#stylize"):
        box = page.locator(sel).first.bounding_box()
        assert box and box["y"] >= 0 and box["y"] + box["height"] <= FIRST_SCREEN["height"], (sel, box)
    captions = page.locator("#style-gallery .thumbnail-item").all_inner_texts()
    assert "The Scream" in " ".join(captions) and "_" not in " ".join(captions), captions
    page.locator("#style-gallery .thumbnail-item").nth(1).click()
    page.locator("#style-samples .gallery-item").nth(1).click()  # scikit-image's cat
    page.wait_for_function("document.querySelectorAll('#style-photo img').length > 0")
    page.locator("#stylize").click()
    page.wait_for_function("document.querySelectorAll('#style-result img').length >= 2", timeout=180_000)
    shown = _fetch(page, page.locator("#style-result img").last.get_attribute("src"))
    assert shown.shape == (300, 451, 3)  # scikit-image's cat, at its own size (under 512 px)
    shots = os.environ.get("FASTNST_SCREENSHOTS")  # the README's picture: FASTNST_SCREENSHOTS=docs
    if shots:
        page.wait_for_timeout(500)
        page.screenshot(path=str(Path(shots) / "app.png"))
    page.context.close()


def test_two_visitors_at_once_get_their_own_results(server, browser, tmp_path):
    url, _ = server
    pages = [_open(browser, url) for _ in range(2)]  # two separate sessions
    photos = [_photo(tmp_path / f"p{i}.png", 40 + 8 * i, 56, i) for i in range(2)]
    for page, photo in zip(pages, photos, strict=True):
        page.locator("#style-photo input[type=file]").set_input_files(str(photo))
        page.wait_for_function("document.querySelectorAll('#style-photo img').length > 0")
    for page in pages:  # both queued before either finishes
        page.locator("#stylize").click()
    for page, photo in zip(pages, photos, strict=True):
        page.wait_for_function("document.querySelectorAll('#style-result img').length >= 2", timeout=180_000)
        shown = _fetch(page, page.locator("#style-result img").last.get_attribute("src"))
        assert shown.shape == images.load_image(photo).shape
    for page in pages:
        page.context.close()


def test_upscale_tab_shows_bicubic_and_the_network_at_four_times_the_size(server, browser, tmp_path):
    url, _ = server
    page = _open(browser, url)
    page.get_by_role("tab", name="Upscale").click()
    photo = _photo(tmp_path / "small.png", 20, 24, 3)
    page.locator("#sr-photo input[type=file]").set_input_files(str(photo))
    page.wait_for_function("document.querySelectorAll('#sr-photo img').length > 0")
    page.locator("#upscale").click()
    page.wait_for_function("document.querySelectorAll('#sr-result img').length >= 2", timeout=180_000)
    bicubic, net = (_fetch(page, im.get_attribute("src")) for im in page.locator("#sr-result img").all()[-2:])
    assert bicubic.shape == net.shape == (80, 96, 3) and np.abs(bicubic - net).mean() > 0.5
    page.context.close()


def test_a_video_comes_back_with_every_frame(server, browser, tmp_path):
    from tests.test_video import _clip, _probe

    url, _ = server
    page = _open(browser, url)
    clip = _clip(tmp_path / "clip.mp4", frames=6, audio=False)
    _more(page)
    page.locator("#style-video input[type=file]").set_input_files(str(clip))
    page.wait_for_function("document.querySelectorAll('#style-video video').length > 0")
    page.locator("#stylize").click()
    page.wait_for_function("document.querySelectorAll('#style-result-video video[src]').length > 0",
                           timeout=180_000)
    src = page.locator("#style-result-video video[src]").first.get_attribute("src")
    (tmp_path / "out.mp4").write_bytes(page.request.get(src).body())
    assert _probe(tmp_path / "out.mp4")["frames"] == 6
    page.context.close()

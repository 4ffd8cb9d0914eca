"""Time from a click on Stylize to the result on the page, for a 1024 px photo (the web app).

  python -m tests.measure_app [--out=results/app.json]

Starts `bin/app` as a user would (full XLA optimisation: not the test suite's setting), opens the
page in Debian's Chromium through Playwright, uploads the demo photo at 1024 px (longer side) and
clicks Stylize three times with `the_scream` (colour preservation toggled between clicks, so each
result is a new file): the first click includes compiling the network for that size; the next two
are the steady state. Run with nothing else on the machine.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastnst import data, images
from tests.helpers import ROOT, free_port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/app.json")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp())
    src = images.load_image(data.content_photo())  # (712 px wide: enlarged to 1024)
    h, w = src.shape[:2]
    big = images.resize(src, (round(h * 1024 / max(h, w)), round(w * 1024 / max(h, w))))
    photo = images.save_image(tmp / "photo.png", big)
    env = {k: v for k, v in os.environ.items() if k != "JAX_DISABLE_MOST_OPTIMIZATIONS"}
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "bin/app", f"--port={port}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    start_s = time.perf_counter() - t0
    clicks = []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=shutil.which("chromium"))
            page = b.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("#style-photo input[type=file]").set_input_files(str(photo))
            page.wait_for_function("document.querySelectorAll('#style-photo img').length > 0")
            page.locator("#style-gallery .thumbnail-item").nth(1).click()
            for i in range(3):
                old = page.locator("#style-result img").last.get_attribute("src") \
                    if page.locator("#style-result img").count() else None
                if i:  # Gradio names result files by content: a different one for each click
                    page.get_by_label("Preserve the photo's colours").click()
                t = time.perf_counter()
                page.locator("#stylize").click()
                page.wait_for_function(
                    "old => { const im = document.querySelectorAll('#style-result img');"
                    " return im.length >= 2 && im[im.length - 1].getAttribute('src') !== old; }",
                    arg=old, timeout=300_000)
                clicks.append(round(time.perf_counter() - t, 2))
            b.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(tmp)
    h, w = big.shape[:2]
    row = {"photo": f"{w}x{h}", "model": "the_scream", "app_start_s": round(start_s, 1),
           "click_to_result_s": clicks, "command": "python -m tests.measure_app"}
    print(json.dumps(row))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(row, indent=1) + "\n")


if __name__ == "__main__":
    main()

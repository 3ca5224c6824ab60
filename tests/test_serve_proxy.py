"""distgan-serve behind a real nginx (Debian's, unprivileged, the README's location block) under /gan/, driven by
Debian's chromium: every control, downloads against the copied command, permalinks, a phone, axe-core, keyboard."""

from __future__ import annotations

import io
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import run_env, start_server, stop_server
from distgan.serve.proxy import NGINX, Nginx, location_block
from test_serve_browser import Watched, api_images, as_rgb, browser, canvas_pixels, download, tiles, wait_caption

pytestmark = pytest.mark.slow
__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_serve_browser

AXE = Path(__file__).resolve().parents[1] / "node_modules" / "axe-core" / "axe.min.js"
PUBLIC_HOST = "gan.example.org"


@pytest.fixture(scope="module")
def proxied(serve_models, pattern_shards, tmp_path_factory):
    """(nginx URL ending in /gan/, the server's own URL): default limits, both models, --data (28x28 patterns)."""
    if not Path(NGINX).is_file():
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    folder = tmp_path_factory.mktemp("proxied")
    proc, url = start_server(folder / "server.log", serve_models["cond"], serve_models["rgb"], "--port", "0",
                             "--threads", "1", "--data", pattern_shards, "--allowed-hosts", PUBLIC_HOST)
    try:
        with Nginx(folder / "nginx", url.removeprefix("http://").rstrip("/")) as nginx:
            yield nginx.url, url
    finally:
        stop_server(proc)


def run_copied(command: str, cwd: Path) -> bytes:
    """The page's command line run as a fresh shell would (no PATH from the server); the file it wrote."""
    cwd.mkdir(parents=True, exist_ok=True)
    words = shlex.split(command)
    proc = subprocess.run(words, cwd=cwd, env=run_env(PATH="/usr/bin:/bin"), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return (cwd / words[words.index("--grid") + 1]).read_bytes()


def test_the_largest_requests_and_the_hosts_through_nginx(proxied):
    gan, _ = proxied
    largest = [("api/sample", {"seed": 4294967295 - 255, "n": 256}),
               ("api/sample", {"seed": 4294967295 - 127, "n": 128, "class": "all"}),
               ("api/interpolate", {"seed_a": 4294967295, "seed_b": 4000000000, "steps": 64, "class": "all"}),
               ("api/sample", {"model": "faces64", "seed": 4294967295 - 255, "n": 256})]
    with httpx.Client(timeout=120) as client:
        for path, params in largest:
            for form in ("png", "npy", "json"):
                response = client.get(gan + path, params={**params, "format": form})
                assert response.status_code == 200, (path, params, form, response.text[:300])
                assert all(len(k) + len(v) < 1024 for k, v in response.headers.items())
        answer = client.get(gan + "api/sample", params={"seed": 5, "format": "json"}).json()
        assert answer["link"] == "/gan/?seed=5"  # X-Forwarded-Prefix from the recipe
        # The proxy forwards the public name (Host $host): served when listed, refused otherwise.
        assert client.get(gan + "api/models", headers={"Host": PUBLIC_HOST}).status_code == 200
        refused = client.get(gan + "api/models", headers={"Host": "evil.example"})
        assert refused.status_code == 400 and refused.json()["field"] == "host"
        bare = client.get(gan.rstrip("/"))
        assert bare.status_code == 301 and bare.headers["location"].endswith("/gan/")
    # What README shows is what ran.
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert location_block("/gan", "127.0.0.1:8000") in readme


def test_every_control_through_nginx(browser, proxied, tmp_path):
    gan, direct = proxied
    origin = gan.split("/gan/")[0]
    w = Watched(browser, origin, tmp_path)
    page = w.page
    page.goto(gan)
    wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")
    page.fill("#seed", "4294967000")
    page.fill("#n", "6")
    page.select_option("#class", label="Sandal")
    page.fill("#psi-range", "0.7")
    wait_caption(page, "6 images · seeds 4294967000–4294967005 · Sandal · ψ 0.7")
    params = {"seed": 4294967000, "n": 6, "class": "3", "psi": "0.7"}
    assert np.array_equal(tiles(page), as_rgb(api_images(direct.rstrip("/"), **params)))
    page.fill("#psi", "0.75")
    page.click("#generate")
    wait_caption(page, "6 images · seeds 4294967000–4294967005 · Sandal · ψ 0.75")

    # Download, copy command, copy link: the command writes the downloaded bytes; the link is this view.
    grid_png, _ = download(page, "#download-grid", tmp_path)
    page.click("#copy-command")
    command = page.evaluate("() => navigator.clipboard.readText()")
    assert run_copied(command, tmp_path / "grid") == grid_png
    page.click("#copy-link")
    link = page.evaluate("() => navigator.clipboard.readText()")
    assert link == page.url and link.startswith(gan + "?") and "seed=4294967000" in link and "psi=0.75" in link

    # One image: download, command, nearest training images, walk ends.
    page.click("#grid .tile:nth-child(2) button")
    page.wait_for_selector("#lightbox-download:not([disabled])")
    one_png, _ = download(page, "#lightbox-download", tmp_path)
    page.click("#lightbox-copy")
    assert run_copied(page.evaluate("() => navigator.clipboard.readText()"), tmp_path / "one") == one_png
    assert Image.open(io.BytesIO(one_png)).text["distgan.seed"] == "4294967001"
    page.click("#lightbox-nearest")
    page.wait_for_function("() => document.querySelectorAll('#nearest-grid img').length === 8")
    assert "1,200 train images of patterns" in page.inner_text("#nearest-caption")
    distances = [float(c.split("d ")[-1]) for c in page.locator("#nearest-grid figcaption").all_inner_texts()]
    assert distances == sorted(distances)
    w.shot("proxy-1-nearest")
    page.click("#lightbox-walk-from")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 16')")
    assert page.input_value("#seed-a") == "4294967001"
    page.click("#grid .tile:nth-child(3) button")
    page.wait_for_selector("#lightbox[open]")
    page.click("#lightbox-walk-to")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.includes('→ 4294967002')")

    # The walk's controls; all classes, each walk named under the frame.
    page.fill("#steps", "5")
    page.select_option("#walk-class", "all")
    page.click("#render-walk")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 5')")
    legend = page.locator("#walk-legend span").all_inner_texts()
    assert legend == ["T-shirt/top", "Trouser", "Pullover", "Sandal", "Ankle boot"]
    page.fill("#walk-slider", "4")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 5 / 5')")
    box = page.locator("#walk-strip").bounding_box()
    page.mouse.click(box["x"] + 3, box["y"] + box["height"] / 2)
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 5')")
    page.click("#play")
    page.wait_for_function("() => !document.querySelector('#walk-label').textContent.startsWith('frame 1 / 5')")
    page.click("#play")
    walk_png, _ = download(page, "#download-walk", tmp_path)
    page.click("#copy-walk-command")
    assert run_copied(page.evaluate("() => navigator.clipboard.readText()"), tmp_path / "walk") == walk_png
    page.click("#copy-walk-link")
    walk_link = page.evaluate("() => navigator.clipboard.readText()")
    assert "seed_a=4294967001" in walk_link and "walk_class=all" in walk_link and "steps=5" in walk_link
    w.shot("proxy-2-walk")

    # Errors beside their control, the walk dimmed; fixing the value clears the message.
    page.fill("#steps", "65")
    page.click("#render-walk")
    page.wait_for_selector("#steps-error:not([hidden])")
    assert "valid: 2..64" in page.inner_text("#steps-error") and "stale" in page.get_attribute("#walk-view", "class")
    page.fill("#steps", "5")
    assert page.is_hidden("#steps-error")
    page.click("#render-walk")
    page.wait_for_function("() => !document.querySelector('#walk-view').classList.contains('stale')")

    # The largest grid the page may ask for: 128 ten-digit seeds in all 5 classes, through the proxy.
    page.fill("#seed", "4294967168")
    page.fill("#n", "128")
    page.select_option("#class", "all")
    page.click("#generate")
    wait_caption(page, "640 images · seeds 4294967168–4294967295 · all classes · ψ 0.75")
    assert page.locator("#grid img").count() == 640 and page.locator("#grid .row-label").count() == 128
    page.fill("#n", "6")

    # The random seed, the model picker.
    page.click("#random")
    page.wait_for_function("() => !document.querySelector('#grid-caption').textContent.includes('4294967000–')")
    page.select_option("#model", "faces64")
    wait_caption(page, "6 images · seeds " + page.input_value("#seed") + "–" + str(int(page.input_value("#seed")) + 5)
                 + " · ψ 0.75")
    assert page.is_hidden("#lightbox-nearest")  # faces64's images are not the training set's shape
    w.check(typed=("steps=65",))
    w.context.close()


def test_a_link_reproduces_the_pixels(browser, proxied, tmp_path):
    gan, direct = proxied
    w = Watched(browser, gan.split("/gan/")[0], tmp_path)
    page = w.page
    page.goto(gan + "?model=fashion28&seed=1234567890&n=4&class=Trouser&psi=0.6&seed_a=7&seed_b=9&steps=4")
    wait_caption(page, "4 images · seeds 1234567890–1234567893 · Trouser · ψ 0.6")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 4')")
    expected = Image.open(io.BytesIO(httpx.get(direct + "api/sample", params={
        "seed": 1234567890, "n": 4, "class": "Trouser", "psi": 0.6}).content))
    grid = np.asarray(expected)  # 2 x 2 tiles of 28 px, 2 px apart
    for i, tile in enumerate(page.locator("#grid .tile img").all()):
        shot = np.asarray(Image.open(io.BytesIO(tile.screenshot())).convert("L"))
        scale = round(tile.bounding_box()["width"] / 28)  # a whole factor, drawn pixelated: read each block's middle
        assert scale >= 2 and abs(shot.shape[0] - 28 * scale) <= 1, shot.shape
        y, x = 2 + (i // 2) * 30, 2 + (i % 2) * 30
        middle = shot[scale // 2::scale, scale // 2::scale][:28, :28]
        assert np.array_equal(middle, grid[y:y + 28, x:x + 28]), f"tile {i}"
    frames = np.asarray(Image.open(io.BytesIO(httpx.get(direct + "api/interpolate", params={
        "seed_a": 7, "seed_b": 9, "steps": 4, "psi": 0.6, "class": 0}).content)))  # the walk's class control: 0
    frame = canvas_pixels(page, "#walk-canvas")
    scale = frame.shape[0] // 28
    assert np.array_equal(frame[::scale, ::scale, 0], frames[2:30, 2:30])  # frame 1 of 4
    w.check()
    w.context.close()


def test_a_phone_an_axe_audit_and_the_keyboard(browser, proxied, tmp_path):
    if not AXE.is_file():
        pytest.skip("axe-core is not installed: npm ci (make test does it)")
    gan, _ = proxied
    context = browser.new_context(viewport={"width": 375, "height": 812}, bypass_csp=True, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(gan)
    wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")
    page.fill("#steps", "6")
    page.click("#render-walk")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 6')")
    page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 375
    small = page.evaluate("""() => [...document.querySelectorAll('button, input, select, a[href], [tabindex]')]
        .filter((e) => e.offsetParent !== null)
        .map((e) => [e.id || e.getAttribute('aria-label') || e.outerHTML.slice(0, 60), e.getBoundingClientRect()])
        .filter(([, r]) => r.width < 24 || r.height < 24).map(([name, r]) => `${name} ${r.width}x${r.height}`)""")
    assert not small, small
    page.add_script_tag(path=str(AXE))
    results = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
    serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in results["violations"]
               if v["impact"] in ("serious", "critical")]
    assert not serious, serious

    # Keyboard alone: type a seed and press Enter; open a tile with Enter; close the dialog with Escape.
    page.focus("#seed")
    page.keyboard.press("Control+A")
    page.keyboard.type("21")
    page.keyboard.press("Enter")
    wait_caption(page, "16 images · seeds 21–36 · every class in turn · ψ 1")
    for selector, key, then in [
        ("#class", "ArrowDown", "document.querySelector('#grid-caption').textContent.includes('T-shirt/top')"),
        ("#grid .tile:nth-child(1) button", "Enter", "document.querySelector('#lightbox').open"),
        ("#lightbox-close", "Escape", "!document.querySelector('#lightbox').open"),
        ("#walk-slider", "ArrowRight", "document.querySelector('#walk-label').textContent.startsWith('frame 2 / 6')"),
        ("#psi-range", "ArrowLeft", "document.querySelector('#grid-caption').textContent.endsWith('ψ 0.95')"),
    ]:
        page.focus(selector)
        page.keyboard.press(key)
        page.wait_for_function(f"() => {then}")
    # Tab reaches every control.
    page.evaluate("() => document.activeElement.blur()")
    reached = set()
    for _ in range(70):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("() => document.activeElement.id"))
    controls = {"model", "seed", "random", "n", "class", "psi-range", "psi", "generate", "seed-a", "seed-b", "steps",
                "walk-class", "render-walk", "download-grid", "copy-command", "copy-link", "play", "walk-slider",
                "download-walk", "copy-walk-command", "copy-walk-link"}
    assert controls <= reached, controls - reached
    context.close()

"""distgan-serve's page in a real browser: Debian's chromium (never a downloaded one) driven by Playwright.

Each test fails on any console error or page error, and on any request to a host other than
the server (every request is intercepted: others are recorded and aborted). The one console
error allowed is the browser's own "Failed to load resource ... 400" line for a bad input the
test typed on purpose, checked against the 400 responses it saw. Screenshots go to the test's
tmp dir.
"""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
LOAD_ERROR_400 = "Failed to load resource: the server responded with a status of 400 (Bad Request)"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dev extra installs playwright")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield browser
        browser.close()


class Watched:
    """A page with everything that must not happen recorded: console and page errors, foreign requests."""

    def __init__(self, browser, origin: str, shots: Path):
        self.origin, self.shots = origin, shots
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.foreign: list[str] = []
        self.bad_responses: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        self.page.on("response", lambda r: self.bad_responses.append(r.url) if r.status >= 400 else None)

    def _route(self, route) -> None:
        url = route.request.url
        if url == self.origin or url.startswith(self.origin + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)

    def check(self, typed: tuple[str, ...] = ()) -> None:
        """Nothing went wrong but the 400s for the bad inputs the test typed (`typed`: a query part of each), and
        the browser's console line for each of them."""
        assert not self.foreign, f"requests to other hosts: {self.foreign}"
        assert not self.page_errors, self.page_errors
        assert all("/api/" in url and any(t in url for t in typed) for url in self.bad_responses), self.bad_responses
        assert all(any(t in url for url in self.bad_responses) for t in typed), (typed, self.bad_responses)
        unexpected = [m for m in self.console_errors if m != LOAD_ERROR_400]
        assert not unexpected, f"console errors: {unexpected}"
        assert len(self.console_errors) == len(self.bad_responses), self.console_errors


@pytest.fixture
def watched(browser, served, tmp_path):
    url, _ = served
    w = Watched(browser, url, tmp_path)
    w.page.goto(url + "/")
    yield w
    w.context.close()


def api_images(url: str, **params) -> np.ndarray:
    response = httpx.get(f"{url}/api/sample", params={**params, "format": "npy"}, timeout=60)
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def decode(data_urls: list[str | None]) -> np.ndarray:
    """PNG data: URLs (lossless) -> uint8 RGB [n, H, W, 3]."""
    assert data_urls and all(u is not None for u in data_urls), "an image of the grid is not decoded"
    return np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).convert("RGB"))
                     for u in data_urls])


def tiles(page) -> np.ndarray:
    """The grid's images as shown: every <img> decoded (naturalWidth > 0), its pixels read back."""
    return decode(page.evaluate("""() => [...document.querySelectorAll('#grid img')].map((img) => {
        if (!img.complete || img.naturalWidth === 0) return null;
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        c.getContext('2d').drawImage(img, 0, 0);
        return c.toDataURL('image/png');
    })"""))


def as_rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def canvas_pixels(page, selector: str) -> np.ndarray:
    return decode([page.evaluate("(s) => document.querySelector(s).toDataURL('image/png')", selector)])[0]


def wait_caption(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#grid-caption').textContent === t", arg=text)


def download(page, button: str, tmp: Path) -> tuple[bytes, str]:
    with page.expect_download() as info:
        page.click(button)
    path = tmp / info.value.suggested_filename
    info.value.save_as(path)
    return path.read_bytes(), info.value.suggested_filename


def test_explore_a_conditional_model(watched, served, serve_models, tmp_path):
    url, _ = served
    page = watched.page
    wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")
    facts = page.inner_text("#model-facts")
    for fact in ("synthetic", "dcgan28, nz 16", "28 × 28 grayscale", "Training step\n7", "T-shirt/top, Trouser",
                 "fashion28.onnx"):
        assert fact in facts, (fact, facts)
    assert page.is_hidden("#model-pick") is False  # two models: the picker shows

    # A grid: seed, size, class; every image decoded and equal to the API's pixels.
    page.fill("#seed", "5")
    page.fill("#n", "6")
    page.select_option("#class", label="Sandal")
    page.click("#generate")
    wait_caption(page, "6 images · seeds 5–10 · Sandal · ψ 1")
    shown = tiles(page)
    assert shown.shape == (6, 28, 28, 3)
    assert np.array_equal(shown, as_rgb(api_images(url, seed=5, n=6, **{"class": "Sandal"})))
    watched.shot("1-grid")

    # Seed, class and psi each change the images.
    page.fill("#seed", "6")
    page.press("#seed", "Enter")
    wait_caption(page, "6 images · seeds 6–11 · Sandal · ψ 1")
    by_seed = tiles(page)
    assert np.array_equal(by_seed[0], shown[1]) and not np.array_equal(by_seed, shown)  # image i is seed + i
    page.select_option("#class", label="Trouser")
    wait_caption(page, "6 images · seeds 6–11 · Trouser · ψ 1")
    by_class = tiles(page)
    assert not np.array_equal(by_class, by_seed)
    page.fill("#psi-range", "0.3")
    wait_caption(page, "6 images · seeds 6–11 · Trouser · ψ 0.3")
    by_psi = tiles(page)
    assert not np.array_equal(by_psi, by_class)
    assert np.array_equal(by_psi, as_rgb(api_images(url, seed=6, n=6, psi=0.3, **{"class": "Trouser"})))
    sample = httpx.get(f"{url}/api/sample", params={"seed": 6, "n": 6, "class": "Trouser", "psi": 0.3})
    command = page.inner_text("#command")
    assert command == httpx.get(f"{url}/api/sample", params={"seed": 6, "n": 6, "class": "Trouser", "psi": 0.3,
                                                             "format": "json"}).json()["command"]
    assert command.startswith(f"{sys.executable} -m distgan.sample --onnx {serve_models['cond']} --seed 6 --n 6 "
                              f"--class Trouser --psi 0.3")
    page.click("#copy-command")
    page.wait_for_function("() => document.querySelector('#status').textContent === 'command copied'")
    assert page.evaluate("() => navigator.clipboard.readText()") == command

    # The grid as a PNG: the server's bytes, named by model hash, seeds, class and psi.
    grid_png, grid_name = download(page, "#download-grid", tmp_path)
    assert grid_png == sample.content and grid_name == sample.headers["x-distgan-filename"]

    # One image enlarged and downloaded: seed 7 (the second tile), its PNG text naming what made it.
    page.click("#grid .tile:nth-child(2) button")
    page.wait_for_selector("#lightbox[open]")
    page.wait_for_selector("#lightbox-download:not([disabled])")
    assert page.inner_text("#lightbox-caption") == "seed 7 · Trouser · ψ 0.3"
    watched.shot("2-enlarged")
    one_png, one_name = download(page, "#lightbox-download", tmp_path)
    expected = httpx.get(f"{url}/api/sample", params={"seed": 7, "class": "Trouser", "psi": 0.3})
    assert one_png == expected.content and one_name == expected.headers["x-distgan-filename"]
    assert re.fullmatch(r"[0-9a-f]{12}_seed7_trouser_psi0\.3\.png", one_name), one_name
    text = Image.open(io.BytesIO(one_png)).text
    assert (text["distgan.seed"], text["distgan.class"], text["distgan.psi"]) == ("7", "Trouser", "0.3")
    page.click("#lightbox-close")

    # The walk: frames rendered in one request; the slider's ends are the two seeds' images.
    page.fill("#psi", "1")
    page.press("#psi", "Enter")
    wait_caption(page, "6 images · seeds 6–11 · Trouser · ψ 1")
    good = tiles(page)
    page.fill("#seed-a", "5")
    page.fill("#seed-b", "9")
    page.fill("#steps", "8")
    page.select_option("#walk-class", label="Sandal")
    page.click("#render-walk")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 8')")
    first = canvas_pixels(page, "#walk-canvas")
    scale = first.shape[0] // 28
    ends = [as_rgb(api_images(url, seed=s, **{"class": "Sandal"}))[0] for s in (5, 9)]
    assert np.array_equal(first[::scale, ::scale], ends[0])
    page.fill("#walk-slider", "7")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 8 / 8')")
    assert np.array_equal(canvas_pixels(page, "#walk-canvas")[::scale, ::scale], ends[1])
    page.fill("#walk-slider", "3")
    middle = canvas_pixels(page, "#walk-canvas")[::scale, ::scale]
    assert not np.array_equal(middle, ends[0]) and not np.array_equal(middle, ends[1])
    page.click("#play")
    page.wait_for_function("() => !document.querySelector('#walk-label').textContent.startsWith('frame 4 / 8')")
    page.click("#play")  # pause
    watched.shot("3-walk")

    # Bad input: the server's message inline next to the field, nothing else breaks.
    page.fill("#seed", "-3")
    page.click("#generate")
    page.wait_for_selector("#seed-error:not([hidden])")
    assert page.inner_text("#seed-error") == "seed: -3 is out of range; valid: 0..4294967295"
    assert page.get_attribute("#seed", "aria-invalid") == "true"
    # The grid it did not replace: dimmed, with the reason.
    assert "stale" in page.get_attribute("#grid", "class")
    assert page.inner_text("#grid-stale") == "not updated: seed: -3 is out of range; valid: 0..4294967295"
    page.fill("#seed", "6")  # fixing the value clears its message
    assert page.is_hidden("#seed-error") and page.get_attribute("#seed", "aria-invalid") is None
    page.fill("#psi", "nan")
    page.press("#psi", "Enter")
    page.wait_for_selector("#psi-error:not([hidden])")
    assert "psi: 'nan' is not a finite number; valid: 0..2" == page.inner_text("#psi-error") and page.is_hidden("#seed-error")
    page.fill("#steps", "99")
    page.click("#render-walk")
    page.wait_for_selector("#steps-error:not([hidden])")
    assert page.inner_text("#steps-error") == "steps: 99 is out of range; valid: 2..12"
    watched.shot("4-errors")
    assert np.array_equal(tiles(page), good)  # the last good grid stays
    assert page.inner_text("#grid-caption") == "6 images · seeds 6–11 · Trouser · ψ 1"
    watched.check(typed=("seed=-3", "psi=nan", "steps=99"))


def test_an_unconditional_rgb_model_from_the_picker(watched, served):
    url, _ = served
    page = watched.page
    wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")
    page.select_option("#model", "faces64")
    wait_caption(page, "16 images · seeds 0–15 · ψ 1")
    assert page.is_hidden("#class-field") and page.is_hidden("#walk-class-field")
    facts = page.inner_text("#model-facts")
    assert "64 × 64 RGB" in facts and "none (unconditional)" in facts and "dcgan64" in facts
    shown = tiles(page)
    assert shown.shape == (16, 64, 64, 3)
    assert np.array_equal(shown, api_images(url, model="faces64", n=16))
    page.click("#random")
    page.wait_for_function("() => !document.querySelector('#grid-caption').textContent.includes('seeds 0–15')")
    seed = int(page.input_value("#seed"))
    assert not np.array_equal(tiles(page), shown)
    assert np.array_equal(tiles(page)[0], api_images(url, model="faces64", seed=seed)[0])
    page.fill("#steps", "10")
    page.click("#render-walk")
    page.wait_for_function("() => document.querySelector('#walk-label').textContent.startsWith('frame 1 / 10')")
    watched.shot("5-rgb")
    watched.check()


@pytest.fixture(scope="module")
def pyramid_served(lapgan_model, serve_models, tmp_path_factory):
    """A server with a LAPGAN export (its stages as extra outputs) first and a model without stages."""
    from conftest import start_server, stop_server
    proc, url = start_server(tmp_path_factory.mktemp("pyramid-serve") / "server.log", lapgan_model,
                             serve_models["cond"], "--port", "0", "--threads", "1")
    yield url.rstrip("/")
    stop_server(proc)


def test_the_stages_card_shows_one_samples_pyramid(browser, pyramid_served, tmp_path):
    url = pyramid_served
    watched = Watched(browser, url, tmp_path)
    page = watched.page
    try:
        page.goto(url + "/")
        wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")
        assert page.is_visible("#stages-card") and "3 stages, coarse to fine" in page.inner_text("#stages-hint")
        page.select_option("#class", "Sandal")
        page.fill("#stages-seed", "5")
        page.click("#render-stages")
        page.wait_for_function("() => document.querySelector('#stages-caption').textContent === "
                               "'seed 5: 7×7 → 14×14 → 28×28'")
        page.wait_for_function("() => document.querySelector('#stages-image').naturalWidth > 0")
        shown = decode([page.evaluate("""() => {
            const img = document.querySelector('#stages-image');
            const c = document.createElement('canvas');
            c.width = img.naturalWidth; c.height = img.naturalHeight;
            c.getContext('2d').drawImage(img, 0, 0);
            return c.toDataURL('image/png');
        }""")])[0]
        response = httpx.get(f"{url}/api/stages", params={"seed": 5, "class": "Sandal", "format": "npy"}, timeout=60)
        stages = np.load(io.BytesIO(response.content), allow_pickle=False)[0]  # [3, 28, 28, 1], coarse to fine
        assert shown.shape == (28, 3 * 28, 3) and np.array_equal(shown, np.concatenate(as_rgb(stages), axis=1))
        assert np.array_equal(stages[-1], api_images(url, seed=5, **{"class": "Sandal"})[0])  # the last: the sample
        assert "--stages" in page.inner_text("#stages-command") and page.is_hidden("#stages-error")
        watched.shot("6-stages")
        page.fill("#stages-seed", "-1")
        page.click("#render-stages")
        page.wait_for_selector("#stages-error", state="visible")
        assert "seed" in page.inner_text("#stages-error")
        page.select_option("#model", "fashion28")  # a model without stages: no card
        page.wait_for_function("() => document.querySelector('#stages-card').hidden")
        watched.check(typed=("seed=-1",))
    finally:
        watched.context.close()

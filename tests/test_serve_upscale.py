"""distgan-serve with super-resolution models: POST /api/upscale through a real server and onnxruntime (the same
pixels as distgan-upscale), its refusals, SR-only and mixed catalogs."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import UPSCALE_LIMITS, run_env, start_server, stop_server
from test_serve_browser import Watched, browser, decode, wait_caption
from test_serve_proxy import AXE

pytestmark = pytest.mark.slow  # server processes
__all__ = ["browser"]  # the module-scoped Chromium fixture, shared with test_serve_browser


def png_of(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def photos(rng: np.random.Generator) -> dict[str, Image.Image]:
    """Odd sizes, RGB, RGBA, gray and a JPEG; the first is wider than distgan-upscale's 256-pixel tile."""
    yy, xx = np.mgrid[0:101, 0:300]
    smooth = (127 + 90 * np.sin(xx / 9.0) * np.cos(yy / 7.0))[..., None] + rng.normal(0, 25, (101, 300, 3))
    return {"wide.png": Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)),
            "alpha.png": Image.fromarray(rng.integers(0, 256, (33, 47, 4), dtype=np.uint8), "RGBA"),
            "gray.png": Image.fromarray(rng.integers(0, 256, (21, 19), dtype=np.uint8), "L"),
            "odd.jpg": Image.fromarray(rng.integers(0, 256, (17, 25, 3), dtype=np.uint8))}


def post(url: str, body: bytes, **params: str) -> httpx.Response:
    return httpx.post(f"{url}/api/upscale", params=params, content=body, timeout=120)


def test_upscale_is_distgan_upscale_through_onnxruntime(upscale_served, sr_model, tmp_path):
    """Each photo's SR PNG has exactly 2x its size and distgan-upscale's pixels for the same file (default tiles);
    the bicubic beside it is PIL's; the crop is the output's centre."""
    url, _ = upscale_served
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    files = photos(np.random.default_rng(3))
    for name, image in files.items():
        image.save(src / name)
    out.mkdir()
    for name in files:  # to PNG (lossless) whatever the input's format
        run = subprocess.run([sys.executable, "-m", "distgan.upscale", "--model", str(sr_model), str(src / name),
                              str(out / f"{name}.png")], env=run_env(), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
    for name, image in files.items():
        response = post(url, (src / name).read_bytes(), name=name)
        assert response.status_code == 200, response.text
        answer = response.json()
        width, height = image.size
        assert answer["input"] == {"width": width, "height": height, "format": "JPEG" if name.endswith("jpg")
                                   else "PNG"}
        sr, bicubic = decoded(answer["sr"]), decoded(answer["bicubic"])
        assert sr.size == bicubic.size == (2 * width, 2 * height) == (answer["output"]["width"],
                                                                      answer["output"]["height"])
        assert sr.mode == bicubic.mode == image.mode == answer["output"]["mode"]
        reference = Image.open(out / f"{name}.png")
        assert reference.mode == sr.mode and np.array_equal(np.asarray(sr), np.asarray(reference)), name
        want = Image.open(src / name).resize((2 * width, 2 * height), Image.Resampling.BICUBIC)
        if image.mode != "RGBA":
            assert np.array_equal(np.asarray(bicubic), np.asarray(want)), name
        assert not np.array_equal(np.asarray(sr), np.asarray(bicubic)), name
        crop = answer["crop"]
        assert crop["zoom"] == 4 and crop["width"] == min(64, 2 * width) and crop["height"] == min(64, 2 * height)
        assert (crop["x"], crop["y"]) == ((2 * width - crop["width"]) // 2, (2 * height - crop["height"]) // 2)
    assert answer["filename"] == "odd_x2.png" and answer["model"] == "photo_x2"


def test_every_refusal_is_json_naming_the_limit_or_field(upscale_served):
    url, _ = upscale_served
    photo = png_of(Image.new("RGB", (20, 10), "teal"))
    limit = UPSCALE_LIMITS["--max-upload-bytes"]
    noise = np.random.default_rng(0).integers(0, 256, (4 * limit,), dtype=np.uint8).tobytes()
    noisy = png_of(Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)))
    too_many = png_of(Image.new("RGB", (400, 200)))  # x2: 800x400 = 320,000 > 150,000 pixels, but a small file

    def chunks():  # no Content-Length: counted as it arrives
        for i in range(0, len(noise), 16384):
            yield noise[i:i + 16384]

    cases = [
        (post(url, noise), 413, "body", f"body: {len(noise):,} bytes; the limit is {limit:,} (--max-upload-bytes)"),
        (httpx.post(f"{url}/api/upscale", content=chunks(), timeout=60), 413, "body",
         f"the limit is {limit:,} (--max-upload-bytes)"),
        (post(url, too_many), 400, "image", "image: 400x200 upscales to 800x400 = 320,000 pixels; the limit is "
                                            "150,000 (--max-upscale-pixels)"),
        (post(url, b"GIF89a not really"), 400, "image",
         "image: not a PNG or JPEG image (17 bytes starting b'GIF89a n')"),
        (post(url, png_of(Image.new("RGB", (8, 8)), "GIF")), 400, "image", "not a PNG or JPEG image"),
        (post(url, noisy[:len(noisy) // 2]), 400, "image", "image: cannot decode the PNG"),
        (post(url, b""), 400, "image", "image: the request has no body"),
        (post(url, photo, model="nope"), 400, "model", "model: 'nope' is not served; valid: photo_x2"),
        (post(url, photo, model="fashion28"), 400, "model",
         "model: 'fashion28' is a generator, not a super-resolution model; valid: photo_x2"),
        (post(url, photo, seed="1"), 400, "seed", "seed: unknown parameter; valid: model, name"),
        (httpx.get(f"{url}/api/upscale"), 405, None, "method GET not allowed; use POST"),
        (httpx.get(f"{url}/api/sample", params={"model": "photo_x2"}), 400, "model",
         "model: 'photo_x2' is a super-resolution model: POST an image to api/upscale; generators: fashion28"),
        (httpx.post(f"{url}/api/sample", content=b"x"), 413, "body", "this API takes no request body"),
    ]
    for response, status, field, words in cases:
        assert response.status_code == status, (words, response.status_code, response.text)
        assert response.headers["content-type"] == "application/json", words
        assert response.json()["field"] == field and words in response.json()["error"], (words, response.json())
        assert "Traceback" not in response.text
    assert post(url, photo).status_code == 200  # the server is unharmed


def test_catalogs_sr_only_and_mixed(upscale_served, serve_models, sr_model, tmp_path):
    url, _ = upscale_served
    assert post(url, png_of(Image.new("RGB", (9, 7), "red"))).status_code == 200
    listing = httpx.get(f"{url}/api/models").json()
    assert [m["id"] for m in listing["models"]] == ["fashion28"]  # the generator page's list is unchanged
    (sr,) = listing["upscalers"]
    assert (sr["id"], sr["task"], sr["scale"], sr["family"], sr["step"], sr["mode"]) == \
           ("photo_x2", "super-resolution", 2, "srgan", 3, "RGB")
    assert listing["limits"]["max_upload_bytes"] == UPSCALE_LIMITS["--max-upload-bytes"]
    assert listing["limits"]["max_upscale_pixels"] == UPSCALE_LIMITS["--max-upscale-pixels"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok", "models": 2}
    assert httpx.get(f"{url}/api/sample", params={"seed": 3}).status_code == 200  # generators still draw
    maps = Path(f"/proc/{upscale_served[1].pid}/maps").read_text()  # after upscales too: still torch-free
    assert "libtorch" not in maps and "onnxruntime" in maps

    proc, only = start_server(tmp_path / "sr-only.log", sr_model, "--port", "0", "--threads", "1")
    try:
        log = (tmp_path / "sr-only.log").read_text()
        assert "model photo_x2: srgan, super-resolution x2 RGB, step 3" in log
        listing = httpx.get(only + "api/models").json()
        assert listing["models"] == [] and [m["id"] for m in listing["upscalers"]] == ["photo_x2"]
        assert httpx.get(only).status_code == 200
        refused = httpx.get(only + "api/sample")
        assert refused.status_code == 400, refused.text
        assert refused.json() == {"error": "model: no model given; no generator is served", "field": "model"}
        answer = httpx.post(only + "api/upscale", content=png_of(Image.new("RGB", (9, 7), "red")), timeout=60)
        assert answer.status_code == 200 and decoded(answer.json()["sr"]).size == (18, 14)
    finally:
        stop_server(proc)


def test_a_model_of_another_task_stops_it_naming_the_file(sr_model, tmp_path):
    import onnx

    other = onnx.load(str(sr_model))
    next(p for p in other.metadata_props if p.key == "distgan.task").value = "lapgan-level"
    onnx.save(other, str(tmp_path / "level.onnx"))
    run = subprocess.run([sys.executable, "-m", "distgan.serve.cli", str(tmp_path / "level.onnx"), "--port", "0"],
                         env=run_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == (f"distgan-serve: error: {tmp_path / 'level.onnx'}: a 'lapgan-level' model; "
                                  f"distgan-serve serves generators and 'super-resolution' models")


# --- the page's upscale card, in Debian's chromium -------------------------------------------------------------

READ_IMAGES = """(ids) => ids.map((id) => {
    const img = document.getElementById(id);
    if (!img.complete || img.naturalWidth === 0) return null;
    const c = document.createElement('canvas');
    c.width = img.naturalWidth; c.height = img.naturalHeight;
    c.getContext('2d').drawImage(img, 0, 0);
    return c.toDataURL('image/png');
})"""
VIEWS = ["upscale-bicubic", "upscale-sr", "upscale-crop"]


def shown_images(page) -> list[np.ndarray]:
    """The card's three images as decoded by the browser (RGB)."""
    urls = page.evaluate(READ_IMAGES, VIEWS)
    return [decode([u])[0] for u in urls]


def upload_and_wait(page, path: Path) -> None:
    page.set_input_files("#upscale-file", str(path))
    page.wait_for_function("(name) => document.querySelector('#upscale-caption').textContent.startsWith(name + ':')"
                           " && document.querySelector('#upscale-views').getAttribute('aria-busy') === 'false'"
                           " && [...document.querySelectorAll('#upscale-views img')].every((i) => i.naturalWidth > 0)",
                           arg=path.name)


def test_the_upscale_card_in_a_browser(browser, upscale_served, sr_model, tmp_path):
    """Beside a generator: upload a PNG, see bicubic | SR | the zoomed centre, the SR pixels distgan-upscale's,
    download it; a file that is not an image gets the server's message in the card; axe finds nothing serious."""
    url, _ = upscale_served
    rng = np.random.default_rng(5)
    photo = tmp_path / "photo.png"
    Image.fromarray(rng.integers(0, 256, (29, 37, 3), dtype=np.uint8)).save(photo)
    run = subprocess.run([sys.executable, "-m", "distgan.upscale", "--model", str(sr_model), str(photo),
                          str(tmp_path / "want.png")], env=run_env(), capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    want = np.asarray(Image.open(tmp_path / "want.png"))
    bicubic_want = np.asarray(Image.open(photo).resize((74, 58), Image.Resampling.BICUBIC))

    w = Watched(browser, url, tmp_path)
    page = w.page
    page.goto(url + "/")
    wait_caption(page, "16 images · seeds 0–15 · every class in turn · ψ 1")  # the generator page as before
    assert page.is_visible("#upscale-card") and page.is_visible("#sample-form")
    assert "at most 0.1 MB; the upscaled image at most 150,000 pixels" == page.inner_text("#upscale-hint")
    upload_and_wait(page, photo)
    assert page.inner_text("#upscale-caption") == "photo.png: 37 × 29 → 74 × 58"
    bicubic, sr, crop = shown_images(page)
    assert bicubic.shape == sr.shape == (58, 74, 3)
    assert np.array_equal(sr, want) and np.array_equal(bicubic, bicubic_want)
    # The centre 64 x 58 of both, x4 nearest neighbour, 8 px apart.
    assert crop.shape == (58 * 4, 2 * 64 * 4 + 8, 3)
    assert np.array_equal(crop[::4, :256:4], bicubic_want[:, 5:69]) and np.array_equal(crop[::4, 264::4], want[:, 5:69])
    w.shot("upscale")
    with page.expect_download() as info:
        page.click("#upscale-download")
    assert info.value.suggested_filename == "photo_x2.png"
    info.value.save_as(tmp_path / "downloaded.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "downloaded.png")), want)

    # Not an image: the server's message in the card, the last good images kept.
    (tmp_path / "notes.png").write_text("not a picture")
    page.set_input_files("#upscale-file", str(tmp_path / "notes.png"))
    page.wait_for_selector("#upscale-error:not([hidden])")
    assert page.inner_text("#upscale-error").startswith("image: not a PNG or JPEG image")
    assert page.get_attribute("#upscale-file", "aria-invalid") == "true"
    assert np.array_equal(shown_images(page)[1], want)
    w.check(typed=("api/upscale",))
    w.context.close()

    # An SR-only server: the page is the card alone, and it passes axe-core with results shown (bypass_csp: axe is
    # added as a script tag, as in test_serve_proxy).
    proc, only = start_server(tmp_path / "sr-only.log", sr_model, "--port", "0", "--threads", "1")
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(only)
        page.wait_for_selector("#upscale-card:not([hidden])")
        assert page.is_hidden("#sample-form") and page.is_hidden("#grid")
        upload_and_wait(page, photo)
        assert np.array_equal(shown_images(page)[1], want)
        page.screenshot(path=str(tmp_path / "sr-only.png"), full_page=True)
        if AXE.is_file():
            page.add_script_tag(path=str(AXE))
            results = page.evaluate("() => axe.run(document, { resultTypes: ['violations'] })")
            serious = [(v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3]) for v in results["violations"]
                       if v["impact"] in ("serious", "critical")]
            assert not serious, serious
        assert not errors, errors
        context.close()
    finally:
        stop_server(proc)


def test_upscale_behind_nginx_under_a_prefix(browser, sr_model, tmp_path):
    """The README's nginx block in front of an SR-only server with the default limits: the page at /gan/ uploads
    (relative URLs), and a body just over --max-upload-bytes reaches the server, whose JSON 413 names the flag."""
    from distgan.serve.proxy import NGINX, Nginx

    if not Path(NGINX).is_file():
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    proc, url = start_server(tmp_path / "server.log", sr_model, "--port", "0", "--threads", "1")
    try:
        with Nginx(tmp_path / "nginx", url.removeprefix("http://").rstrip("/")) as nginx:
            gan = nginx.url
            photo = tmp_path / "photo.jpg"
            Image.fromarray(np.random.default_rng(2).integers(0, 256, (19, 23, 3), dtype=np.uint8)).save(photo)
            w = Watched(browser, gan.split("/gan/")[0], tmp_path)
            w.page.goto(gan)
            upload_and_wait(w.page, photo)
            assert shown_images(w.page)[1].shape == (38, 46, 3)
            w.check()
            w.context.close()
            over = httpx.post(gan + "api/upscale", content=b"\0" * 20_000_001, timeout=120)
            assert over.status_code == 413 and over.json() == {
                "error": "body: 20,000,001 bytes; the limit is 20,000,000 (--max-upload-bytes)", "field": "body"}
    finally:
        stop_server(proc)

"""distgan-export --web's site in a real browser: Debian's chromium driven by Playwright, the site served by
`python -m http.server` under a sub-path (/pub/site/). No request may leave that server.

Tolerance for "the same pixels": the browser's latents are numpy's (test_export_web.py), so only the model's
arithmetic differs: onnxruntime-web's WASM kernels against native onnxruntime's (other instruction sets and
summation orders: float32 results apart by ~1e-6). A grey level is 1/127.5 of the output range, so such a
difference flips a rounding only where a pixel sits within ~1e-6 of a half level: we allow 1 grey level on at
most 1% of the pixels and none above 1. A walk's inner frames add the slerp's float64-vs-float32 difference
(~1e-7 on z), within the same bound.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from PIL import Image

from distgan.export.web import default_ort_dir, export_web
from distgan.runtime import PREFIX, REQUIRED_KEYS, grid, latents, to_uint8_nhwc
from conftest import run_env, stop_server
from test_serve_browser import browser  # noqa: F401 (the fixture: Debian's chromium through Playwright)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not (default_ort_dir() / "ort.webgpu.min.js").is_file(),
                                                   reason="onnxruntime-web is not installed (npm ci)")]


NUM_WS = 4


def style_model(path: Path) -> Path:
    """A style-based model's interface in a tiny graph: images = tanh(psi * (mix_layer < num_ws ? z2 : z)) as
    1x4x4 images, nz 16: enough to see that the page feeds z as drawn, psi, z2 and mix_layer."""
    floats = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("Constant", [], ["num_ws"], value=helper.make_tensor("v", TensorProto.INT64, [], [NUM_WS])),
        helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [1], [1])),
        helper.make_node("Constant", [], ["shape"], value=helper.make_tensor("s", TensorProto.INT64, [4], [-1, 1, 4, 4])),
        helper.make_node("Less", ["mix_layer", "num_ws"], ["mixed"]),
        helper.make_node("Unsqueeze", ["mixed", "axis"], ["mixed2"]),
        helper.make_node("Where", ["mixed2", "z2", "z"], ["w"]),
        helper.make_node("Unsqueeze", ["psi", "axis"], ["psi2"]),
        helper.make_node("Mul", ["w", "psi2"], ["wp"]),
        helper.make_node("Reshape", ["wp", "shape"], ["flat"]),
        helper.make_node("Tanh", ["flat"], ["images"]),
    ]
    graph = helper.make_graph(nodes, "style", [floats("z", ["B", 16]), floats("psi", ["B"]), floats("z2", ["B", 16]),
                                               helper.make_tensor_value_info("mix_layer", TensorProto.INT64, ["B"])],
                              [floats("images", ["B", 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    values = {"family": "style-test", "nz": "16", "channels": "1", "height": "4", "width": "4", "num_classes": "0",
              "class_names": "[]", "output_range": "-1,1", "output_layout": "NCHW", "output_dtype": "float32",
              "step": "0", "dataset": "synthetic", "distgan_version": "test", "config_hash": "-",
              "quantization": "none", "num_ws": str(NUM_WS)}
    assert set(REQUIRED_KEYS) <= set(values)
    helper.set_model_props(model, {PREFIX + k: v for k, v in values.items()})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def sites(serve_models, tmp_path_factory):
    """/pub/site (the conditional 28x28 model), /pub/rgb (the 64x64 RGB one), /pub/corrupt (its model replaced by
    garbage), /pub/unloadable (the same with site.json's sha256 of the garbage), /pub/style (style inputs), served
    by python -m http.server; yields the origin and the folder."""
    root = tmp_path_factory.mktemp("web") / "pub"
    export_web(root / "site", serve_models["cond"])
    export_web(root / "rgb", serve_models["rgb"])
    export_web(root / "style", style_model(root.parent / "style.onnx"))
    garbage = b"\x08\x07garbage" * 100
    shutil.copytree(root / "rgb", root / "corrupt")
    (root / "corrupt" / "model.onnx").write_bytes(garbage)
    shutil.copytree(root / "corrupt", root / "unloadable")  # site.json agrees with the garbage: onnxruntime says no
    config = json.loads((root / "unloadable" / "site.json").read_text())
    (root / "unloadable" / "site.json").write_text(json.dumps({**config, "sha256": hashlib.sha256(garbage).hexdigest()}))
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"], cwd=root.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=run_env())
    line = proc.stdout.readline().decode()  # "Serving HTTP on 127.0.0.1 port N (http://127.0.0.1:N/) ..."
    port = int(line.split(" port ")[1].split()[0])
    yield f"http://127.0.0.1:{port}", root
    stop_server(proc)


class Site:
    """A page of the site with console errors, page errors and requests to other hosts recorded."""

    def __init__(self, browser, origin: str, path: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
        self.foreign, self.errors = [], []
        self.context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(origin + "/")
                           else (self.foreign.append(route.request.url), route.abort()))
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(origin + path)

    def drawn(self, count: int) -> None:
        """Wait until the page has finished its `count`th drawing."""
        self.page.wait_for_function(f"Number(document.body.dataset.drawn || 0) >= {count}", timeout=60_000)

    def download(self, tmp_path: Path) -> Path:
        with self.page.expect_download() as info:
            self.page.click("#download")
        path = tmp_path / info.value.suggested_filename
        info.value.save_as(path)
        return path

    def close(self) -> None:
        assert not self.foreign, self.foreign
        self.context.close()


def sample_png(model: Path, out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, "-m", "distgan.sample", "--onnx", str(model), *args, "--grid", str(out)],
                   check=True, env=run_env(OMP_NUM_THREADS="1"), capture_output=True)
    return out


def assert_same_png(browser_png: Path, python_png: Path) -> None:
    """Same size, same text chunks (but the model's path on disk, which a visitor's browser cannot know), pixels
    within the module's stated tolerance."""
    got, want = Image.open(browser_png), Image.open(python_png)
    assert got.text == {k: v for k, v in want.text.items() if k != "distgan.model_file"}
    a = np.asarray(got.convert(want.mode), np.int16)
    b = np.asarray(want, np.int16)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (diff.max(), (diff > 0).mean())


def test_grid_and_walk_match_distgan_sample(browser, sites, serve_models, tmp_path):
    """A URL's settings draw on load; the downloaded PNG is distgan-sample's for the same arguments (file name,
    text chunks, pixels within tolerance); the command shown is those arguments."""
    site = Site(browser, sites[0], "/pub/site/?seed=3&n=9&class=all&psi=0.7")
    site.drawn(1)
    assert site.page.inner_text("#backend").startswith("WASM")
    command = site.page.inner_text("#command")
    got = site.download(tmp_path)
    assert command == f"distgan-sample --onnx fashion28.onnx --seed 3 --n 9 --class all --psi 0.7 --grid {got.name}"
    assert_same_png(got, sample_png(serve_models["cond"], tmp_path / "want.png", "--seed", "3", "--n", "9",
                                    "--class", "all", "--psi", "0.7"))
    # the walk: mode, seed b, frames; the URL records them
    site.page.click("#mode-walk")
    site.page.fill("#seed", "5")
    site.page.fill("#n", "2")
    site.page.fill("#seed-b", "11")
    site.page.fill("#steps", "6")
    site.page.select_option("#class", "1")  # a change of class draws at once
    site.drawn(2)
    site.page.fill("#steps", "1")
    site.page.click("#generate")
    assert site.page.is_visible("#steps-error") and "valid: 2..32" in site.page.inner_text("#steps-error")
    site.page.fill("#steps", "6")
    site.page.click("#generate")
    site.drawn(3)
    assert "mode=walk" in site.page.url and "seed_b=11" in site.page.url and "steps=6" in site.page.url
    walk = site.download(tmp_path)
    assert_same_png(walk, sample_png(serve_models["cond"], tmp_path / "walk.png", "--seed", "5", "--n", "2",
                                     "--interpolate", "11", "--steps", "6", "--class", "Trouser", "--psi", "0.7"))
    assert site.errors == [] and "Trouser" in site.page.inner_text("#caption")
    site.close()


def test_controls_and_url_state(browser, sites, serve_models, tmp_path):
    """RGB model without classes: the class field is hidden; psi slider, seed, n, Random, Copy command, a bad
    value's message beside its control, and a reload of the shared URL drawing the same settings."""
    site = Site(browser, sites[0], "/pub/rgb/")
    site.drawn(1)  # no settings in the URL: the form's defaults draw
    page = site.page
    assert page.is_hidden("#class-field") and page.is_hidden("#mix-fields")
    page.fill("#seed", "-1")
    page.click("#generate")
    assert page.is_visible("#seed-error") and "out of range" in page.inner_text("#seed-error")
    assert page.get_attribute("#seed", "aria-invalid") == "true"
    page.fill("#seed", str(2**32 - 2))
    page.fill("#n", "4")
    page.click("#generate")
    assert "n = 4 images use seeds up to seed + 3" in page.inner_text("#seed-error")
    page.fill("#seed", "40")
    page.fill("#n", "4")
    page.locator("#psi-range").fill("0.5")  # input + change: the text box follows, the page draws
    site.drawn(2)
    assert page.input_value("#psi") == "0.5" and page.is_hidden("#seed-error")
    assert "seed=40" in page.url and "psi=0.5" in page.url
    assert_same_png(site.download(tmp_path), sample_png(serve_models["rgb"], tmp_path / "rgb.png", "--seed", "40",
                                                        "--n", "4", "--psi", "0.5"))
    page.fill("#psi", "1.5")  # the text box: the slider follows
    page.dispatch_event("#psi", "change")
    assert page.input_value("#psi-range") == "1.5"
    page.fill("#psi", "0.5")
    page.dispatch_event("#psi", "change")
    page.click("#copy-command")
    page.wait_for_function("document.getElementById('status').textContent === 'command copied'")
    assert page.evaluate("navigator.clipboard.readText()") == page.inner_text("#command")
    shared = page.url
    page.click("#random")
    site.drawn(3)
    assert page.input_value("#seed") != "40"
    again = Site(browser, sites[0], shared.split(sites[0], 1)[1])
    again.drawn(1)
    assert again.page.input_value("#seed") == "40" and again.page.input_value("#psi") == "0.5"
    again.page.screenshot(path=str(tmp_path / "rgb-page.png"), full_page=True)
    assert site.errors == [] and again.errors == []
    site.close()
    again.close()


def test_corrupt_model_and_file_url(browser, sites):
    """A replaced model.onnx: the page says so by its controls and draws nothing; file:// says why it cannot run."""
    for path, says in (("/pub/corrupt/", "model.onnx is not the exported model (sha256 "),
                       ("/pub/unloadable/", "onnxruntime-web cannot load model.onnx (")):
        site = Site(browser, sites[0], path)
        site.page.wait_for_selector("#fatal:not([hidden])", timeout=60_000)
        assert says in site.page.inner_text("#fatal") and "export the site again" in site.page.inner_text("#fatal")
        assert site.page.is_disabled("#generate") and site.page.inner_text("#backend") == "none"
        assert site.page.inner_text("#status") == "cannot draw"
        site.close()
    context = browser.new_context()
    page = context.new_page()
    page.goto((sites[1] / "rgb" / "index.html").as_uri())
    assert page.is_visible("#file-banner") and "python -m http.server" in page.inner_text("#file-banner")
    assert page.inner_text("#status") == "not served over HTTP"
    context.close()


def test_style_mixing_inputs(browser, sites, tmp_path):
    """A model with psi, z2 and mix_layer inputs: the mixing fields show (not in a walk); z goes in as drawn with
    psi beside it, z2 from mix seed + i, mix_layer as asked (num_ws when not mixing); a bad layer is refused."""
    origin, root = sites
    site = Site(browser, origin, "/pub/style/?seed=7&n=4&psi=0.8&mix_seed=100&mix_layer=0")
    site.drawn(1)
    page = site.page
    session = ort.InferenceSession(str(root.parent / "style.onnx"), providers=["CPUExecutionProvider"])
    seeds = np.arange(7, 11)

    def expected(z2: np.ndarray, layer: int) -> np.ndarray:
        feeds = {"z": latents(seeds, 16), "psi": np.full(4, 0.8, np.float32), "z2": z2,
                 "mix_layer": np.full(4, layer, np.int64)}
        return grid(to_uint8_nhwc(session.run(["images"], feeds)[0]), 2)[..., 0]

    mixed = site.download(tmp_path)
    assert mixed.name.endswith("_seed7-10_mix100-at0_psi0.8.png")
    assert Image.open(mixed).text["distgan.mix_seed"] == "100"
    got = np.asarray(Image.open(mixed).convert("L"), np.int16)
    assert np.abs(got - expected(latents(seeds + 93, 16), 0)).max() <= 1
    assert "--mix-seed 100 --mix-layer 0" in page.inner_text("#command")
    page.fill("#mix-layer", str(NUM_WS + 1))
    page.click("#generate")
    assert page.is_visible("#mix_layer-error") and f"0..{NUM_WS}" in page.inner_text("#mix_layer-error")
    page.fill("#mix-seed", "")
    page.fill("#mix-layer", "")
    page.click("#generate")
    site.drawn(2)
    plain = np.asarray(Image.open(site.download(tmp_path)).convert("L"), np.int16)
    assert np.abs(plain - expected(latents(seeds, 16), NUM_WS)).max() <= 1
    assert "mix_seed" not in page.url
    page.click("#mode-walk")
    assert page.is_hidden("#mix-fields")
    assert site.errors == []
    site.close()

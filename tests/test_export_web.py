"""distgan-export --web without a browser: the JS latent port against numpy (under node), the JS request plan
against OnnxGenerator's, the site's files, the CDN's integrity hashes, and the models a page refuses."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from distgan.export.cli import main as export_main
from distgan.export.web import (ORT_SRI, PAGE_FILES, STATIC, WebExportError, default_ort_dir, export_web, sri)
from distgan.runtime import PREFIX, OnnxGenerator, latents
from conftest import generator_dir

NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (apt-get install nodejs; .ci/run does)")
needs_ort = pytest.mark.skipif(not (default_ort_dir() / "ort.webgpu.min.js").is_file(),
                               reason="onnxruntime-web is not installed (npm ci at the repository root)")


def run_node(tmp_path: Path, script: str, payload: object) -> bytes:
    """`script` as an ES module beside copies of the page's modules, `payload` as JSON on its stdin."""
    folder = tmp_path / "node"
    if not folder.is_dir():
        shutil.copytree(STATIC, folder)
        (folder / "package.json").write_text('{"type": "module"}')
    (folder / "main.js").write_text(script)
    done = subprocess.run([NODE, str(folder / "main.js")], input=json.dumps(payload).encode(), capture_output=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


LATENTS_JS = """
import { readFileSync } from "node:fs";
import { latent } from "./latents.js";
const { seeds, nz } = JSON.parse(readFileSync(0, "utf8"));
const out = new Float32Array(seeds.length * nz);
seeds.forEach((s, i) => out.set(latent(s, nz), i * nz));
process.stdout.write(Buffer.from(out.buffer));
"""


@needs_node
def test_latents_match_numpy_bit_for_bit(tmp_path):
    """6,100 seeds (0.., the top of the range, random ones) x nz 100, and odd nz: the same float32 bits as
    distgan.runtime.latents, except where numpy's ziggurat takes its tail branch (|z| > 3.654, about 1 draw in
    4,000) and glibc's log1pf, which is not correctly rounded, differs from the correctly rounded log1p by one
    float32 step: those elements may differ by one ulp, nothing else may."""
    seeds = [*range(4000), *range(2**32 - 100, 2**32),
             *np.random.default_rng(7).integers(0, 2**32, 2000).tolist()]
    for nz, chosen in ((100, seeds), (1, seeds[:50]), (7, seeds[:50]), (512, seeds[:200])):
        got = np.frombuffer(run_node(tmp_path, LATENTS_JS, {"seeds": chosen, "nz": nz}), np.float32)
        want = latents(np.array(chosen), nz).reshape(-1)
        differ = np.nonzero(got.view(np.uint32) != want.view(np.uint32))[0]
        assert len(differ) <= len(want) // 100_000 + 1, (nz, len(differ))
        assert (np.abs(want[differ]) > 3.654).all(), want[differ]
        ulps = np.abs(got[differ].view(np.int32).astype(np.int64) - want[differ].view(np.int32))
        assert (ulps == 1).all(), ulps


PLAN_JS = """
import { readFileSync } from "node:fs";
import { plan } from "./draw.js";
const { model, requests } = JSON.parse(readFileSync(0, "utf8"));
const out = requests.map((r) => {
  const p = plan(model, r);
  return { z: p.z.map((v) => Array.from(v)), labels: p.labels, columns: p.columns, text: p.text, name: p.name,
           args: p.args };
});
process.stdout.write(JSON.stringify(out));
"""


@needs_node
def test_plan_matches_runtime_drawings(tmp_path, serve_models):
    """The page's latents, labels, columns, PNG text, file name and distgan-sample arguments for samples (each
    class in turn, one class, all classes) and a walk: those of OnnxGenerator.sample / .interpolate (a walk's
    inner frames within 1e-5: float64 slerp here, numpy's float32 one there; its end frames exact)."""
    model = OnnxGenerator(serve_models["cond"])
    page_model = {"classes": list(model.info.class_names), "nz": model.info.nz, "sha256": model.sha256,
                  "inputs": ["z", "labels"], "file": model.path.name}
    requests = [
        {"mode": "sample", "seed": 3, "n": 9, "klass": "", "psi": 1},
        {"mode": "sample", "seed": 0, "n": 1, "klass": "4", "psi": 0.7},
        {"mode": "sample", "seed": 2**32 - 3, "n": 3, "klass": "all", "psi": 2},
        {"mode": "walk", "seed": 5, "n": 2, "klass": "1", "psi": 0.5, "seedB": 11, "steps": 4},
    ]
    expected = [model.sample(3, 9), model.sample(0, 1, "4", 0.7), model.sample(2**32 - 3, 3, "all", 2.0),
                model.interpolate(5, 11, 4, "1", 0.5, 2)]
    got = json.loads(run_node(tmp_path, PLAN_JS, {"model": page_model, "requests": requests}))
    for page, drawing in zip(got, expected):
        # Every setting but where the model lies: a visitor's browser cannot know the path distgan-sample records
        # (`distgan-sample --from-png` then takes --onnx MODEL, and checks the sha256 the page does write).
        local = {k: v for k, v in drawing.text.items() if k != "distgan.model_file"}
        assert (page["text"], page["name"], tuple(page["args"])) == (local, drawing.name, drawing.args)
        assert page["labels"] == drawing.labels.tolist() and page["columns"] == drawing.columns
        z = np.array(page["z"], np.float32)
        np.testing.assert_allclose(z, drawing.z, atol=1e-5)
    walk = np.array(got[-1]["z"], np.float32)
    assert (walk[[0, 3, 4, 7]] == expected[-1].z[[0, 3, 4, 7]]).all()
    for page, drawing in zip(got[:3], expected[:3]):
        assert (np.array(page["z"], np.float32) == drawing.z).all()


@needs_ort
def test_site_files_and_local_ort(tmp_path, serve_models, capsys):
    """The CLI writes the page, the model byte for byte, site.json and onnxruntime-web; every URL is relative."""
    out = tmp_path / "site"
    assert export_main(["--web", str(out), str(serve_models["cond"])]) == 0
    assert f"wrote {out}/" in capsys.readouterr().out
    for name in (*PAGE_FILES, "serve.css", "icon.svg", "index.html", "model.onnx", "site.json", "ort/ort.webgpu.min.js"):
        assert (out / name).is_file(), name
    assert (out / "model.onnx").read_bytes() == serve_models["cond"].read_bytes()
    config = json.loads((out / "site.json").read_text())
    assert config["inputs"] == ["z", "labels"] and config["classes"][0] == "T-shirt/top"
    assert config["ort"]["wasm_integrity"] == sri(out / "ort" / "ort-wasm-simd-threaded.asyncify.wasm")
    page = (out / "index.html").read_text()
    assert 'src="./ort/ort.webgpu.min.js"' in page and 'href="/' not in page and 'src="/' not in page
    # a second export replaces a previous one; a folder that is not one is refused
    assert export_main(["--web", str(out), str(serve_models["rgb"])]) == 0
    assert json.loads((out / "site.json").read_text())["channels"] == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(WebExportError, match="not an empty folder or a previous --web export"):
        export_web(other, serve_models["cond"])


def test_cdn_output_has_integrity(tmp_path, serve_models):
    """--ort-web cdn: nothing copied; the pinned script tag, the import map and site.json carry sha384 hashes."""
    site = export_web(tmp_path / "site", serve_models["rgb"], ort="cdn")
    assert not (site.path / "ort").exists()
    page = (site.path / "index.html").read_text()
    assert f'integrity="{ORT_SRI["ort.webgpu.min.js"]}" crossorigin="anonymous"' in page
    assert 'src="https://cdn.jsdelivr.net/npm/onnxruntime-web@1.31.1/dist/ort.webgpu.min.js"' in page
    importmap = json.loads(page.split('<script type="importmap">')[1].split("</script>")[0])
    assert list(importmap["integrity"].values()) == [ORT_SRI["ort-wasm-simd-threaded.asyncify.mjs"]]
    assert json.loads((site.path / "site.json").read_text())["ort"]["wasm_integrity"] == ORT_SRI[
        "ort-wasm-simd-threaded.asyncify.wasm"]


@needs_ort
def test_cdn_hashes_are_those_of_the_pinned_npm_release():
    """The CDN serves the npm tarball's files: the hashes in web.py must be the installed release's."""
    package = json.loads((default_ort_dir().parent / "package.json").read_text())
    assert package["version"] == "1.31.1"
    assert {name: sri(default_ort_dir() / name) for name in ORT_SRI} == ORT_SRI


def image_model(path: Path) -> Path:
    """An SR-like model: image [N, 3, H, W] -> output [N, 3, H, W] (Identity), with distgan metadata."""
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["output"])], "sr",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {PREFIX + "task": "sr", PREFIX + "scale": "4"})
    onnx.save(model, str(path))
    return path


def test_refuses_models_a_browser_cannot_serve(tmp_path, serve_models, capsys):
    sr = image_model(tmp_path / "sr.onnx")
    assert not (tmp_path / "site").exists()
    with pytest.raises(SystemExit) as exit_:
        export_main(["--web", str(tmp_path / "site"), str(sr), "--ort-web", "cdn"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "sr.onnx: a browser page serves generators only" in err and "'image': ['N', 3, 'H', 'W']" in err
    assert "Traceback" not in err and not (tmp_path / "site").exists()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(WebExportError, match="broken.onnx: not an ONNX model"):
        export_web(tmp_path / "site", broken, ort="cdn")
    newer = onnx.load(str(serve_models["cond"]))
    newer.ir_version = 14
    onnx.save(newer, str(tmp_path / "ir14.onnx"))
    with pytest.raises(WebExportError, match="ir14.onnx: ONNX IR version 14; onnxruntime-web 1.31.1 loads up to 13"):
        export_web(tmp_path / "site", tmp_path / "ir14.onnx", ort="cdn")
    with pytest.raises(WebExportError, match="--int8 quantises while exporting"):
        export_web(tmp_path / "site", serve_models["cond"], int8=True, ort="cdn")
    with pytest.raises(WebExportError, match="onnxruntime-web is not installed"):
        export_web(tmp_path / "site", serve_models["cond"], ort=tmp_path / "nowhere")
    assert not any(p.name.startswith(".web-") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_int8_site_from_a_generator_directory(tmp_path):
    """--int8 with a run (here its generator/ directory): exported, quantised and published in one step; nothing
    is left beside the site or in the run."""
    source = generator_dir(tmp_path / "run", "dcgan28", (1, 28, 28))
    before = sorted(p.name for p in source.iterdir())
    site = export_web(tmp_path / "site", source, int8=True, ort="cdn")
    config = json.loads((site.path / "site.json").read_text())
    assert config["quantization"] == "int8" and site.info.quantization == "int8"
    assert OnnxGenerator(site.path / "model.onnx").info.quantization == "int8"
    assert sorted(p.name for p in source.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "site"]

"""`distgan-export --web`: a static folder that draws a generator's images in the visitor's browser.

    OUT/index.html, app.js, draw.js, latents.js, ziggurat.js, png.js, style.css  (the page: web_static/)
    OUT/serve.css, icon.svg   distgan-serve's style.css and icon: the look both pages share
    OUT/model.onnx   the generator, byte for byte (its sha256 is in site.json and in every PNG)
    OUT/site.json    the model's distgan metadata and inputs, and where onnxruntime-web comes from
    OUT/ort/         onnxruntime-web, copied from the npm install (absent with --ort-web cdn)

Nothing on the server side: any static host serves it (a sub-path too; every URL is relative).
The browser makes each seed's latent exactly as distgan.runtime does (latents.js ports numpy's
SeedSequence, PCG64 and float32 ziggurat), so its images are distgan-sample's up to WASM's float
differences. onnxruntime-web's asyncify build carries both WebGPU and WASM; the page takes WebGPU
when the browser offers it. `--ort-web cdn` loads the same pinned files from a CDN instead, each
checked by a sha384 subresource-integrity hash (the script tag, the import map, and the fetch).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import onnx

from distgan.export.onnx import export_onnx
from distgan.runtime import PREFIX, GeneratorInfo, ModelError

ORT_VERSION = "1.31.1"  # package.json pins the same
ORT_CDN = f"https://cdn.jsdelivr.net/npm/onnxruntime-web@{ORT_VERSION}/dist/"
ORT_SCRIPT, ORT_GLUE, ORT_WASM = ("ort.webgpu.min.js", "ort-wasm-simd-threaded.asyncify.mjs",
                                  "ort-wasm-simd-threaded.asyncify.wasm")
# sha384 of the pinned release's files (what the CDN serves is the npm tarball); tests check them against
# node_modules, so a version bump that forgets them fails.
ORT_SRI = {
    ORT_SCRIPT: "sha384-vdDj+w5K0qlH8UgWJk1y/VQKvheIizpzLGonwCzeCc+ch0GiyjYbnJQvPvRKkbxn",
    ORT_GLUE: "sha384-MZXSqYGZtrCJ8cYZ26C4RYRYYoYtDVV2GnAEL1cLiD+oOr3MrUSe3Hur4S7NidC1",
    ORT_WASM: "sha384-Da9/alSN2rEHI5XIgPPOp70/HfJ82/URSSpUwy1h4UmGMPkJtb6PoMwvcBHy5h8P",
}
PAGE_FILES = ("app.js", "draw.js", "latents.js", "ziggurat.js", "png.js", "style.css")
STATIC = Path(__file__).with_name("web_static")
SERVE_STATIC = Path(__file__).parents[1] / "serve" / "static"
SHARED_FILES = {"serve.css": "style.css", "icon.svg": "icon.svg"}  # site name -> distgan-serve's file: one look
# The inputs a page can feed: z [B, nz], labels [B], and a style-based model's psi [B], z2 [B, nz], mix_layer [B].
BROWSER_INPUTS = {"z": "float32", "labels": "int64", "psi": "float32", "z2": "float32", "mix_layer": "int64"}
ORT_MAX_IR_VERSION = 13  # the newest ONNX IR version onnxruntime-web ORT_VERSION loads
MARKER = "site.json"  # a folder holding it is a previous export, which --web may replace


class WebExportError(ValueError):
    """A model or a destination a static site cannot be made from."""


@dataclass(frozen=True)
class WebSite:
    """A written site: its folder, its files with their sizes, where onnxruntime-web comes from."""

    path: Path
    sizes: dict[str, int]
    ort: str  # "local" or the CDN prefix
    info: GeneratorInfo

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def sri(path: Path) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(path.read_bytes()).digest()).decode()


def default_ort_dir() -> Path:
    """onnxruntime-web's dist/ in the npm install beside the project (`npm ci` at the repository root), else in
    the working directory's node_modules (an installed distgan has no repository beside it)."""
    beside = Path(__file__).resolve().parents[2] / "node_modules" / "onnxruntime-web" / "dist"
    here = Path.cwd() / "node_modules" / "onnxruntime-web" / "dist"
    return beside if beside.is_dir() or not here.is_dir() else here


def browser_model(path: Path) -> tuple[GeneratorInfo, list[str]]:
    """The model's distgan metadata and input names, or a WebExportError saying why a browser cannot run it:
    an input other than a generator's (an image-input model takes images of any size, which a page cannot
    bound), an IR version onnxruntime-web cannot load, missing metadata, or a size that is not fixed."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is not a model
        raise WebExportError(f"{path}: not an ONNX model: {exc}") from exc
    meta = {p.key: p.value for p in model.metadata_props}
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in inputs]
    other = [n for n in names if n not in BROWSER_INPUTS]
    if other or "z" not in names:
        shapes = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in inputs}
        raise WebExportError(
            f"{path}: a browser page serves generators only (inputs z [batch, nz] and optionally labels, psi, z2, "
            f"mix_layer); this model's inputs are {shapes}: an image input of any size has no bound on the memory "
            f"and time a visitor's browser would spend")
    if model.ir_version > ORT_MAX_IR_VERSION:
        raise WebExportError(f"{path}: ONNX IR version {model.ir_version}; onnxruntime-web {ORT_VERSION} loads up to "
                             f"{ORT_MAX_IR_VERSION} (export with an older onnx package or opset)")
    try:
        info = GeneratorInfo.from_metadata(meta, str(path))
    except ModelError as exc:
        raise WebExportError(str(exc)) from exc
    if min(info.nz, info.height, info.width, info.channels) <= 0:
        raise WebExportError(f"{path}: nz and the image size must be fixed positive numbers "
                             f"(nz {info.nz}, {info.channels}x{info.height}x{info.width})")
    if {"z2", "mix_layer"} & set(names) and int(meta.get(PREFIX + "num_ws", "0")) <= 0:
        raise WebExportError(f"{path}: has style-mixing inputs but no {PREFIX}num_ws metadata > 0")
    return info, names


def resolve_source(source: Path, int8: bool, workdir: Path) -> Path:
    """The ONNX file to publish: `source` itself, or exported from a run (or generator/) directory into `workdir`."""
    if source.is_file():
        if int8 and not source.name.endswith(".int8.onnx"):
            raise WebExportError(f"{source}: --int8 quantises while exporting, which needs the run directory "
                                 f"(calibration runs the torch generator); pass the run, or an .int8.onnx file")
        return source
    if not source.is_dir():
        raise WebExportError(f"{source}: no such run directory or ONNX file")
    return export_onnx(source, workdir / "generator.onnx", quantize="int8" if int8 else None).path


def ort_tags(ort: str | Path) -> tuple[str, dict[str, str], dict[str, Path]]:
    """The <head> tags that load onnxruntime-web, site.json's "ort" entry, and the files to copy (name -> path)."""
    if ort == "cdn":
        prefix, files = ORT_CDN, {}
        integrity = ORT_SRI
    else:
        folder = default_ort_dir() if ort == "local" else Path(ort)
        files = {name: folder / name for name in (ORT_SCRIPT, ORT_GLUE, ORT_WASM)}
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise WebExportError(f"onnxruntime-web is not installed: {', '.join(missing)} missing (run `npm ci` at "
                                 f"the repository root, pass --ort-web PATH to its dist/ folder, or --ort-web cdn)")
        prefix, integrity = "./ort/", {name: sri(path) for name, path in files.items()}
    glue = prefix + ORT_GLUE
    tags = (f'<script type="importmap">{json.dumps({"integrity": {glue: integrity[ORT_GLUE]}})}</script>\n'
            f'  <script src="{html.escape(prefix + ORT_SCRIPT)}" integrity="{integrity[ORT_SCRIPT]}" '
            f'crossorigin="anonymous"></script>')
    entry = {"glue": glue, "wasm": prefix + ORT_WASM, "wasm_integrity": integrity[ORT_WASM],
             "version": ORT_VERSION if ort == "cdn" else "local"}
    return tags, entry, files


def site_config(info: GeneratorInfo, inputs: list[str], model: Path, ort_entry: dict[str, str]) -> dict:
    """site.json: what the page needs to draw and to label its files as distgan-sample does."""
    return {
        "model": "model.onnx", "file": model.name, "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "bytes": model.stat().st_size, "inputs": inputs, "family": info.family, "nz": info.nz,
        "channels": info.channels, "height": info.height, "width": info.width, "classes": list(info.class_names),
        "output_dtype": info.output_dtype, "step": info.step, "dataset": info.dataset,
        "quantization": info.quantization, "num_ws": int(info.metadata.get(PREFIX + "num_ws", "0")),
        "ort": ort_entry,
    }


def _check_destination(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise WebExportError(f"{out}: exists and is not an empty folder or a previous --web export; "
                             f"choose another OUT_DIR")


def export_web(out: Path, source: Path, *, int8: bool = False, ort: str | Path = "local") -> WebSite:
    """Write the site for `source` (a run, its generator/, or an .onnx file) to `out`, all or nothing."""
    out, source = Path(out), Path(source)
    _check_destination(out)
    tags, ort_entry, ort_files = ort_tags(ort)
    out.parent.mkdir(parents=True, exist_ok=True)
    with TemporaryDirectory(dir=out.parent, prefix=".web-") as tmp:
        model = resolve_source(source, int8, Path(tmp))
        info, inputs = browser_model(model)
        site = Path(tmp) / "site"
        site.mkdir()
        for name in PAGE_FILES:
            shutil.copyfile(STATIC / name, site / name)
        for name, served in SHARED_FILES.items():
            shutil.copyfile(SERVE_STATIC / served, site / name)
        page = (STATIC / "index.html").read_text()
        (site / "index.html").write_text(page.replace("<!-- onnxruntime-web -->", tags))
        shutil.copyfile(model, site / "model.onnx")
        config = site_config(info, inputs, model, ort_entry)
        (site / MARKER).write_text(json.dumps(config, indent=1) + "\n")
        if ort_files:
            (site / "ort").mkdir()
            for name, path in ort_files.items():
                shutil.copyfile(path, site / "ort" / name)
        if out.exists():
            old = Path(tmp) / "old"
            os.replace(out, old)
        os.replace(site, out)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    return WebSite(out, sizes, "local" if ort_files else ORT_CDN, info)

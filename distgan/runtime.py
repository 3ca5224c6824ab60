"""An exported generator at run time (onnxruntime, numpy, pillow; never torch), and the one latent convention.

Deployment machines need not have torch (a test checks `distgan-sample` never imports it).
This file is also the deployment kit's runtime (`export/runtime.py` links to it), so it
imports nothing from distgan. What a client needs is in the model's `metadata_props`.

The latent convention, written here only: `distgan-sample`, `distgan-serve` (page and API)
and `export/generate.py` all draw through `OnnxGenerator.sample` / `.interpolate`, so one
request gives byte-identical PNGs from each.
- A seed (0 .. 2**32 - 1) is one image: z = numpy.random.default_rng(seed).standard_normal(nz,
  dtype=float32); n images from seed s are the images of seeds s .. s + n - 1.
  distgan-export --web's page makes the same z in JS (distgan/export/web_static/latents.js: numpy's
  SeedSequence, PCG64 and float32 ziggurat, tested against numpy).
- Class: a name (any case) or index gives every image that class; none gives seed s class
  s mod K (every class in turn); "all" draws each seed in every class, a row per seed.
- Truncation psi (0 .. 2): z * psi, towards the mean of N(0, I); 1 is z as drawn. A model with style
  inputs (StyleGAN2: metadata distgan.num_ws > 0) truncates in W instead, in the graph: its `psi` input,
  w_avg + psi (w - w_avg); z goes in as drawn.
- Style mixing (models with style inputs): --mix-seed m --mix-layer L gives image i the styles of seed
  m + i from style layer L on (L = 0: seed m + i's image; L = num_ws: no mixing); the class held.
- A walk from seed a to seed b: `steps` frames of the spherical interpolation of their
  latents at t = i / (steps - 1), exactly a's and b's latents at the ends, psi applied
  after, the class of a's image held.
- PNG: pillow's encoder, text chunks naming the model (sha256, absolute path) and the request
  (`distgan-sample --from-png FILE` draws it again from them).
Not this convention: the training-time sample grids (torch.randn with a torch.Generator,
distgan/training/actions.py) and the latents `distgan-eval` scores (distgan/metrics/generated.py:
one torch stream per seed, which keeps the per-rank seeds of evaluation during training
on disjoint samples). Their images are not these seeds' images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from PIL import Image, PngImagePlugin

PREFIX = "distgan."
# The contract with every client: all values are strings.
REQUIRED_KEYS = (
    "family", "nz", "channels", "height", "width", "num_classes", "class_names", "output_range",
    "output_layout", "output_dtype", "step", "dataset", "distgan_version", "config_hash", "quantization",
)
MAX_SEED = 2**32 - 1
MAX_INPUT_VALUES = 2**20  # per image, of an input a client fills with its declared default (a latent, psi, ...)
STYLE_INPUTS = ("psi", "z2", "mix_layer")  # a style-based export's inputs besides z (and labels): psi [B] float32,
# z2 [B, nz] float32, mix_layer [B] int64; metadata distgan.num_ws says how many style layers mix_layer indexes
PSI_RANGE = (0.0, 2.0)
ALL_CLASSES = "all"  # the class value that draws every class (a class named "all" is reachable by its index)


class ModelError(ValueError):
    """A file that is not a usable distgan ONNX generator, or inputs it cannot take."""


class InputError(ModelError):
    """A request parameter out of its valid range; `field` names the parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GeneratorInfo:
    """The metadata of an exported generator, typed."""

    family: str
    nz: int
    channels: int
    height: int
    width: int
    class_names: tuple[str, ...]
    output_dtype: str  # "float32" (NCHW, [-1, 1]) or "uint8" (NHWC, [0, 255])
    output_layout: str
    output_range: tuple[float, float]
    step: int
    dataset: str
    quantization: str
    metadata: dict[str, str]
    num_ws: int = 0  # style layers of a style-based model (its graph takes STYLE_INPUTS); 0: z (and labels) only
    stages: tuple[str, ...] = ()  # a pyramid's stage outputs, coarse to fine (distgan.stages); (): images only

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def from_metadata(cls, meta: dict[str, str], source: str) -> GeneratorInfo:
        missing = [PREFIX + k for k in REQUIRED_KEYS if PREFIX + k not in meta]
        if missing:
            raise ModelError(f"{source}: not a distgan generator; metadata_props lacks {', '.join(missing)}")
        get = {k: meta[PREFIX + k] for k in REQUIRED_KEYS}
        try:
            names = tuple(json.loads(get["class_names"]))
            num_classes = int(get["num_classes"])
            low, high = (float(v) for v in get["output_range"].split(","))
            info = cls(
                family=get["family"], nz=int(get["nz"]), channels=int(get["channels"]),
                height=int(get["height"]), width=int(get["width"]), class_names=names,
                output_dtype=get["output_dtype"], output_layout=get["output_layout"], output_range=(low, high),
                step=int(get["step"]), dataset=get["dataset"], quantization=get["quantization"],
                metadata={k: v for k, v in meta.items() if k.startswith(PREFIX)},
                num_ws=int(meta.get(PREFIX + "num_ws", "0")),
                stages=tuple(str(name) for name in json.loads(meta.get(PREFIX + "stages", "[]"))),
            )
        except (ValueError, TypeError, RecursionError) as exc:
            raise ModelError(f"{source}: malformed distgan metadata: {exc}") from exc
        for field, value, least in (("nz", info.nz, 1), ("channels", info.channels, 1), ("height", info.height, 1),
                                    ("width", info.width, 1), ("step", info.step, 0), ("num_ws", info.num_ws, 0)):
            if value < least:
                raise ModelError(f"{source}: {PREFIX}{field} is {value}; expected an integer >= {least}")
        if not low < high:
            raise ModelError(f"{source}: {PREFIX}output_range is {get['output_range']!r}; expected 'low,high' "
                             f"with low < high")
        if not all(isinstance(n, str) for n in names):
            raise ModelError(f"{source}: {PREFIX}class_names must be a JSON list of strings")
        if num_classes != len(names):
            raise ModelError(f"{source}: {PREFIX}num_classes is {get['num_classes']} but "
                             f"{PREFIX}class_names lists {len(names)}")
        if (info.output_dtype, info.output_layout) not in (("float32", "NCHW"), ("uint8", "NHWC")):
            raise ModelError(f"{source}: unsupported output {info.output_dtype} {info.output_layout}")
        return info


# --- the latent convention -------------------------------------------------------------


def check_int(field: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """`value` as an int in low .. high (no bound above when None), or an InputError naming `field`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(field, f"{value!r} is not an integer")
    if value < low or (high is not None and value > high):
        raise InputError(field, f"{value} is out of range; valid: {low}..{'' if high is None else high}{why}")
    return int(value)


def seed_range(field: str, seed: object, n: int) -> np.ndarray:
    """The seeds seed .. seed + n - 1, checked against 0 .. MAX_SEED."""
    seed = check_int(field, seed, 0, MAX_SEED - n + 1, f" (n = {n} images use seeds up to seed + {n - 1})" * (n > 1))
    return np.arange(seed, seed + n, dtype=np.int64)


def check_psi(psi: object) -> float:
    low, high = PSI_RANGE
    if isinstance(psi, bool) or not isinstance(psi, (int, float, np.floating)) or not low <= psi <= high:
        raise InputError("psi", f"{psi!r} is out of range; valid: a number in {low:g}..{high:g}")
    return float(psi)


def latents(seeds: np.ndarray, nz: int) -> np.ndarray:
    """float32 [len(seeds), nz]: row i is the latent of seeds[i] (default_rng(seed) is Generator(PCG64(seed)))."""
    rows = [np.random.Generator(np.random.PCG64(int(s))).standard_normal(nz, dtype=np.float32) for s in seeds]
    return np.array(rows, np.float32).reshape(len(rows), nz)


def truncate(z: np.ndarray, psi: float) -> np.ndarray:
    """Pull latents towards the mean of N(0, I) (zero): psi = 1 is z itself, 0 the mean."""
    return z if psi == 1.0 else (z * np.float32(psi)).astype(np.float32)


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation per row: stays on the shell where N(0, I) latents live, unlike a straight line.
    Exactly `a` at t = 0 and `b` at t = 1."""
    if t == 0.0 or t == 1.0:
        return (a if t == 0.0 else b).copy()
    na, nb = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
    omega = np.arccos(np.clip(np.sum(a / na * (b / nb), axis=1, keepdims=True), -1.0, 1.0))
    so = np.sin(omega)
    safe = np.where(so < 1e-6, 1.0, so)
    mixed = np.where(so < 1e-6, (1 - t) * a + t * b, (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / safe)
    return mixed.astype(np.float32)


# --- images and files ------------------------------------------------------------------


def grid(images: np.ndarray, columns: int | None = None, padding: int = 2, min_side: int = 0) -> np.ndarray:
    """uint8 [B, H, W, C] -> one uint8 image, `columns` tiles a row (default: a square), black between tiles,
    enlarged by a whole factor (nearest) until its longer side reaches `min_side`, so small images stay
    visible. The one grid of distgan: samples, served pages, training grids, `distgan-data show`.
    A single image is returned as it is."""
    b, h, w, c = images.shape
    if b == 1:
        return images[0]
    cols = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / cols)
    out = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // cols) * (h + padding), padding + (i % cols) * (w + padding)
        out[y:y + h, x:x + w] = image
    scale = max(1, min_side // max(out.shape[:2]))
    return out.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else out


def to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def encode_png(image: np.ndarray, text: dict[str, str]) -> bytes:
    """The PNG every distgan client writes for `image` (uint8 [H, W, C]), `text` as its text chunks.
    zlib level 1: encoding is most of the cost of serving a grid, and level 6 saved ~7% of the bytes at ~1.5x
    the time (a 64-image grid, DCGAN-28 on Fashion-MNIST and DCGAN-64)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)  # latin-1 as tEXt, anything else as iTXt
    buffer = io.BytesIO()
    to_pil(image).save(buffer, format="PNG", pnginfo=info, compress_level=1)
    return buffer.getvalue()


def write_atomically(path: Path, data: str | bytes) -> None:
    """Write beside the target, then rename: a kill or a full disk never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Drawing:
    """Images drawn by the convention, with what says how to draw them again."""

    images: np.ndarray  # uint8 [rows * columns, H, W, C], row-major
    z: np.ndarray  # float32 [rows * columns, nz], the latents the model was given (psi applied)
    columns: int  # tiles per grid row
    seeds: np.ndarray  # int64 per image
    labels: np.ndarray | None  # int64 class id per image; None for an unconditional model
    text: dict[str, str]  # the PNG's text chunks: the model's sha256 and the request
    name: str  # a file name that carries the same
    args: tuple[str, ...]  # the distgan-sample arguments (after --onnx FILE) that draw it again

    def png(self) -> bytes:
        """The grid (or the single image) as the PNG every client writes."""
        return encode_png(grid(self.images, self.columns), self.text)


def input_specs(metadata: dict[str, str], source: str) -> list[dict]:
    """distgan.input_specs, checked: a JSON list of {name, dtype, shape[, default]} (what a client feeds)."""
    try:
        specs = json.loads(metadata.get(PREFIX + "input_specs", "[]"))
        for spec in specs:
            if np.dtype(spec["dtype"]).kind not in "biuf":
                raise ValueError(f"dtype {spec['dtype']!r} is not a number type")
            if not isinstance(spec["name"], str) or not all(isinstance(d, int) and d >= 0 for d in spec["shape"]):
                raise ValueError(spec)
            if math.prod(spec["shape"]) > MAX_INPUT_VALUES:  # checked before anything is allocated
                raise ValueError(f"{spec['name']}: shape {spec['shape']} is over {MAX_INPUT_VALUES} values per image")
            if spec.get("default") is not None and np.asarray(spec["default"], spec["dtype"]).ndim != 0:
                raise ValueError(f"{spec['name']}: the default is not one number")
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, OverflowError) as exc:
        raise ModelError(f"{source}: {PREFIX}input_specs is not a JSON list of {{name, dtype, shape[, default]}} "
                         f"objects ({type(exc).__name__}: {exc})") from None
    return specs


class OnnxGenerator:
    """One onnxruntime session on an exported generator: checked inputs, images out."""

    def __init__(self, path: str | Path, *, threads: int = 0, providers: list[str] | None = None):
        """`threads=0` lets onnxruntime use one thread per physical core."""
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        data = self.path.read_bytes()
        self.sha256 = hashlib.sha256(data).hexdigest()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Clients work between runs (latents, PNG, HTTP): workers that spin after a run took the cores from that
        # work (one DCGAN-64 image drawn as PNG on 2 cores: 16-22 ms spinning, 2-10 ms not; the run alike).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = GeneratorInfo.from_metadata(self.metadata, str(self.path))
        inputs = {i.name for i in self.session.get_inputs()}
        # Inputs beyond z and labels (a model family's: truncation, a mixing layer, ...) are declared in
        # distgan.input_specs with the value a client feeds when it does not choose one.
        self.defaults = {spec["name"]: spec for spec in input_specs(self.metadata, str(self.path))
                         if spec.get("default") is not None}
        expected = ({"z", "labels"} if self.info.num_classes else {"z"}) | set(self.defaults)
        if self.styled and not set(STYLE_INPUTS) <= inputs:
            raise ModelError(f"{self.path}: a style-based model (distgan.num_ws) needs inputs "
                             f"{', '.join(STYLE_INPUTS)}")
        if inputs != expected:
            raise ModelError(f"{self.path}: inputs are {sorted(inputs)}, expected {sorted(expected)}")
        outputs = [o.name for o in self.session.get_outputs()]
        if outputs != ["images", *self.info.stages]:
            raise ModelError(f"{self.path}: outputs are {outputs}, expected {['images', *self.info.stages]}")
        z_shape = next(i.shape for i in self.session.get_inputs() if i.name == "z")
        if len(z_shape) != 2 or (isinstance(z_shape[1], int) and z_shape[1] != self.info.nz):
            raise ModelError(f"{self.path}: the graph's z is {z_shape} but {PREFIX}nz says {self.info.nz}")
        c, h, w = self.info.channels, self.info.height, self.info.width
        declared = [c, h, w] if self.info.output_layout == "NCHW" else [h, w, c]
        graph = self.session.get_outputs()[0].shape[1:]
        if len(graph) != 3 or any(isinstance(g, int) and g != d for g, d in zip(graph, declared)):
            raise ModelError(f"{self.path}: the graph's images are {graph} per sample but the metadata says "
                             f"{declared} ({self.info.output_layout})")

    @property
    def conditional(self) -> bool:
        return self.info.num_classes > 0

    @property
    def styled(self) -> bool:
        """A style-based model: truncation in W and style mixing are inputs of its graph."""
        return self.info.num_ws > 0

    def check_mixing(self, mix_seed: object, mix_layer: object, n: int) -> tuple[np.ndarray, int] | None:
        """The mixing seeds' first row and the checked layer, or None when no mixing is asked for."""
        if mix_seed is None and mix_layer is None:
            return None
        if not self.styled:
            raise InputError("mix_layer", "this model has no style layers to mix (only style-based models do)")
        if mix_seed is None or mix_layer is None:
            raise InputError("mix_seed" if mix_seed is None else "mix_layer", "style mixing needs both mix_seed and "
                                                                                "mix_layer")
        layer = check_int("mix_layer", mix_layer, 0, self.info.num_ws,
                          f" (0: every style from mix_seed; {self.info.num_ws}: none)")
        return seed_range("mix_seed", mix_seed, n), layer

    def latents(self, n: int, seed: int) -> np.ndarray:
        """The latents of seeds seed .. seed + n - 1: the same seed gives the same image everywhere."""
        return latents(seed_range("seed", seed, n), self.info.nz)

    def class_id(self, name: str) -> int:
        """A class name (case-insensitive) or index -> its id."""
        names = self.info.class_names
        if not names:
            raise InputError("class", f"the model is unconditional; it has no classes (got {name!r})")
        lowered = [n.lower() for n in names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        if name.isdigit() and int(name) < len(names):
            return int(name)
        raise InputError("class", f"unknown class {name!r}; valid: {', '.join(names)} "
                                  f"(or an index 0..{len(names) - 1}, or {ALL_CLASSES})")

    def default_labels(self, n: int, seed: int = 0) -> np.ndarray | None:
        """The classes of seeds seed .. seed + n - 1 when none is asked for: seed mod K, or None (unconditional)."""
        return (np.arange(seed, seed + n, dtype=np.int64) % self.info.num_classes) if self.conditional else None

    def _rows(self, seed: int, n: int, class_name: str | None,
              seed_field: str = "seed") -> tuple[np.ndarray, np.ndarray | None, int, str]:
        """The seeds and labels of the images a request draws (row-major), the grid's columns, the class as text."""
        check_int("n", n, 1)
        seeds = seed_range(seed_field, seed, n)
        k = self.info.num_classes
        if class_name is None:
            described = f"every class in turn (seed mod {k})" if k else ""
            return seeds, self.default_labels(n, int(seed)), math.ceil(math.sqrt(n)), described
        if class_name.lower() == ALL_CLASSES and k:
            return np.repeat(seeds, k), np.tile(np.arange(k, dtype=np.int64), n), k, ALL_CLASSES
        label = self.class_id(class_name)
        return seeds, np.full(n, label, np.int64), math.ceil(math.sqrt(n)), self.info.class_names[label]

    def _drawing(self, images: np.ndarray, z: np.ndarray, columns: int, seeds: np.ndarray, labels: np.ndarray | None,
                 request: dict[str, int], name: str, described: str, psi: float) -> Drawing:
        """The drawing with its PNG text, file name and distgan-sample arguments."""
        text = {f"{PREFIX}model_sha256": self.sha256, f"{PREFIX}model_file": str(self.path.resolve()),
                **{PREFIX + k: str(v) for k, v in request.items()}}
        flags = {"seed": "--seed", "seed_a": "--seed", "n": "--n", "seed_b": "--interpolate", "steps": "--steps",
                 "mix_seed": "--mix-seed", "mix_layer": "--mix-layer"}
        args = [a for k, v in request.items() for a in (flags[k], str(v))]
        parts = [self.sha256[:12], name]
        if described:  # conditional models
            text[f"{PREFIX}class"] = described
            every = described.startswith("every")
            slug = re.sub(r"[^a-z0-9]+", "-", described.lower()).strip("-") or "class"
            parts.append("every-class" if every else slug)
            args += [] if every else ["--class", described]
        text[f"{PREFIX}psi"] = repr(psi)
        parts.append(f"psi{psi!r}")
        args += [] if psi == 1.0 else ["--psi", repr(psi)]
        return Drawing(images, z, columns, seeds, labels, text, "_".join(parts) + ".png", tuple(args))

    def sample(self, seed: int = 0, n: int = 1, class_name: str | None = None, psi: float = 1.0,
               mix_seed: int | None = None, mix_layer: int | None = None) -> Drawing:
        """The images of seeds seed .. seed + n - 1 (with class "all": each of them in every class); style-based
        models: from style layer mix_layer on, the styles of seeds mix_seed .. mix_seed + n - 1."""
        psi = check_psi(psi)
        seeds, labels, columns, described = self._rows(seed, n, class_name)
        mixing = self.check_mixing(mix_seed, mix_layer, n)
        z = latents(seeds, self.info.nz)
        z = z if self.styled else truncate(z, psi)
        request, name = {"seed": seed, "n": n}, f"seed{seed}" if n == 1 else f"seed{seed}-{seed + n - 1}"
        z2 = layer = None
        if mixing is not None:
            z2, layer = latents(seeds - seeds[0] + mixing[0][0], self.info.nz), mixing[1]
            request |= {"mix_seed": int(mixing[0][0]), "mix_layer": layer}
            name += f"_mix{mixing[0][0]}-at{layer}"
        images = self.images(z, labels, psi=psi, z2=z2, mix_layer=layer)
        return self._drawing(images, z, columns, seeds, labels, request, name, described, psi)

    def mixing_grid(self, row_seed: int, rows: int, col_seed: int, cols: int, mix_layer: int,
                    class_name: str | None = None, psi: float = 1.0) -> Drawing:
        """StyleGAN's style-mixing figure: the top row is the images of seeds col_seed .. + cols - 1, the left
        column those of row_seed .. + rows - 1, and tile (r, c) takes row seed r's styles below mix_layer and
        column seed c's from mix_layer on (the top-left tile is black). The class: `class_name`, or the row seed's."""
        psi = check_psi(psi)
        check_int("rows", rows, 1)
        check_int("cols", cols, 1)
        row_seeds, col_seeds = seed_range("row_seed", row_seed, rows), seed_range("col_seed", col_seed, cols)
        if not self.styled:
            raise InputError("mix_layer", "this model has no style layers to mix (only style-based models do)")
        layer = check_int("mix_layer", mix_layer, 0, self.info.num_ws, f" (0: the column's image; "
                                                                         f"{self.info.num_ws}: the row's)")
        zr, zc = latents(row_seeds, self.info.nz), latents(col_seeds, self.info.nz)
        z = np.concatenate([zr[:, None].repeat(cols, axis=1).reshape(-1, self.info.nz), zc, zr])
        z2 = np.concatenate([zc[None].repeat(rows, axis=0).reshape(-1, self.info.nz), zc, zr])
        layers = np.concatenate([np.full(rows * cols, layer), np.zeros(cols, np.int64),
                                 np.full(rows, self.info.num_ws)])
        labels = None
        if self.conditional:
            per_row = (np.full(rows, self.class_id(class_name), np.int64) if class_name is not None
                       else self.default_labels(rows, row_seed))
            labels = np.concatenate([per_row.repeat(cols), per_row[:1].repeat(cols), per_row])
        made = self.images(z, labels, psi=psi, z2=z2, mix_layer=layers)
        tiles = np.zeros(((rows + 1) * (cols + 1), *made.shape[1:]), np.uint8)
        tiles.reshape(rows + 1, cols + 1, *made.shape[1:])[1:, 1:] = made[:rows * cols].reshape(rows, cols,
                                                                                              *made.shape[1:])
        tiles.reshape(rows + 1, cols + 1, *made.shape[1:])[0, 1:] = made[rows * cols:rows * cols + cols]
        tiles.reshape(rows + 1, cols + 1, *made.shape[1:])[1:, 0] = made[rows * cols + cols:]
        request = {"row_seed": row_seed, "rows": rows, "col_seed": col_seed, "cols": cols, "mix_layer": layer}
        text = {f"{PREFIX}model_sha256": self.sha256, **{PREFIX + k: str(v) for k, v in request.items()},
                f"{PREFIX}psi": repr(psi)}
        name = f"{self.sha256[:12]}_mixing{row_seed}x{col_seed}_{rows}x{cols}_at{layer}_psi{psi!r}.png"
        args = ("--seed", str(row_seed), "--n", str(rows), "--mix-grid", str(col_seed), "--cols", str(cols),
                "--mix-layer", str(layer), *(("--class", class_name) if class_name is not None else ()),
                *(("--psi", repr(psi)) if psi != 1.0 else ()))
        return Drawing(tiles, z, cols + 1, np.repeat(row_seeds, cols), labels, text, name, args)

    def interpolate(self, seed_a: int, seed_b: int, steps: int, class_name: str | None = None, psi: float = 1.0,
                    n: int = 1) -> Drawing:
        """A row of `steps` frames for each image of `sample(seed_a, n, class_name)`, walking to the latent of
        its counterpart from seed_b (seed_b + i), the class held; frames 0 and steps - 1 are the two images."""
        psi = check_psi(psi)
        steps = check_int("steps", steps, 2)
        seeds, labels, _, described = self._rows(seed_a, n, class_name, seed_field="seed_a")
        seeds_b = seeds - seeds[0] + seed_range("seed_b", seed_b, n)[0]
        za, zb = latents(seeds, self.info.nz), latents(seeds_b, self.info.nz)
        path = np.stack([slerp(za, zb, i / (steps - 1)) for i in range(steps)], axis=1)  # [rows, steps, nz]
        labels = None if labels is None else np.repeat(labels, steps)
        z = path.reshape(-1, self.info.nz)
        z = z if self.styled else truncate(z, psi)
        name = f"walk{seed_a}-{seed_b}_steps{steps}" + (f"_n{n}" if n > 1 else "")
        return self._drawing(self.images(z, labels, psi=psi), z, steps, np.repeat(seeds, steps), labels,
                             {"seed_a": seed_a, "n": n, "seed_b": seed_b, "steps": steps}, name, described, psi)

    def stage_grid(self, seed: int = 0, class_name: str | None = None, psi: float = 1.0) -> Drawing:
        """A pyramid model's stages of seed's image, coarse to fine, side by side (the last is the image itself),
        each enlarged (nearest) to the image's size; the PNG text records each stage's own size."""
        if not self.info.stages:
            raise InputError("model", f"{self.path.name} ({self.info.family}) has no pyramid stages: only a LAPGAN "
                                      f"export has them (metadata distgan.stages)")
        if class_name is not None and class_name.lower() == ALL_CLASSES and self.conditional:
            raise InputError("class", "one class per image here: a name or index")
        psi = check_psi(psi)
        seeds, labels, _, described = self._rows(seed, 1, class_name)
        z = truncate(latents(seeds, self.info.nz), psi)
        self._check(z, labels)
        raw = self._run({"z": z} if labels is None else {"z": z, "labels": labels}, self.info.stages)
        stages = [stage if self.info.output_dtype == "uint8" else to_uint8_nhwc(stage) for stage in raw]
        height, width = self.info.height, self.info.width
        enlarged = [s[:, (np.arange(height) * s.shape[1]) // height][:, :, (np.arange(width) * s.shape[2]) // width]
                    for s in stages]
        k = len(stages)
        drawing = self._drawing(np.concatenate(enlarged), z.repeat(k, axis=0), k, seeds.repeat(k),
                                None if labels is None else labels.repeat(k), {"seed": seed}, f"seed{seed}_stages",
                                described, psi)
        sizes = ",".join(f"{s.shape[1]}x{s.shape[2]}" for s in stages)
        return dataclasses.replace(drawing, text={**drawing.text, f"{PREFIX}stages": sizes},
                                   args=(*drawing.args, "--stages"))

    # --- raw arrays --------------------------------------------------------------------

    def _check(self, z: np.ndarray, labels: np.ndarray | None) -> None:
        nz = self.info.nz
        if not isinstance(z, np.ndarray) or z.dtype != np.float32 or z.ndim != 2 or z.shape[1] != nz:
            got = f"{z.dtype} {list(z.shape)}" if isinstance(z, np.ndarray) else type(z).__name__
            raise ModelError(f"z must be float32 of shape [batch, {nz}]; got {got}")
        if not self.conditional:
            if labels is not None:
                raise ModelError("labels given to an unconditional generator")
            return
        if labels is None:
            raise ModelError(f"this generator is conditional: pass labels, int64 of shape [{len(z)}] "
                             f"(class ids 0..{self.info.num_classes - 1})")
        if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or labels.shape != (len(z),):
            got = f"{labels.dtype} {list(labels.shape)}" if isinstance(labels, np.ndarray) else type(labels).__name__
            raise ModelError(f"labels must be int64 of shape [{len(z)}] (one per latent); got {got}")
        if len(labels) and (labels.min() < 0 or labels.max() >= self.info.num_classes):
            raise ModelError(f"labels must be class ids in 0..{self.info.num_classes - 1}; "
                             f"got {labels.min()}..{labels.max()}")

    def style_feeds(self, z: np.ndarray, psi: float = 1.0, z2: np.ndarray | None = None,
                    mix_layer: int | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A style-based model's STYLE_INPUTS for latents `z`: psi for every image, z2 (default z) mixed in from
        mix_layer (one layer, or one per image; default num_ws: no mixing). {} for other models."""
        if not self.styled:
            if z2 is not None or mix_layer is not None:
                raise InputError("mix_layer", "this model has no style layers to mix (only style-based models do)")
            return {}
        n = len(z)
        z2 = z if z2 is None else z2
        if not isinstance(z2, np.ndarray) or z2.dtype != np.float32 or z2.shape != z.shape:
            raise ModelError(f"z2 must be float32 of shape {list(z.shape)} (like z)")
        layers = np.broadcast_to(np.asarray(self.info.num_ws if mix_layer is None else mix_layer, np.int64), (n,))
        if len(layers) and (layers.min() < 0 or layers.max() > self.info.num_ws):
            raise InputError("mix_layer", f"{layers.min()}..{layers.max()} is out of range; valid: "
                                          f"0..{self.info.num_ws}")
        return {"psi": np.full(n, check_psi(psi), np.float32), "z2": z2, "mix_layer": np.ascontiguousarray(layers)}

    def run(self, z: np.ndarray, labels: np.ndarray | None = None, **style: object) -> np.ndarray:
        """The model's own output for these inputs (float NCHW or uint8 NHWC, see `info`); `style`: psi, z2 and
        mix_layer of a style-based model (`style_feeds`)."""
        self._check(z, labels)
        feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
        return self._run(feeds | self.style_feeds(z, **style))[0]

    def _run(self, feeds: dict[str, np.ndarray], outputs: tuple[str, ...] = ("images",)) -> list[np.ndarray]:
        """One session run of `outputs`; inputs the feeds leave out get their declared defaults."""
        for name, spec in self.defaults.items():
            if name not in feeds:
                feeds[name] = np.full((len(feeds["z"]), *spec["shape"]), spec["default"], dtype=spec["dtype"])
        try:
            return self.session.run(list(outputs), feeds)
        except (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.RuntimeException) as exc:  # a graph its metadata misdescribes: one line, the file named
            raise ModelError(f"{self.path}: onnxruntime could not run it: {str(exc).splitlines()[0]}") from exc

    def images(self, z: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 256, *, psi: float = 1.0,
               z2: np.ndarray | None = None, mix_layer: int | np.ndarray | None = None) -> np.ndarray:
        """uint8 [B, H, W, C] images, whatever the model's output format, in batches of `batch_size`.
        psi, z2, mix_layer: a style-based model's (`style_feeds`); other models take psi through z (`truncate`)."""
        self._check(z, labels)
        style = self.style_feeds(z, psi, z2, mix_layer)
        out = []
        for start in range(0, len(z), batch_size):
            part = slice(start, start + batch_size)
            feeds = {"z": z[part]} | ({} if labels is None else {"labels": labels[part]})
            raw = self._run(feeds | {k: v[part] for k, v in style.items()})[0]
            out.append(raw if self.info.output_dtype == "uint8" else to_uint8_nhwc(raw))
        return np.concatenate(out)


def to_uint8_nhwc(images):
    """float [B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C]: round((x + 1) * 127.5), clipped to 0..255.

    The one conversion of distgan, for numpy arrays here and torch tensors (on their own device, no
    import of torch needed) in training grids and evaluation; the uint8-output ONNX graph rounds the same.
    """
    is_array = isinstance(images, np.ndarray)
    if images.ndim != 4 or not (images.dtype.kind == "f" if is_array else images.is_floating_point()):
        raise ValueError(f"expected float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    scaled = ((images + 1.0) * 127.5).clip(0, 255).round()
    if is_array:
        return scaled.astype(np.uint8).transpose(0, 2, 3, 1)
    return scaled.byte().permute(0, 2, 3, 1)

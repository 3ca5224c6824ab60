"""An exported generator at run time, with onnxruntime and numpy only.

Deployment machines need not have torch, so nothing here imports it (a test runs
`distgan-sample` and checks `torch` never enters `sys.modules`). Everything a client
needs is in the model's `metadata_props` (keys below, written by `distgan.export`):
the latent size and distribution, the image shape, the class names, and how the
output is laid out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

PREFIX = "distgan."
# The contract with every client: all values are strings.
REQUIRED_KEYS = (
    "family", "nz", "channels", "height", "width", "num_classes", "class_names", "output_range",
    "output_layout", "output_dtype", "step", "dataset", "distgan_version", "config_hash", "quantization",
)


class ModelError(ValueError):
    """A file that is not a usable distgan ONNX generator, or inputs it cannot take."""


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
            low, high = (float(v) for v in get["output_range"].split(","))
            info = cls(
                family=get["family"], nz=int(get["nz"]), channels=int(get["channels"]),
                height=int(get["height"]), width=int(get["width"]), class_names=names,
                output_dtype=get["output_dtype"], output_layout=get["output_layout"], output_range=(low, high),
                step=int(get["step"]), dataset=get["dataset"], quantization=get["quantization"],
                metadata={k: v for k, v in meta.items() if k.startswith(PREFIX)},
            )
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{source}: malformed distgan metadata: {exc}") from exc
        if int(get["num_classes"]) != len(names):
            raise ModelError(f"{source}: {PREFIX}num_classes is {get['num_classes']} but "
                             f"{PREFIX}class_names lists {len(names)}")
        if (info.output_dtype, info.output_layout) not in (("float32", "NCHW"), ("uint8", "NHWC")):
            raise ModelError(f"{source}: unsupported output {info.output_dtype} {info.output_layout}")
        return info


def to_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    """float [B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C], rounded as the uint8-output graph does."""
    return np.round(np.clip((images + 1.0) * 127.5, 0, 255)).astype(np.uint8).transpose(0, 2, 3, 1)


class OnnxGenerator:
    """One onnxruntime session on an exported generator: checked inputs, images out."""

    def __init__(self, path: str | Path, *, threads: int = 0, providers: list[str] | None = None):
        """`threads=0` lets onnxruntime use one thread per physical core."""
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelError(f"{self.path}: onnxruntime cannot load it: {exc}") from exc
        self.info = GeneratorInfo.from_metadata(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        inputs = {i.name for i in self.session.get_inputs()}
        expected = {"z", "labels"} if self.info.num_classes else {"z"}
        if inputs != expected:
            raise ModelError(f"{self.path}: inputs are {sorted(inputs)}, expected {sorted(expected)}")

    @property
    def conditional(self) -> bool:
        return self.info.num_classes > 0

    def latents(self, n: int, seed: int) -> np.ndarray:
        """The n standard-normal latents of `seed`: the same seed gives the same images everywhere."""
        return np.random.default_rng(seed).standard_normal((n, self.info.nz), dtype=np.float32)

    def class_id(self, name: str) -> int:
        """A class name (case-insensitive) or index -> its id."""
        names = self.info.class_names
        if not names:
            raise ModelError(f"{self.path}: the model is unconditional; it has no classes (got {name!r})")
        lowered = [n.lower() for n in names]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        if name.isdigit() and int(name) < len(names):
            return int(name)
        raise ModelError(f"unknown class {name!r}; valid: {', '.join(names)}")

    def default_labels(self, n: int) -> np.ndarray | None:
        """Every class in turn (conditional models), or None."""
        return np.arange(n, dtype=np.int64) % self.info.num_classes if self.conditional else None

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

    def run(self, z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """The model's own output for these inputs (float NCHW or uint8 NHWC, see `info`)."""
        self._check(z, labels)
        feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
        return self.session.run(["images"], feeds)[0]

    def images(self, z: np.ndarray, labels: np.ndarray | None = None, batch_size: int = 256) -> np.ndarray:
        """uint8 [B, H, W, C] images, whatever the model's output format, in batches of `batch_size`."""
        self._check(z, labels)
        out = []
        for start in range(0, len(z), batch_size):
            part = self.run(z[start:start + batch_size],
                            None if labels is None else labels[start:start + batch_size])
            out.append(part if self.info.output_dtype == "uint8" else to_uint8_nhwc(part))
        return np.concatenate(out)

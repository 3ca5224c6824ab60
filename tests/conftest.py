"""Shared fixtures: small IDX datasets whose every image is recognisable by its pixels, and a pattern world
(images whose class is visible, its domain classifier, a GAN trained on it) for tests of what metrics say."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def make_idx_dataset(directory: Path, n_train: int, n_test: int, seed: int = 0):
    """IDX files of random images; pixel 0..1 hold the image index so tests can identify images."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, stem, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        images[:, 0, 1] = np.arange(n) // 256
        images[:, 0, 2] = 0 if split == "train" else 1
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(directory / f"{stem}-images-idx3-ubyte.gz", images)
        write_idx(directory / f"{stem}-labels-idx1-ubyte.gz", labels)
        out[split] = (images[..., None], labels.astype(np.int64))
    return out


def image_ids(images: np.ndarray) -> np.ndarray:
    """Identify images made by make_idx_dataset (uint8 [n, 28, 28, 1])."""
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 1, 0].astype(np.int64)


@pytest.fixture
def idx_dataset(tmp_path):
    arrays = make_idx_dataset(tmp_path / "raw", n_train=1000, n_test=200)
    return tmp_path / "raw", arrays


@pytest.fixture
def shards(tmp_path, idx_dataset):
    """1000 train images in uneven shards (6 x 150 + 100), chunks of 64."""
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    raw_dir, arrays = idx_dataset
    out = tmp_path / "shards"
    write_shards(read_idx_dataset("fashion-mnist", raw_dir), out, samples_per_shard=150, chunk_size=64)
    return out, arrays


def tar_members(path: Path) -> dict[str, tuple[int, int, int]]:
    """Each member's (header offset, data offset, data size) in a tar, by member name."""
    import tarfile

    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data, m.size) for m in tar.getmembers()}


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte in place (the file keeps its size, so only a checksum can tell)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def straddling_shard(data: Path, world: int, batch: int, seed: int, drop_last: bool) -> tuple[str, int]:
    """The shard that rank 0 and rank 1 share in epoch 0, and how many of its samples rank 0 reads."""
    from distgan.data.plan import plan_epoch
    from distgan.data.manifest import Manifest

    manifest = Manifest.from_json((data / "dataset.json").read_text(), "m")
    shards = manifest.splits["train"].shards
    plan = plan_epoch([s.num_samples for s in shards], 0, seed, 1, world, batch, drop_last)
    for slot, shard in enumerate(plan.shard_order):
        start = int(plan.starts[slot])
        if start < plan.rank_start < start + shards[shard].num_samples:
            return shards[shard].name, plan.rank_start - start
    raise AssertionError("no shard straddles the ranks' boundary")


def run_env(**extra: str) -> dict[str, str]:
    """Environment for child processes: this interpreter's venv first, this checkout first on the path (then
    whatever the caller's PYTHONPATH held, e.g. packages installed with --target), no stray accelerate config."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


# Two gloo ranks on CPUs (accelerate launch --cpu would start one process; ACCELERATE_USE_CPU=1 goes in the env).
LAUNCH_2_CPU = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


# Small, fast trainer settings for in-process and subprocess runs on the `shards` fixture.
TINY = ["model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0", "data.shuffle_buffer=64",
        "log.sample_grid=16", "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4"]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one global state per process; in-process runs each start a new one."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)


# --- the pattern world: a domain whose classes a small CNN learns perfectly, so FID and IS mean something ---

def pattern_images(labels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """Class c is a bright 7x7 square in cell c of a 4x3 grid, over noise: easy, but needs the pixels."""
    images = rng.integers(0, 60, (len(labels), size, size, 1), dtype=np.uint8)
    for i, c in enumerate(labels):
        r, q = divmod(int(c), 4)
        images[i, 2 + 9 * r: 9 + 9 * r, 1 + 7 * q: 6 + 7 * q, 0] = rng.integers(180, 256)
    return images


@pytest.fixture(scope="session")
def pattern_shards(tmp_path_factory) -> Path:
    """1200 train and 300 test pattern images (labels uniform over the 10 cells) as shards."""
    from distgan.data.shards import write_shards
    from distgan.data.sources import RawDataset, RawSplit

    rng = np.random.default_rng(0)
    splits = {}
    for name, n in (("train", 1200), ("test", 300)):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = pattern_images(labels, rng)
        splits[name] = RawSplit(labels=labels, load=lambda idx, images=images: images[idx])
    raw = RawDataset(name="patterns", height=28, width=28, channels=1,
                     classes=[f"cell{c}" for c in range(10)], splits=splits)
    out = tmp_path_factory.mktemp("patterns")
    write_shards(raw, out, samples_per_shard=500, chunk_size=100)
    return out


@pytest.fixture(scope="session")
def pattern_classifier(pattern_shards, tmp_path_factory):
    """(model, directory) of the pattern shards' domain classifier: 2 epochs, test accuracy 1.0."""
    from distgan.metrics import save_domain_classifier, train_domain_classifier

    model = train_domain_classifier(pattern_shards, epochs=2, batch_size=64, seed=0)
    return model, save_domain_classifier(model, tmp_path_factory.mktemp("domain"))


# The house config at TINY widths, batch 32, for 400 steps (~10 s on 2 busy cores): its EMA generator paints the
# dark background and bright blobs. Domain FID-300 against the test split, seeds 0-9 of this run: 468-728,
# where an untrained generator scores 1056-1072 (seed 0: 468 vs 1071). Fewer steps separated less (300: up to
# 0.83 of untrained) and batch 16 left some seeds worse than untrained (GAN training at 8 channels swings).
PATTERN_GAN = ["data.batch_size=32", "train.steps=400", "train.log_every=100", "train.sample_every=100000",
               "train.checkpoint_every=100000"]


@pytest.fixture(scope="session")
def pattern_gan(pattern_shards, tmp_path_factory) -> Path:
    """The run directory of a generator trained on the pattern shards (PATTERN_GAN)."""
    from accelerate.state import AcceleratorState

    from distgan import training
    from distgan.config import load_config

    out = tmp_path_factory.mktemp("pattern-gan")
    cfg = load_config(REPO / "configs/fashion_house.yaml",
                      [f"data.path={pattern_shards}", f"run_dir={out}", "name=t", *TINY, *PATTERN_GAN])
    try:
        assert training.train(cfg) == "completed"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    return out / "t"


# --- small generators, exported ------------------------------------------------------

GENERATOR_INFO = {"step": 7, "dataset": "synthetic", "config_hash": "0123456789abcdef", "distgan_version": "0.1.0"}


def generator_dir(tmp_path: Path, arch: str, shape: tuple[int, int, int], conditional: bool = False, ngf: int = 4,
                  classes: list[str] | None = None) -> Path:
    """A generator/ directory with outputs of order 1 and BatchNorms with non-trivial running statistics
    (conditional with `classes`, or with five classes c0..c4 when only `conditional` is set)."""
    import torch
    import torch.nn as nn

    from distgan.artifacts import save_generator
    from distgan.models import ModelConfig, build_generator

    classes = classes or ([f"c{i}" for i in range(5)] if conditional else [])
    torch.manual_seed(0)
    g = build_generator(ModelConfig(arch=arch, nz=16, ngf=ngf, mlp_hidden=16, conditional=bool(classes)), *shape,
                        len(classes))
    for m in g.modules():  # torch's default init, not DCGAN's N(0, 0.02): outputs of order 1, not 1e-4
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            m.reset_parameters()
    with torch.no_grad():
        for _ in range(3):  # train-mode forwards move the running statistics away from 0 and 1
            g(torch.randn(32, 16) * 3 + 1, torch.randint(0, len(classes), (32,)) if classes else None)
    save_generator(g.eval(), tmp_path / arch, {**GENERATOR_INFO, "classes": classes, "image_shape": list(shape)})
    return tmp_path / arch


# --- distgan-serve: two small exported generators and a running server ---------------

SERVE_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Sandal", "Ankle boot"]
# The session server's limits (small, so the tests can reach them).
SERVE_LIMITS = {"--max-n": 32, "--max-steps": 12, "--max-images": 50, "--max-query-bytes": 512}


@pytest.fixture(scope="session")
def serve_models(tmp_path_factory) -> dict[str, Path]:
    """A conditional 28x28 grayscale generator and an unconditional 64x64 RGB one, exported once a session."""
    from distgan.export import export_onnx

    root = tmp_path_factory.mktemp("serve-models")
    cond = generator_dir(root / "cond", "dcgan28", (1, 28, 28), classes=SERVE_CLASSES)
    rgb = generator_dir(root / "rgb", "dcgan64", (3, 64, 64))
    return {"cond": export_onnx(cond, root / "fashion28.onnx").path,
            "rgb": export_onnx(rgb, root / "faces64.onnx").path}


@pytest.fixture(scope="session")
def lapgan_model(tmp_path_factory) -> Path:
    """A conditional LAPGAN pyramid (28 -> 14 -> 7, SERVE_CLASSES), exported once a session: its graph has the
    stage outputs stage_0..stage_2 after images."""
    import torch

    from distgan.artifacts import save_generator
    from distgan.export import export_onnx
    from distgan.models.lapgan import LapganSpec, lapgan_from_spec

    root = tmp_path_factory.mktemp("lapgan-model")
    torch.manual_seed(0)
    g = lapgan_from_spec(LapganSpec(channels=1, height=28, width=28, num_classes=len(SERVE_CLASSES),
                                    conditional=True, coarse_nz=16, ngf=8, ndf=8))
    for m in g.modules():  # torch's default init, not DCGAN's N(0, 0.02): stages that visibly differ
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.reset_parameters()
    with torch.no_grad():  # running BatchNorm statistics that are not the init's
        g.train()(torch.randn(32, g.spec.total_nz), torch.randint(0, len(SERVE_CLASSES), (32,)))
    save_generator(g.eval(), root / "generator", {**GENERATOR_INFO, "classes": SERVE_CLASSES})
    return export_onnx(root, root / "pyramid28.onnx").path


def start_server(log: Path, *args: str | Path, timeout: float = 60) -> tuple[subprocess.Popen, str]:
    """`distgan-serve ARGS` in a subprocess (output to `log`); returns it once it prints the URL it serves."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distgan.serve.cli", *map(str, args)], env=run_env(
            OMP_NUM_THREADS="1"), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"^serving (http://\S+)$", log.read_text(), re.MULTILINE)
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"distgan-serve exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"distgan-serve printed no URL in {timeout} s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def served(serve_models, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """One server for the session: both models (the conditional one first), default host, SERVE_LIMITS."""
    limits = [str(a) for pair in SERVE_LIMITS.items() for a in pair]
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    proc, url = start_server(log, serve_models["cond"], serve_models["rgb"], "--port", "0", "--threads", "1", *limits)
    yield url.rstrip("/"), proc
    stop_server(proc)


# The upscale server's limits: a 300x101 photo at x2 (121,200 output pixels, two tiles across) fits, 400x200 not.
UPSCALE_LIMITS = {"--max-upload-bytes": 120_000, "--max-upscale-pixels": 150_000}


@pytest.fixture(scope="session")
def sr_model(tmp_path_factory) -> Path:
    """A tiny x2 RGB SRResNet exported as distgan-export exports SRGAN's (tests/test_srgan.py's, one block)."""
    import torch

    from distgan.export.image_onnx import export_image_model
    from distgan.models.srgan import SRGeneratorSpec, SRResNet

    torch.manual_seed(0)
    g = SRResNet(SRGeneratorSpec(arch="srgan", channels=3, height=16, width=16, num_classes=0, conditional=False,
                                 scale=2, ngf=8, blocks=1)).eval()
    with torch.no_grad():  # BatchNorm statistics as after training, so eval mode is not the identity
        for m in g.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("sr-model") / "photo_x2.onnx"
    export_image_model(g, path, channels=3, metadata={"task": "super-resolution", "family": "srgan", "step": 3,
                                                      "scale": 2, "dataset": "synthetic"})
    return path


@pytest.fixture(scope="session")
def upscale_served(serve_models, sr_model, tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """A mixed catalog: the conditional generator first, then the SR model; UPSCALE_LIMITS."""
    limits = [str(a) for pair in UPSCALE_LIMITS.items() for a in pair]
    log = tmp_path_factory.mktemp("upscale-log") / "server.log"
    proc, url = start_server(log, serve_models["cond"], sr_model, "--port", "0", "--threads", "1", *limits)
    yield url.rstrip("/"), proc
    stop_server(proc)


def weights_digest(run: Path) -> str:
    """sha256 over G, D and the EMA of a run's last checkpoint: names, dtypes, shapes and bytes."""
    import hashlib

    import torch
    from safetensors.torch import load_file

    last = sorted((run / "checkpoints").iterdir())[-1]
    digest = hashlib.sha256()
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        tensors = load_file(str(last / name))
        for key in sorted(tensors):
            t = tensors[key].contiguous().reshape(-1)
            digest.update(f"{name}:{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def descendants(pid: int) -> list[int]:
    """Every process under `pid` now (a launcher's ranks may run in sessions of their own: no process group
    finds them)."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, ended but not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

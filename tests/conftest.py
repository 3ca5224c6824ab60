"""Shared fixtures: small IDX datasets whose every image is recognisable by its pixels."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

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
    """Environment for child processes: this interpreter's venv first, no stray accelerate config."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


# Small, fast trainer settings for in-process and subprocess runs on the `shards` fixture.
TINY = ["model.ngf=8", "model.ndf=8", "data.batch_size=16", "data.num_workers=0", "data.shuffle_buffer=64",
        "log.sample_grid=16", "train.log_every=2", "train.sample_every=4", "train.checkpoint_every=4"]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one global state per process; in-process runs each start a new one."""
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)

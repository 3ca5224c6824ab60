"""Data layer: raw readers, shard writing, the streaming loader, verification and bad input."""

from __future__ import annotations

import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from functools import partial

import numpy as np
import pytest
from PIL import Image

from conftest import (FASHION_MNIST_DIR, REPO, flip_byte, image_ids, run_env, straddling_shard, tar_members,
                      write_idx)
from distgan.data import DataError, ShardLoader
from distgan.data.cli import main as data_cli
from distgan.data.manifest import Manifest
from distgan.data.shards import verify, write_shards
from distgan.data.folders import read_celeba_dataset, read_folder_dataset
from distgan.data.sources import read_idx, read_idx_dataset


def collect(loader: ShardLoader, epoch: int = 0, start: int = 0):
    batches = list(loader.epoch(epoch, start))
    images = np.concatenate([b.images.numpy() for b in batches])
    labels = np.concatenate([b.labels.numpy() for b in batches])
    return batches, images, labels


# --- raw readers -----------------------------------------------------------------------

def test_idx_reader_rejects_bad_files(tmp_path):
    bad = tmp_path / "x-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x09\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad, 3)
    truncated = tmp_path / "t-idx3-ubyte"
    write_idx(truncated, np.zeros((4, 28, 28), np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(truncated, 3)


def test_missing_source_names_the_place(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path)):
        read_idx_dataset("mnist", tmp_path)


def test_folder_reader_classes_and_wrong_size(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    raw = read_folder_dataset(tmp_path / "imgs", 16, 3, resize=False, test_fraction=0.2, seed=0)
    assert raw.classes == ["cats", "dogs"]
    assert raw.splits["train"].num_samples == 8 and raw.splits["test"].num_samples == 2
    assert raw.splits["train"].load(np.arange(8)).shape == (8, 16, 16, 3)
    Image.new("RGB", (20, 16)).save(tmp_path / "imgs" / "dogs" / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: image is 20x16, expected 16x16"):  # before any shard
        read_folder_dataset(tmp_path / "imgs", 16, 3, resize=False, test_fraction=0.0, seed=0)
    raw = read_folder_dataset(tmp_path / "imgs", 16, 3, resize=True, test_fraction=0.0, seed=0)
    assert write_shards(raw, tmp_path / "out2").splits["train"].num_samples == 11


def test_celeba_zip_with_partition_crops_then_resizes(tmp_path):
    import zipfile

    names = [f"{i:06d}.jpg" for i in range(1, 7)]
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as archive:
        for i, name in enumerate(names):
            image = Image.new("RGB", (178, 218), (0, 0, 0))
            image.paste((200, 100 + i, 50), (19, 39, 159, 179))  # the central 140x140 square
            buf = io.BytesIO()
            image.save(buf, "JPEG", quality=95)
            archive.writestr(f"img_align_celeba/{name}", buf.getvalue())
    (tmp_path / "list_eval_partition.txt").write_text(
        "".join(f"{n} {s}\n" for n, s in zip(names, "000012"))
    )
    raw = read_celeba_dataset(tmp_path / "img_align_celeba.zip", None, size=32, crop=140)
    assert {k: v.num_samples for k, v in raw.splits.items()} == {"train": 4, "valid": 1, "test": 1}
    images = raw.splits["train"].load(np.arange(4))
    assert images.shape == (4, 32, 32, 3)
    # The 140 crop is exactly the coloured square: no black border survives the resize.
    assert images[:, :, :, 0].min() > 150
    (tmp_path / "list_eval_partition.txt").write_text("000099.jpg 0\n")
    with pytest.raises(DataError, match="000099.jpg"):
        read_celeba_dataset(tmp_path / "img_align_celeba.zip", None, size=32, crop=140)


# --- shards and the loader ------------------------------------------------------------

def test_round_trip_every_image_once_over_ranks_and_workers(shards):
    out, arrays = shards
    manifest = Manifest.from_json((out / "dataset.json").read_text(), "m")
    assert [s.num_samples for s in manifest.splits["train"].shards] == [150] * 6 + [100]
    for world, workers in ((1, 0), (2, 2), (3, 1)):
        seen_images, seen_labels, counts = [], [], []
        for rank in range(world):
            loader = ShardLoader(str(out), "train", 16, rank=rank, world_size=world,
                                 num_workers=workers, drop_last=False, seed=3)
            batches, images, labels = collect(loader)
            counts.append(len(batches))
            seen_images.append(images)
            seen_labels.append(labels)
        assert len(set(counts)) == 1, counts
        images, labels = np.concatenate(seen_images), np.concatenate(seen_labels)
        ids = image_ids(images)
        # drop_last=False pads by wrapping: every image at least once, the extra ones repeats.
        assert set(ids) == set(range(1000))
        assert len(ids) - 1000 < world
        src_images, src_labels = arrays["train"]
        np.testing.assert_array_equal(images, src_images[ids])
        np.testing.assert_array_equal(labels, src_labels[ids])


def test_drop_last_gives_disjoint_equal_shares(shards):
    out, _ = shards
    ids = []
    for rank in range(2):
        loader = ShardLoader(str(out), "train", 32, rank=rank, world_size=2, num_workers=2)
        assert len(loader) == 1000 // 2 // 32
        batches, images, _ = collect(loader)
        assert all(len(b) == 32 for b in batches)
        ids.append(set(image_ids(images)))
    assert not ids[0] & ids[1]
    assert len(ids[0]) == len(ids[1]) == 15 * 32


def test_deterministic_and_reshuffled_per_epoch(shards):
    out, _ = shards
    make = partial(ShardLoader, str(out), "train", 50, num_workers=2, seed=7)
    a = image_ids(collect(make())[1])
    b = image_ids(collect(make())[1])
    c = image_ids(collect(make(), epoch=1)[1])
    d = image_ids(collect(make(seed=8))[1])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert sorted(a) == sorted(c)  # same images, another order


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_restart_at_any_batch_is_exact(shards, workers):
    out, _ = shards
    loader = ShardLoader(str(out), "train", 8, num_workers=workers, world_size=2, rank=1, seed=1)
    full = [image_ids(b.images.numpy()) for b in loader.epoch(2)]
    for start in (0, 1, 5, 29, len(full) - 1, len(full)):
        resumed = [image_ids(b.images.numpy()) for b in loader.epoch(2, start)]
        assert len(resumed) == len(full) - start
        for x, y in zip(resumed, full[start:]):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("workers,group", [(0, 1), (2, 1), (3, 2), (3, 7)])
def test_endless_stream_matches_epoch_by_epoch(shards, workers, group):
    """One set of workers across epochs (the trainer's stream) gives exactly the per-epoch batches,
    from any resume position, whatever the rotation of workers at each epoch boundary."""
    out, _ = shards
    loader = ShardLoader(str(out), "train", 8, num_workers=workers, world_size=2, rank=1, seed=1)
    loader.stream.group = group  # several messages per epoch, and epochs whose count is not a multiple
    n = len(loader)
    expected = [(e, i + 1, image_ids(b.images.numpy())) for e in (1, 2, 3) for i, b in enumerate(loader.epoch(e))]
    for start in (0, 3, n - 1, n):
        stream = loader.endless(1, start)
        got = [next(stream) for _ in range(3 * n - start)]
        stream.close()
        want = [x for x in expected if (x[0], x[1]) > (1, start)]
        assert [(e, i) for e, i, _ in got[:len(want)]] == [(e, i) for e, i, _ in want]
        for (_, _, batch), (_, _, ids) in zip(got, want):
            np.testing.assert_array_equal(image_ids(batch.images.numpy()), ids)


def test_fewer_shards_than_ranks_times_workers(shards):
    out, _ = shards
    # 7 shards over 4 ranks x 3 workers: split by samples, so nothing hangs or repeats.
    seen = []
    for rank in range(4):
        loader = ShardLoader(str(out), "test", 10, rank=rank, world_size=4, num_workers=3)
        batches, images, _ = collect(loader)
        assert len(batches) == 5
        seen.extend(image_ids(images))
    assert len(seen) == len(set(seen)) == 200


def test_too_little_data_for_one_batch_per_rank_is_refused(shards):
    out, _ = shards
    with pytest.raises(DataError, match="too few for one batch of 128 on each of 2 ranks"):
        ShardLoader(str(out), "test", 128, world_size=2)


def test_pipe_and_brace_urls(shards):
    out, _ = shards
    spec = f"pipe:cat {out}/train-{{000000..000006}}.tar"
    loader = ShardLoader(str(out), "train", 100, shards=spec, num_workers=1, drop_last=False)
    assert sorted(image_ids(collect(loader)[1])) == list(range(1000))
    with pytest.raises(DataError, match="expand to 2 URLs"):
        ShardLoader(str(out), "train", 100, shards=f"{out}/train-{{000000..000001}}.tar")


def test_pipe_closed_early_is_not_an_error(shards):
    from distgan.data.shards import iter_shard_chunks

    out, _ = shards
    manifest = Manifest.from_json((out / "dataset.json").read_text(), "dataset.json")
    # Like many CLIs (e.g. `aws s3 cp ... -`), this one exits non-zero when its reader goes away.
    copy = "import shutil, sys\ntry: shutil.copyfileobj(open(sys.argv[1], 'rb'), sys.stdout.buffer, 1024)\n" \
           "except BrokenPipeError: sys.exit(1)"
    chunks = iter_shard_chunks(f"pipe:{sys.executable} -c \"{copy}\" {out}/train-000000.tar", manifest)
    assert len(next(chunks).images) == 64
    chunks.close()  # a rank reading only the start of a shard; raised DataError('reading failed') before


def test_streams_over_http(shards):
    out, _ = shards
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        loader = ShardLoader(url, "train", 100, num_workers=2, drop_last=False)
        assert sorted(image_ids(collect(loader)[1])) == list(range(1000))
        with pytest.raises(DataError, match="cannot read the manifest"):
            ShardLoader(url + "/nothing-here", "train", 100)
    finally:
        server.shutdown()


# --- bad shards ---------------------------------------------------------------------------

def test_truncated_shard_is_named_by_loader_and_verify(shards, capsys):
    out, _ = shards
    victim = out / "train-000003.tar"
    victim.write_bytes(victim.read_bytes()[:40_000])
    with pytest.raises(DataError, match="train-000003.tar: .*truncated"):
        ShardLoader(str(out), "train", 10)
    problems = verify(out)
    assert problems and all("train-000003.tar" in p for p in problems)
    assert data_cli(["verify", str(out)]) == 1
    assert "train-000003.tar" in capsys.readouterr().err


def test_corrupt_shard_of_the_right_size(shards):
    out, _ = shards
    victim = out / "train-000002.tar"  # 150 images: chunks 0 and 1 of 64, chunk 2 of 22
    pristine = victim.read_bytes()
    members = tar_members(victim)
    flip_byte(victim, members["train-000002-000001.images.npy"][1] + 3000)  # one pixel: only a checksum can tell
    loader = ShardLoader(str(out), "train", 10, num_workers=0, drop_last=False)
    with pytest.raises(DataError, match=r"train-000002.tar: chunk 1 \(train-000002-000001\): checksum does not match"):
        collect(loader)
    assert any("train-000002.tar: chunk 1 (train-000002-000001): checksum" in p for p in verify(out))
    victim.write_bytes(pristine)
    flip_byte(victim, members["train-000002-000002.labels.npy"][1] + 130)  # a label of the last chunk
    with pytest.raises(DataError, match=r"train-000002.tar: chunk 2 \(train-000002-000002\): checksum does not match"):
        collect(loader)
    victim.write_bytes(pristine)
    flip_byte(victim, members["train-000002-000001.labels.npy"][0] + 20)  # a tar header, mid-shard
    with pytest.raises(DataError, match=r"train-000002.tar: chunk 1 \(train-000002-000001\) is incomplete"):
        collect(loader)
    broken = bytearray(pristine)
    header = pristine.find(b"\x93NUMPY")
    broken[header:header + 80] = b"\xff" * 80  # the first .npy member's header
    victim.write_bytes(bytes(broken))
    with pytest.raises(DataError, match=r"train-000002.tar: chunk 0 \(train-000002-000000\): checksum does not match"):
        collect(loader)
    assert any("train-000002.tar: sha256" in p for p in verify(out))
    # The opt-in for long runs: skip, count, and keep the batch count.
    skipping = ShardLoader(str(out), "train", 10, num_workers=2, drop_last=False, on_corrupt="skip")
    batches, images, _ = collect(skipping)
    assert len(batches) == len(skipping) == 100
    assert skipping.skipped == 150
    assert len(set(image_ids(images))) == 1000 - 150


def test_every_chunk_is_checked_whatever_part_of_the_shard_a_rank_reads(shards):
    """The whole-file sha256 only checks a shard one worker reads from start to end; a rank reading the
    second half of a shard must still find a flipped byte in it, and the rank reading its first half,
    which holds no bad byte, reads on."""
    out, _ = shards
    name, head = straddling_shard(out, world=2, batch=16, seed=4, drop_last=True)
    last = (150 - 1) // 64 if name != "train-000006.tar" else (100 - 1) // 64
    assert head < last * 64  # rank 1 reads the last chunk, rank 0 does not
    key = f"{name[:-4]}-{last:06d}"
    flip_byte(out / name, tar_members(out / name)[f"{key}.images.npy"][1] + 200)
    ranks = [ShardLoader(str(out), "train", 16, rank=r, world_size=2, num_workers=2, seed=4) for r in (0, 1)]
    assert len(collect(ranks[0])[0]) == len(ranks[0])
    with pytest.raises(DataError, match=rf"{name}: chunk {last} \({key}\): checksum does not match"):
        collect(ranks[1])


def test_format_1_manifest_still_loads_and_says_what_it_lacks(shards):
    """Shards of distgan before per-chunk sums: they load, with one warning per process, and a shard read
    end to end is still checked against its whole-file sha256, as before."""
    out, _ = shards
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["format_version"] = 1
    for shard in manifest["splits"]["train"]["shards"] + manifest["splits"]["test"]["shards"]:
        del shard["chunk_xxh3_128"]
    (out / "dataset.json").write_text(json.dumps(manifest))
    code = ("import sys; from distgan.data import ShardLoader\n"
            "for _ in range(2): ShardLoader(sys.argv[1], 'train', 10, num_workers=0)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], env=run_env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("OldManifestWarning") == 1 and "without per-chunk checksums" in proc.stderr
    flip_byte(out / "train-000002.tar", 3000)
    loader = ShardLoader(str(out), "train", 10, num_workers=0, drop_last=False)
    with pytest.raises(DataError, match=r"train-000002.tar: sha256 does not match"):
        collect(loader)
    assert verify(out) == [f"{out / 'train-000002.tar'}: sha256 does not match the manifest"]


class FileMaker:
    """Unpickling one of these creates `path`: the proof that something ran a pickle's code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def append_members(tar_path, members: dict[str, bytes]) -> None:
    with tarfile.open(tar_path, "a") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_pickle_member_is_never_unpickled(shards, tmp_path):
    import pickle

    out, _ = shards
    marker = tmp_path / "pwned"
    append_members(out / "train-000000.tar", {"train-000000-999999.data.pyd": pickle.dumps(FileMaker(marker))})
    # An object array hidden in a .npy member is refused too.
    evil_npy = io.BytesIO()
    np.save(evil_npy, np.array([FileMaker(marker)], dtype=object), allow_pickle=True)
    append_members(out / "train-000001.tar", {f"train-000001-999999.{ext}": evil_npy.getvalue()
                                              for ext in ("images.npy", "labels.npy")})
    problems = "\n".join(verify(out))
    assert "unexpected member 'train-000000-999999.data.pyd'" in problems
    assert "train-000001.tar: chunk 3 (train-000001-999999).images.npy: dtype object" in problems
    assert not marker.exists()


def test_manifest_that_does_not_match_its_shards(shards):
    out, _ = shards
    manifest = json.loads((out / "dataset.json").read_text())
    manifest["splits"]["train"]["shards"][0]["num_samples"] += 5
    manifest["splits"]["train"]["num_samples"] += 5
    (out / "dataset.json").write_text(json.dumps(manifest))
    assert any("train-000000.tar: holds 150 samples, manifest says 155" in p for p in verify(out))
    loader = ShardLoader(str(out), "train", 10, num_workers=0, drop_last=False)
    with pytest.raises(DataError, match="train-000000.tar: ends after 150 samples"):
        collect(loader)
    manifest["splits"]["train"]["shards"] = []
    manifest["splits"]["train"]["num_samples"] = 0
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="lists no shards"):
        ShardLoader(str(out), "train", 10)


def test_missing_shard_and_manifest(shards, tmp_path):
    out, _ = shards
    (out / "train-000004.tar").unlink()
    with pytest.raises(DataError, match="train-000004.tar: shard listed in the manifest is missing"):
        ShardLoader(str(out), "train", 10)
    with pytest.raises(DataError, match="no manifest here"):
        ShardLoader(str(tmp_path), "train", 10)


# --- CLI ----------------------------------------------------------------------------------

def test_cli_prepare_verify_show(idx_dataset, tmp_path, capsys):
    raw_dir, _ = idx_dataset
    out = tmp_path / "cli"
    assert data_cli(["prepare", "mnist", "--src", str(raw_dir), "--out", str(out),
                     "--samples-per-shard", "300"]) == 0
    assert sorted(p.name for p in out.glob("*.tar")) == [
        "test-000000.tar", "train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"]
    assert data_cli(["prepare", "mnist", "--src", str(raw_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert data_cli(["verify", str(out)]) == 0
    assert data_cli(["show", str(out), "--n", "20", "--out", str(tmp_path / "g.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.ndim == 2 and grid.std() > 10
    assert data_cli(["show", str(tmp_path), "--out", str(tmp_path / "h.png")]) == 2
    assert f"{tmp_path}/dataset.json: no manifest here" in capsys.readouterr().err
    assert data_cli(["prepare", "fashion-mnist", "--src", str(tmp_path), "--out", str(tmp_path / "x")]) == 2


def stored_split(out, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Every image and label of a split, read back from its shards."""
    from distgan.data.loader import read_manifest
    from distgan.data.shards import iter_shard_chunks

    manifest = read_manifest(str(out))
    chunks = [c for shard in manifest.split(split).shards for c in iter_shard_chunks(str(out / shard.name), manifest)]
    return np.concatenate([c.images for c in chunks]), np.concatenate([c.labels for c in chunks])


def test_cli_prepare_limit_keeps_a_seeded_subset_of_train(idx_dataset, tmp_path, capsys):
    raw_dir, arrays = idx_dataset  # 1000 train, 200 test images, each identifiable by its pixels
    prepare = ["prepare", "mnist", "--src", str(raw_dir), "--samples-per-shard", "40"]
    for name, limit, seed in (("a", 100, 3), ("b", 100, 3), ("c", 100, 4), ("small", 30, 3)):
        assert data_cli([*prepare, "--out", str(tmp_path / name), "--limit", str(limit), "--seed", str(seed)]) == 0
    assert "train: 100 images (a seeded subset of 1000, seed 3)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert manifest["source"]["limit"] == {"split": "train", "images": 100, "of": 1000, "seed": 3}
    assert manifest["splits"]["train"]["num_samples"] == 100 and manifest["splits"]["test"]["num_samples"] == 200
    # The same seed gives the same shards, byte for byte; another seed other images.
    assert manifest["splits"] == json.loads((tmp_path / "b" / "dataset.json").read_text())["splits"]
    images, labels = stored_split(tmp_path / "a")
    ids = image_ids(images)
    assert len(set(ids.tolist())) == 100
    assert np.array_equal(images, arrays["train"][0][ids]) and np.array_equal(labels, arrays["train"][1][ids])
    assert set(image_ids(stored_split(tmp_path / "c")[0]).tolist()) != set(ids.tolist())
    # A smaller limit with the same seed takes a subset of the larger one's images.
    assert set(image_ids(stored_split(tmp_path / "small")[0]).tolist()) < set(ids.tolist())
    assert len(stored_split(tmp_path / "a", "test")[0]) == 200  # the test split stays whole
    assert data_cli([*prepare, "--out", str(tmp_path / "d"), "--limit", "1001"]) == 2
    assert "--limit 1001: the train split of mnist has 1000 images; choose 1..1000" in capsys.readouterr().err
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_limit_applies_after_the_folder_test_split(tmp_path):
    from distgan.data.sources import limit_split

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(30):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i:02d}.png")
    raw = read_folder_dataset(folder, 8, 3, False, 0.2, seed=1)
    limited = limit_split(raw, 10, seed=1)
    assert limited.splits["train"].num_samples == 10 and limited.splits["test"].num_samples == 6
    train_values = set(limited.splits["train"].load(np.arange(10))[:, 0, 0, 0].tolist())
    test_values = set(raw.splits["test"].load(np.arange(6))[:, 0, 0, 0].tolist())
    assert len(train_values) == 10 and not train_values & test_values
    with pytest.raises(DataError, match="no 'valid' split to limit"):
        limit_split(raw, 5, seed=1, split="valid")


def test_failed_prepare_leaves_no_partial_shards(tmp_path):
    from distgan.data.sources import RawDataset, RawSplit

    def load(indices):
        if indices[0] != order[0]:
            raise DataError("image 17: cannot decode")
        return np.zeros((len(indices), 4, 4, 1), np.uint8)

    order = np.random.default_rng([0, len("train")]).permutation(30)
    raw = RawDataset("t", 4, 4, 1, [], {"train": RawSplit(np.full(30, -1, np.int64), load)})
    with pytest.raises(DataError, match="image 17"):
        write_shards(raw, tmp_path / "out", samples_per_shard=10)
    assert list((tmp_path / "out").rglob("*")) == []


def test_shards_are_reproducible(shards, idx_dataset, tmp_path):
    out, _ = shards
    again = tmp_path / "again"
    write_shards(read_idx_dataset("fashion-mnist", idx_dataset[0]), again, samples_per_shard=150, chunk_size=64)
    assert (again / "train-000000.tar").read_bytes() == (out / "train-000000.tar").read_bytes()


def readme_python_after(marker: str) -> str:
    """The first ```python block of README.md after `marker`, as written there."""
    text = (REPO / "README.md").read_text()
    start = text.index("```python\n", text.index(marker)) + len("```python\n")
    return text[start:text.index("```", start)]


def test_readmes_plain_webdataset_read_works_and_unpickles_nothing(shards, tmp_path):
    """README's plain-webdataset example, run as written on a shard that also carries a pickle member:
    it reads the arrays and never unpickles, where webdataset's .decode() would run the pickle's code."""
    import webdataset as wds

    import pickle

    out, _ = shards
    marker = tmp_path / "pwned"  # a third member of the last chunk:
    append_members(out / "train-000000.tar", {"train-000000-000002.meta.pyd": pickle.dumps(FileMaker(marker))})
    (tmp_path / "DIR").symlink_to(out)
    proc = subprocess.run([sys.executable, "-c", readme_python_after("plain webdataset reads them")],
                          cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["train-000000-000000 (64, 28, 28, 1) (64,)",
                                        "train-000000-000001 (64, 28, 28, 1) (64,)",
                                        "train-000000-000002 (22, 28, 28, 1) (22,)"]
    assert not marker.exists()
    for _ in wds.WebDataset(str(out / "train-000000.tar"), shardshuffle=False).decode():
        pass
    assert marker.exists()  # what README warns of


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_round_trip(tmp_path):
    raw = read_idx_dataset("fashion-mnist", None)
    assert raw.source["path"] == str(FASHION_MNIST_DIR)
    manifest = write_shards(raw, tmp_path / "fm")
    assert manifest.splits["train"].num_samples == 60000 and manifest.splits["test"].num_samples == 10000
    assert manifest.classes[5] == "Sandal"
    loader = ShardLoader(str(tmp_path / "fm"), "test", 500, num_workers=2, drop_last=False)
    _, images, labels = collect(loader)
    expected = raw.splits["test"].load(np.arange(10000))
    # Same multiset of (image, label): sort both by their bytes.
    key = lambda im, lb: sorted(zip((x.tobytes() for x in im), lb.tolist()))
    assert key(images, labels) == key(expected, raw.splits["test"].labels)

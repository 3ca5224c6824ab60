"""`distgan-data prepare` on real folders: every bad file at once, the right pixels per image kind,
geometry, labels, duplicates, CIFAR's binary distribution, CelebA attributes, resume after a kill."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import run_env
from distgan.data import DataError
from distgan.data.cli import main as data_cli
from distgan.data.folders import FolderOptions, read_celeba_dataset, read_folder_dataset
from distgan.data.manifest import Manifest
from distgan.data.shards import iter_shard_chunks, verify
from image_kinds import messy_folder


def read_all(out):
    """Every (image, label) of every split in a prepared folder, in shard order."""
    manifest = Manifest.from_json((out / "dataset.json").read_text(), "m")
    found = {}
    for name, split in manifest.splits.items():
        chunks = [c for shard in split.shards for c in iter_shard_chunks(str(out / shard.name), manifest, shard)]
        found[name] = (np.concatenate([c.images for c in chunks]), np.concatenate([c.labels for c in chunks]))
    return manifest, found


def quiet(message: str) -> None:
    pass


# --- the messy folder -----------------------------------------------------------------

def test_default_run_names_every_bad_file_in_one_error(tmp_path, capsys):
    _, bad, _ = messy_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert data_cli(["prepare", "folder", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "16",
                     "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert f"{len(bad)} bad file(s)" in err and "nothing was written" in err
    for name, word in bad.items():
        line = next(line for line in err.splitlines() if line.strip().startswith(f"{name}:"))
        assert word in line, line
    assert "2 hidden" in err and "2 symlink loop" in err and "not an image file (.txt)" in err
    assert "1 not a regular file" in err  # the FIFO: never opened, never a hang
    assert not (out / "dataset.json").exists() and not list(out.glob("*.tar"))
    assert verify(out) == [f"{out / 'dataset.json'}: missing"]
    report = json.loads((out / "prepare-report.json").read_text())
    assert {e["file"] for e in report["entries"] if e["action"] == "refused"} == set(bad)
    assert data_cli(["prepare", "folder", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "16",
                     "--bad-limit", "2"]) == 2
    assert "... and 2 more" in capsys.readouterr().err


def test_skip_bad_writes_the_rest_and_reports_each_file(tmp_path, capsys):
    good, bad, skipped = messy_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert data_cli(["prepare", "folder", "--src", str(tmp_path / "src"), "--out", str(out), "--size", "16",
                     "--skip-bad", "--test-fraction", "0"]) == 0
    assert verify(out) == []
    manifest, found = read_all(out)
    assert len(found["train"][0]) == len(good)
    report = json.loads((out / "prepare-report.json").read_text())
    entries = {e["file"]: e for e in report["entries"]}
    for name, word in bad.items():
        assert entries[name]["action"] == "skipped" and word in entries[name]["reason"]
    for name, reason in skipped.items():
        assert entries[name] == {"file": name, "reason": reason, "action": "skipped"}
    assert entries["plain_copy.png"] == {"file": "plain_copy.png", "reason": "exact duplicate of plain.png",
                                         "action": "kept"}
    counts = manifest.source["prepare_report"]
    assert counts["bad"] == len(bad) and counts["images_written"] == len(good) and counts["duplicates"] == 1
    assert counts["converted"] == {"sixteen_bit": 2, "exif_rotated": 1, "alpha": 1, "cmyk": 1, "palette": 2,
                                   "icc": 1, "animated": 1, "gray_to_rgb": 2}
    assert report["converted"]["animated"]["frames_dropped"] == 2
    assert report["aspect_ratios"]["square (+-10%)"] == len(good)
    assert not (out / ".prepare").exists()
    # The shards hold exactly the references (as a multiset: they are shuffled).
    stored = sorted(im.tobytes() for im in found["train"][0])
    assert stored == sorted(ref.tobytes() for ref in good.values())


def test_every_kind_decodes_to_its_reference(tmp_path):
    good, _, _ = messy_folder(tmp_path / "src")
    raw = read_folder_dataset(tmp_path / "src", 16, 3, False, 0.0, 0, FolderOptions(skip_bad=True), say=quiet)
    names = sorted(good)  # the train split of test_fraction 0 is every kept file in name order
    images = raw.splits["train"].load(np.arange(len(names)))
    for name, image in zip(names, images):
        assert np.array_equal(image, good[name]), (name, np.abs(image.astype(int) - good[name]).mean())


def test_alpha_background_channels_and_refusal(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :4, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(src / "half.png")
    Image.fromarray(np.full((8, 8, 3), (255, 0, 0), np.uint8)).save(src / "red.png")
    black = read_folder_dataset(src, 8, 3, False, 0.0, 0, FolderOptions(background=(0, 0, 64)), say=quiet)
    half = black.splits["train"].load(np.array([0]))[0]
    assert (half[:, :4] == (200, 0, 0)).all() and (half[:, 4:] == (0, 0, 64)).all()
    gray = read_folder_dataset(src, 8, 1, False, 0.0, 0, say=quiet)
    assert gray.report.converted["rgb_to_gray"]["count"] == 2
    assert gray.splits["train"].load(np.array([1]))[0, 0, 0, 0] == 76  # ITU-R 601: 0.299 * 255
    with pytest.raises(DataError, match=r"half\.png: has transparent pixels \(--alpha error"):
        read_folder_dataset(src, 8, 3, False, 0.0, 0, FolderOptions(alpha="error"), say=quiet)


def test_transforms_and_the_aspect_histogram(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    wide = np.zeros((16, 32, 3), np.uint8)
    wide[:, :16] = (255, 0, 0)
    wide[:, 16:] = (0, 0, 255)
    Image.fromarray(wide).save(src / "wide.png")

    def prepared(transform):
        options = FolderOptions(transform=transform, background=(0, 255, 0))
        raw = read_folder_dataset(src, 8, 3, False, 0.0, 0, options, say=quiet)
        return raw, raw.splits["train"].load(np.array([0]))[0].astype(int)

    def near(pixels, colour):  # Lanczos rings by a level or two next to an edge
        return np.abs(pixels - np.array(colour)).max() <= 2

    raw, crop = prepared("center-crop")  # the middle 16x16: half red, half blue
    assert near(crop[:, :3], (255, 0, 0)) and near(crop[:, 5:], (0, 0, 255))
    assert raw.report.aspect_ratios["3:2 - 2:1"] == 1 and raw.report.center_crop_keeps == 0.5
    _, pad = prepared("pad")  # the whole image in the middle 4 rows, the background above and below
    assert near(pad[:2], (0, 255, 0)) and near(pad[6:], (0, 255, 0)) and near(pad[2:6, :3], (255, 0, 0))
    _, stretched = prepared("resize")
    assert near(stretched[:, :3], (255, 0, 0)) and near(stretched[:, 5:], (0, 0, 255))
    _, letterbox = prepared("center-crop-wide")  # 2:1 already: the whole image in 8x4, letterboxed
    assert near(letterbox[:2], (0, 255, 0)) and near(letterbox[2:6, :3], (255, 0, 0))
    with pytest.raises(DataError, match=r"wide\.png: image is 32x16, expected 8x8"):
        read_folder_dataset(src, 8, 3, False, 0.0, 0, say=quiet)


def test_large_jpeg_decoded_at_reduced_scale_stays_close_to_the_full_decode():
    from distgan.data.images import DecodeOptions, decode, reduce_jpeg

    y, x = np.mgrid[0:384, 0:512]
    scene = np.stack([np.sin(x / 20), np.cos(y / 15), np.sin((x + y) / 40)], axis=2) * 100 + 128
    noisy = scene + np.random.default_rng(0).normal(0, 12, scene.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    options = DecodeOptions(64, 3, "center-crop")
    image = Image.open(io.BytesIO(buf.getvalue()))
    assert reduce_jpeg(image, options) and image.size == (256, 192)  # half scale: 192 >= 3 x 64
    decoded = decode(buf.getvalue(), options)
    assert (decoded.width, decoded.height) == (512, 384)  # the source's size, not the reduced decode's
    full = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").crop((64, 0, 448, 384))
    reference = np.asarray(full.resize((64, 64), Image.Resampling.LANCZOS), np.int64)
    assert np.abs(decoded.pixels.astype(np.int64) - reference).mean() < 1.0


# --- labels and duplicates --------------------------------------------------------------

def test_metadata_labels_csv_and_jsonl(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 10 * i, np.uint8)).save(src / "a" / f"{i}.png")
    (src / "metadata.csv").write_text("file_name,label\na/0.png,cat\na/1.png,dog\na/2.png,cat\na/3.png,dog\n"
                                      "a/9.png,cat\n")
    raw = read_folder_dataset(src, 8, 3, False, 0.0, 0, FolderOptions(metadata=src / "metadata.csv"), say=quiet)
    assert raw.classes == ["cat", "dog"] and raw.splits["train"].labels.tolist() == [0, 1, 0, 1]
    assert {"file": "a/9.png", "reason": "listed in metadata.csv but not found", "action": "skipped"} \
        in raw.report.entries
    (src / "metadata.jsonl").write_text("\n".join(json.dumps({"file_name": f"a/{i}.png", "species": s})
                                                  for i, s in enumerate(["owl", "emu", "owl"])) + "\n")
    options = FolderOptions(metadata=src / "metadata.jsonl", label_column="species")
    with pytest.raises(DataError, match=r"a/3\.png: no row in metadata\.jsonl"):
        read_folder_dataset(src, 8, 3, False, 0.0, 0, options, say=quiet)
    (src / "metadata.jsonl").write_text('{"file_name": "a/0.png"}\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl:1: needs the columns file_name and species"):
        read_folder_dataset(src, 8, 3, False, 0.0, 0, options, say=quiet)


def test_duplicates_across_train_and_test_are_reported_and_dropped_with_dedup(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):  # ten images, each twice: a 50% test split must put some pair across it
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(src / f"{i}.png")
        (src / f"{i}-copy.png").write_bytes((src / f"{i}.png").read_bytes())
    raw = read_folder_dataset(src, 8, 3, False, 0.5, 0, FolderOptions(skip_bad=True))
    across = raw.report.counts["duplicates_across_train_test"]
    assert across > 0 and raw.report.counts["duplicates"] == 10
    assert f"warning: {across} image(s) in train have an exact duplicate in test" in capsys.readouterr().out
    crossing = [e for e in raw.report.entries if "in test (inflates test metrics" in e["reason"]]
    assert len(crossing) == across and all(e["action"] == "kept" for e in crossing)
    deduped = read_folder_dataset(src, 8, 3, False, 0.5, 0, FolderOptions(dedup=True), say=quiet)
    assert deduped.report.counts["duplicates_across_train_test"] == 0
    assert sum(s.num_samples for s in deduped.splits.values()) == 10
    assert sum(e["action"] == "skipped" and "exact duplicate" in e["reason"] for e in deduped.report.entries) == 10


# --- CIFAR (binary distribution) and CelebA attributes ----------------------------------

def cifar10_archive(path, per_batch=7, tamper=None):
    """A cifar-10-binary.tar.gz in the real layout (fewer records): returns (train, test) (images, labels)."""
    rng = np.random.default_rng(3)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    made = {}
    with tarfile.open(path, "w:gz") as archive:
        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))

        add("batches.meta.txt", "\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                           "horse", "ship", "truck"]).encode() + b"\n\n")
        for name in names:
            images = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, per_batch, dtype=np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(per_batch, -1)  # R plane, G plane, B plane
            add(name, np.concatenate([labels[:, None], planes], axis=1).tobytes())
            made[name] = (images, labels.astype(np.int64))
    train = [made[n] for n in names[:5]]
    return ((np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])), made[names[5]])


def test_cifar10_binary_round_trip_is_exact(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    (train_images, train_labels), (test_images, test_labels) = cifar10_archive(archive)
    out = tmp_path / "out"
    assert data_cli(["prepare", "cifar10", "--src", str(archive), "--out", str(out)]) == 0
    manifest, found = read_all(out)
    assert manifest.classes[9] == "truck" and manifest.image_shape == (32, 32, 3)
    for name, (images, labels) in (("train", (train_images, train_labels)), ("test", (test_images, test_labels))):
        got_images, got_labels = found[name]
        key = lambda ims, lbs: sorted(zip((x.tobytes() for x in ims), lbs.tolist()))
        assert key(got_images, got_labels) == key(images, labels)


def test_cifar100_binary_fine_labels(tmp_path):
    from distgan.data.cifar import read_cifar_dataset

    rng = np.random.default_rng(5)
    made = {}
    with tarfile.open(tmp_path / "cifar-100-binary.tar.gz", "w:gz") as archive:
        members = {"fine_label_names.txt": "\n".join(f"fine{i}" for i in range(100)).encode() + b"\n",
                   "coarse_label_names.txt": "\n".join(f"coarse{i}" for i in range(20)).encode() + b"\n"}
        for name, n in (("train.bin", 5), ("test.bin", 3)):
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            coarse, fine = rng.integers(0, 20, n, dtype=np.uint8), rng.integers(0, 100, n, dtype=np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
            members[name] = np.concatenate([coarse[:, None], fine[:, None], planes], axis=1).tobytes()
            made[name] = (images, fine)
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-100-binary/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    raw = read_cifar_dataset("cifar100", tmp_path / "cifar-100-binary.tar.gz")
    assert len(raw.classes) == 100 and raw.classes[7] == "fine7"
    for split, name in (("train", "train.bin"), ("test", "test.bin")):
        images, fine = made[name]
        assert raw.splits[split].labels.tolist() == fine.tolist()
        assert np.array_equal(raw.splits[split].load(np.arange(len(fine))), images)


class Marker:
    """Unpickling this creates a file: proof that something unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_pickle_version_is_refused_unopened(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = pickle.dumps(Marker(marker))
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    renamed = tmp_path / "cifar.tar.gz"  # refused by its content, whatever its name
    renamed.write_bytes(archive.read_bytes())
    for src in (archive, renamed):
        assert data_cli(["prepare", "cifar10", "--src", str(src), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert "Python (pickle) version; distgan never unpickles" in err and "cifar-10-binary.tar.gz" in err
    assert not marker.exists()


def test_cifar_download_checks_the_digest(tmp_path):
    from distgan.data.cifar import download_cifar

    served = tmp_path / "served" / "cifar-10-binary.tar.gz"
    served.parent.mkdir()
    cifar10_archive(served, per_batch=2)
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    path = download_cifar("cifar10", tmp_path / "cache", url=served.as_uri(), md5=md5)
    assert path.read_bytes() == served.read_bytes()
    with pytest.raises(DataError, match="could not download"):
        download_cifar("cifar10", tmp_path / "cache2", url=served.as_uri(), md5="0" * 32)


def test_celeba_attribute_labels(tmp_path):
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    names = [f"{i:06d}.jpg" for i in range(1, 5)]
    for name in names:
        Image.new("RGB", (178, 218), (90, 90, 90)).save(folder / name, quality=95)
    (tmp_path / "list_attr_celeba.txt").write_text(
        "4\nBald Smiling Young\n" + "".join(f"{n} -1 {s} 1\n" for n, s in zip(names, ["1", "-1", "-1", "1"])))
    raw = read_celeba_dataset(tmp_path, None, size=16, crop=140, attribute="Smiling")
    assert raw.classes == ["not Smiling", "Smiling"] and raw.splits["train"].labels.tolist() == [1, 0, 0, 1]
    with pytest.raises(DataError, match="--attr Happy: not in .* it has Bald, Smiling, Young"):
        read_celeba_dataset(tmp_path, None, size=16, crop=140, attribute="Happy")


# --- resume ------------------------------------------------------------------------------

@pytest.mark.slow
def test_prepare_killed_mid_scan_resumes_and_matches_a_clean_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1500):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(src / f"{i:04d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "distgan.data.cli", "prepare", "folder", "--src", str(src), "--out", str(out),
               "--size", "8", "--workers", "1", "--samples-per-shard", "500"]
    proc = subprocess.Popen(command, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    journal = out / ".prepare" / "scan.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.is_file() and journal.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert verify(out) == [f"{out / 'dataset.json'}: missing"]  # nothing verify could pass
    done = journal.read_text().count("\n") * 32
    assert done < 1500, "the scan finished before the kill"
    again = subprocess.run(command, env=run_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    resumed = int(again.stdout.split("resuming the scan: ")[1].split(" of ")[0].replace(",", ""))
    assert 64 <= resumed < 1500
    assert verify(out) == []
    clean = tmp_path / "clean"
    assert data_cli(["prepare", "folder", "--src", str(src), "--out", str(clean), "--size", "8",
                     "--samples-per-shard", "500"]) == 0
    for shard in sorted(p.name for p in clean.glob("*.tar")):
        assert (out / shard).read_bytes() == (clean / shard).read_bytes(), shard
    assert sorted(os.listdir(out)) == sorted(os.listdir(clean))

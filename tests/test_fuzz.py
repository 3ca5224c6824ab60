"""Fuzzed inputs (Hypothesis): whatever a dataset.json, a config YAML or a checkpoint's state.json holds, the outcome
is the file read, or the one error type of its layer naming the file (and the key, where one is at fault); never
another exception, which a CLI would show as a traceback. Example counts are small: this runs in `make test`."""

from __future__ import annotations

import io
import json
import sys
from contextlib import redirect_stderr, redirect_stdout

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import REPO, TINY
from distgan.config import ConfigError, load_config
from distgan.data import DataError
from distgan.data.manifest import Manifest
from distgan.training import TrainingError
from distgan.training.checkpoint import read_state

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
                           | st.text(max_size=12), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)


def mutated(document: object, draw) -> object:
    """`document` with one value somewhere replaced, one key removed, or one key added."""
    if isinstance(document, dict) and document:
        key = draw(st.sampled_from(sorted(document)))
        action = draw(st.sampled_from(["replace", "remove", "recurse", "add"]))
        out = dict(document)
        if action == "remove":
            del out[key]
        elif action == "add":
            out[draw(st.text(max_size=8))] = draw(JSON_VALUES)
        elif action == "recurse":
            out[key] = mutated(out[key], draw)
        else:
            out[key] = draw(JSON_VALUES)
        return out
    if isinstance(document, list) and document:
        i = draw(st.integers(0, len(document) - 1))
        return [*document[:i], mutated(document[i], draw), *document[i + 1:]]
    return draw(JSON_VALUES)


@pytest.fixture(scope="module")
def manifest_text(tmp_path_factory) -> str:
    from conftest import make_idx_dataset
    from distgan.data.shards import write_shards
    from distgan.data.sources import read_idx_dataset

    root = tmp_path_factory.mktemp("fuzz")
    make_idx_dataset(root / "raw", n_train=100, n_test=20)
    write_shards(read_idx_dataset("fashion-mnist", root / "raw"), root / "shards", samples_per_shard=40, chunk_size=16)
    return (root / "shards" / "dataset.json").read_text()


@FUZZ
@given(data=st.data())
def test_a_fuzzed_dataset_json_is_read_or_refused_by_name(manifest_text, data):
    valid = json.loads(manifest_text)
    kind = data.draw(st.sampled_from(["mutated", "bytes", "cut"]))
    if kind == "mutated":
        raw = json.dumps(mutated(valid, data.draw)).encode()
    elif kind == "cut":
        raw = manifest_text.encode()[:data.draw(st.integers(0, len(manifest_text) - 1))]
    else:
        raw = data.draw(st.binary(max_size=64))
    try:
        Manifest.from_json(raw, "x/dataset.json")
    except DataError as exc:
        assert str(exc).startswith("x/dataset.json: ") and "\n" not in str(exc)


def test_distgan_data_verify_on_a_non_utf8_dataset_json_says_so_in_one_line(manifest_text, tmp_path):
    """Before: a UnicodeDecodeError traceback."""
    from distgan.data import cli

    (tmp_path / "dataset.json").write_bytes(b"\xff\xfe" + manifest_text.encode("utf-16-le"))
    out = io.StringIO()
    with redirect_stderr(out), redirect_stdout(out):
        status = cli.main(["verify", str(tmp_path)])
    assert status != 0 and "dataset.json: not UTF-8 text" in out.getvalue()


CONFIG_KEYS = {"model": ["arch", "ngf", "ndf", "nz", "conditional", "spectral_norm"],
               "data": ["batch_size", "num_workers", "split", "on_corrupt"],
               "train": ["steps", "log_every", "checkpoint_every", "resume", "sync_every", "force_unlock"],
               "loss": ["kind", "r1_gamma", "r1_every", "d_steps"], "optim": ["g_lr", "ema_decay", "g_betas"],
               "aug": ["policy", "p"], "log": ["log_with", "sample_grid"]}


@st.composite
def config_yaml(draw) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=60))
    tree = {}
    for section in draw(st.lists(st.sampled_from(sorted(CONFIG_KEYS)), max_size=3, unique=True)):
        keys = draw(st.lists(st.sampled_from(CONFIG_KEYS[section] + ["nonsense"]), max_size=3, unique=True))
        tree[section] = {key: draw(JSON_VALUES) for key in keys} if draw(st.booleans()) else draw(JSON_VALUES)
    return yaml.safe_dump(tree)


@FUZZ
@given(text=config_yaml())
def test_a_fuzzed_config_yaml_is_loaded_or_refused_by_key(text, tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        load_config(path, [])
    except ConfigError as exc:
        assert "\n" not in str(exc).strip() or "config" in str(exc)


@FUZZ
@given(data=st.data())
def test_a_fuzzed_checkpoint_state_json_is_read_or_refused_by_key(data, tmp_path_factory):
    valid = {"step": 8, "epoch": 0, "batch": 8, "world_size": 1, "config_hash": "abc", "data_manifest": "def",
             "loss_kind": "bce", "skipped_samples": 0, "log_interval": {"steps": 0, "sums": [0.0] * 8}}
    raw = (json.dumps(mutated(valid, data.draw)).encode() if data.draw(st.booleans())
           else data.draw(st.binary(max_size=40)))
    checkpoint = tmp_path_factory.mktemp("ckpt")
    (checkpoint / "state.json").write_bytes(raw)
    try:
        saved = read_state(checkpoint)
    except TrainingError as exc:
        assert str(exc).startswith(f"{checkpoint / 'state.json'}: ") and "\n" not in str(exc)
    else:
        assert all(isinstance(saved[k], int) and saved[k] >= 0 for k in ("step", "epoch", "batch"))


@pytest.mark.slow
def test_distgan_train_on_a_damaged_state_json_says_so_in_one_line(shards, tmp_path):
    """Through the CLI, in a process of its own: before, a KeyError traceback."""
    import subprocess

    from conftest import run_env

    data, _ = shards
    cmd = [sys.executable, str(REPO / "distgan" / "train.py"), "--config", str(REPO / "configs/fashion_dcgan.yaml"),
           f"data.path={data}", f"run_dir={tmp_path}", "name=t", *TINY, "train.steps=4"]
    subprocess.run(cmd, env=run_env(OMP_NUM_THREADS="1"), check=True, capture_output=True, timeout=300)
    state = tmp_path / "t" / "checkpoints" / "step-0000004" / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "step": "four"}))
    proc = subprocess.run([*cmd[:-1], "train.steps=8"], env=run_env(OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"distgan-train: error: {state}: key 'step' must be an integer >= 0, "
                                                f"got 'four'"]


def npy_member(draw, image_shape: tuple[int, ...]) -> bytes:
    """A .npy member as a damaged or hostile shard could hold it: valid arrays of any dtype/shape, a valid header
    with a cut or padded body, a header with fuzzed text, or random bytes."""
    import numpy as np

    from distgan.data.manifest import encode_array

    kind = draw(st.sampled_from(["array", "cut", "header", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=80))
    dtype = draw(st.sampled_from(["uint8", "int64", "float32", "int32"]))
    shape = draw(st.sampled_from([(2, *image_shape), (2,), (3, *image_shape[::-1])])
                 | st.lists(st.integers(0, 4), max_size=4).map(tuple))
    good = encode_array(np.zeros(shape, dtype))
    if kind == "array":
        return good
    if kind == "cut":
        return good[:draw(st.integers(0, len(good)))] + draw(st.binary(max_size=8))
    header_end = good.index(b"\n") + 1
    text = draw(st.sampled_from([good[10:header_end].decode("latin1"),
                                 "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }",
                                 "{'descr': '<u1', 'fortran_order': True, 'shape': (-3, 2), }",
                                 "{'descr': 'x', 'shape': 5}", draw(st.text(max_size=30))]))
    body = text.encode("latin1", "replace")
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body + good[header_end:]


@FUZZ
@given(data=st.data())
def test_fuzzed_shard_members_are_read_or_refused_naming_the_shard(manifest_text, data, tmp_path_factory):
    """A shard whose members (names, .npy headers, bodies) are fuzzed, read without a manifest's checksums (what a
    hand-made or foreign shard gets): every chunk comes out checked, or a DataError names the shard; never another
    exception, never an unpickle."""
    import tarfile

    from distgan.data.manifest import IMAGES_EXT, LABELS_EXT, Manifest
    from distgan.data.shards import iter_shard_chunks

    manifest = Manifest.from_json(manifest_text, "dataset.json")

    path = tmp_path_factory.mktemp("shard") / "bad-000000.tar"
    names = data.draw(st.lists(st.sampled_from([f"c0.{IMAGES_EXT}", f"c0.{LABELS_EXT}", f"c1.{IMAGES_EXT}",
                                                f"c1.{LABELS_EXT}", "c0.pickle", "c1.txt"]), max_size=4))
    with tarfile.open(path, "w") as tar:
        for name in names:
            payload = npy_member(data.draw, manifest.image_shape)
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    try:
        chunks = list(iter_shard_chunks(str(path), manifest, None))
    except DataError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc)
    else:
        for chunk in chunks:
            assert chunk.images.dtype.name == "uint8" and chunk.images.shape[1:] == manifest.image_shape
            assert chunk.labels.dtype.name == "int64" and chunk.labels.shape == (len(chunk.images),)


def tiny_onnx_generator(path, metadata: dict[str, str], nz: int = 4, shape: tuple[int, int, int] = (1, 2, 2)) -> None:
    """A real ONNX generator (z [N, nz] -> tanh(z W) as [N, C, H, W] images) carrying `metadata`."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = int(np.prod(shape))
    weight = numpy_helper.from_array(np.linspace(-1, 1, nz * size, dtype=np.float32).reshape(nz, size), "w")
    target = numpy_helper.from_array(np.array([-1, *shape], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], ["flat"]), helper.make_node("Reshape", ["flat", "shape"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["images"])], "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", nz])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", *shape])], [weight, target])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


GOOD_METADATA = {f"distgan.{k}": v for k, v in {
    "family": "dcgan", "nz": "4", "channels": "1", "height": "2", "width": "2", "num_classes": "0",
    "class_names": "[]", "output_range": "-1,1", "output_layout": "NCHW", "output_dtype": "float32", "step": "8",
    "dataset": "fuzz", "distgan_version": "0", "config_hash": "abc", "quantization": "none", "latent": "standard_normal",
    "inputs": "z", "input_specs": json.dumps([{"name": "z", "dtype": "float32", "shape": [4]}]), "num_ws": "0"}.items()}


def test_the_hand_made_onnx_generator_loads_and_samples(tmp_path):
    """The fuzz below starts from a model that works: otherwise every example would be a refusal."""
    from distgan.runtime import OnnxGenerator

    tiny_onnx_generator(tmp_path / "g.onnx", GOOD_METADATA)
    drawing = OnnxGenerator(tmp_path / "g.onnx").sample(seed=0, n=2)
    assert drawing.images.shape[0] == 2


@settings(FUZZ, max_examples=150)  # 19 keys x 3 actions: 40 examples missed the input_specs bugs this found
@given(data=st.data())
def test_fuzzed_onnx_metadata_is_loaded_or_refused_naming_the_file(data, tmp_path_factory):
    """Whatever the distgan.* metadata_props of an ONNX file say (a value changed, a key gone or added), the
    torch-free runtime that distgan-sample, distgan-serve and export/generate.py share loads it and samples,
    or refuses with one ModelError line naming the file; never a traceback."""
    from distgan.runtime import ModelError, OnnxGenerator

    meta = dict(GOOD_METADATA)
    key = data.draw(st.sampled_from(sorted(meta)))
    action = data.draw(st.sampled_from(["replace", "remove", "json"]))
    if action == "remove":
        del meta[key]
    elif action == "json":
        meta[key] = json.dumps(data.draw(JSON_VALUES))
    else:
        meta[key] = data.draw(st.text(max_size=12))
    path = tmp_path_factory.mktemp("onnx") / "g.onnx"
    tiny_onnx_generator(path, meta)
    try:
        OnnxGenerator(path).sample(seed=0, n=2)
    except ModelError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), str(exc)

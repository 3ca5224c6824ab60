"""distgan-serve's API through a real HTTP client against a real running server (tests/conftest.py: `served`)."""

from __future__ import annotations

import base64
import io
import json
import shlex
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import SERVE_CLASSES, SERVE_LIMITS, run_env, start_server, stop_server
from distgan.runtime import MAX_SEED, OnnxGenerator

pytestmark = pytest.mark.slow  # a server process per session, and a few more


@pytest.fixture(scope="module")
def client(served) -> httpx.Client:
    url, _ = served
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def described(client: httpx.Client, path: str, params: dict) -> dict:
    """The JSON answer of the same request: pixels, seeds, labels, the command, the page's link."""
    response = client.get(path, params={**params, "format": "json"})
    assert response.status_code == 200, response.text
    return response.json()


def command_of(client: httpx.Client, path: str, params: dict) -> list[str]:
    return shlex.split(described(client, path, params)["command"])


def run_sample(command: list[str], cwd: Path) -> Path:
    """Run the command line the page gives, as a shell would (this interpreter by its absolute path, -m);
    returns the file it wrote."""
    assert command[:3] == [sys.executable, "-m", "distgan.sample"] and Path(command[0]).is_absolute(), command
    proc = subprocess.run(command, cwd=cwd, env=run_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return cwd / command[command.index("--grid") + 1]


def test_the_latent_convention_is_the_documented_one(serve_models):
    """distgan/runtime.py's docstring, README and export/README.md say how a seed becomes an image: check each rule."""
    model = OnnxGenerator(serve_models["cond"])
    documented = np.stack([np.random.default_rng(s).standard_normal(16, dtype=np.float32) for s in range(40, 46)])
    drawing = model.sample(40, 6)
    assert np.array_equal(drawing.z, documented) and drawing.seeds.tolist() == list(range(40, 46))
    assert drawing.labels.tolist() == [s % 5 for s in range(40, 46)]  # no class: seed mod K
    assert np.array_equal(model.sample(40, 6, psi=0.5).z, documented * np.float32(0.5))
    every = model.sample(40, 2, "all")
    assert every.labels.tolist() == [0, 1, 2, 3, 4] * 2 and every.seeds.tolist() == [40] * 5 + [41] * 5
    walk = model.interpolate(40, 45, 5, "Pullover")
    assert np.array_equal(walk.z[0], documented[0]) and np.array_equal(walk.z[-1], documented[5])
    a, b = documented[0].astype(np.float64), documented[5].astype(np.float64)
    omega = np.arccos(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    for i, t in enumerate((0.25, 0.5, 0.75), start=1):  # slerp: sin((1 - t) w) a + sin(t w) b, over sin w
        assert np.allclose(walk.z[i], (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega), atol=1e-5)
    assert walk.labels.tolist() == [2] * 5


def test_models_and_meta_describe_the_files(client, serve_models, served):
    assert client.get("/healthz").json() == {"status": "ok", "models": 2}
    listing = client.get("/api/models").json()
    assert [m["id"] for m in listing["models"]] == ["fashion28", "faces64"]
    assert listing["limits"]["max_n"] == SERVE_LIMITS["--max-n"] and listing["limits"]["seed"] == [0, MAX_SEED]
    for key, (family, size, mode, classes) in {"cond": ("dcgan28", 28, "L", SERVE_CLASSES),
                                                "rgb": ("dcgan64", 64, "RGB", [])}.items():
        path = serve_models[key]
        meta = client.get("/api/meta", params={"model": path.stem}).json()
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["metadata"] == props  # every pair, as written by the exporter
        assert (meta["family"], meta["height"], meta["width"], meta["mode"], meta["classes"]) == \
               (family, size, size, mode, classes)
        assert meta["step"] == int(props["distgan.step"]) and meta["dataset"] == props["distgan.dataset"]
        assert meta["path"] == str(path) and meta["sha256"] == OnnxGenerator(path).sha256
    assert client.get("/api/meta").json()["id"] == "fashion28"  # the first model is the default
    # The server is torch-free: no torch library is mapped into its process.
    maps = Path(f"/proc/{served[1].pid}/maps").read_text()
    assert "libtorch" not in maps and "onnxruntime" in maps


def test_same_request_same_png_as_distgan_sample(client, tmp_path):
    params = {"seed": 7, "n": 6, "class": "t-shirt/top", "psi": 0.75}
    first, again = client.get("/api/sample", params=params), client.get("/api/sample", params=params)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert first.content == again.content
    name = first.headers["x-distgan-filename"]
    assert f'filename="{name}"' in first.headers["content-disposition"]
    assert "_seed7-12_t-shirt-top_psi0.75.png" in name
    command = command_of(client, "/api/sample", params)
    assert command[-2:] == ["--grid", name] and ["--class", "T-shirt/top"] == command[command.index("--class"):][:2]
    written = run_sample(command, tmp_path)
    assert written.read_bytes() == first.content, "distgan-sample wrote other bytes than the API sent"
    png = Image.open(io.BytesIO(first.content))
    assert png.text["distgan.seed"] == "7" and png.text["distgan.class"] == "T-shirt/top"
    assert png.text["distgan.psi"] == "0.75" and len(png.text["distgan.model_sha256"]) == 64
    # ... and the PNG alone draws itself again, bit for bit.
    again_dir = tmp_path / "again"
    again_dir.mkdir()
    redrawn = subprocess.run([sys.executable, "-m", "distgan.sample", "--from-png", str(written)], cwd=again_dir,
                             env=run_env(), capture_output=True, text=True, timeout=120)
    assert redrawn.returncode == 0, redrawn.stderr
    assert (again_dir / name).read_bytes() == first.content
    # Image i of the grid is seed 7 + i on its own, the same pixels as the npy answer.
    grid = npy(client.get("/api/sample", params={**params, "format": "npy"}))
    single = npy(client.get("/api/sample", params={**params, "seed": 9, "n": 1, "format": "npy"}))
    assert grid.shape == (6, 28, 28, 1) and np.array_equal(grid[2], single[0])


@pytest.mark.parametrize("model, size, mode, channels", [("fashion28", 28, "L", 1), ("faces64", 64, "RGB", 3)])
def test_images_follow_the_metadata(client, model, size, mode, channels):
    image = Image.open(io.BytesIO(client.get("/api/sample", params={"model": model, "seed": 3}).content))
    assert (image.size, image.mode) == ((size, size), mode)
    grid = Image.open(io.BytesIO(client.get("/api/sample", params={"model": model, "n": 4}).content))
    assert grid.size == (2 * (size + 2) + 2,) * 2  # 2 x 2 tiles, 2 px apart
    arrays = npy(client.get("/api/sample", params={"model": model, "n": 4, "format": "npy"}))
    assert arrays.shape == (4, size, size, channels) and arrays.dtype == np.uint8
    assert len({a.tobytes() for a in arrays}) == 4, "different seeds, same image"


def test_classes_change_the_image_and_all_classes_draws_each(client):
    by_class = [npy(client.get("/api/sample", params={"seed": 11, "class": k, "format": "npy"}))[0] for k in range(5)]
    assert len({a.tobytes() for a in by_class}) == 5, "class k does not change the image"
    by_name = npy(client.get("/api/sample", params={"seed": 11, "class": "SANDAL", "format": "npy"}))[0]
    assert np.array_equal(by_name, by_class[3])
    every = client.get("/api/sample", params={"seed": 11, "n": 2, "class": "all", "format": "npy"})
    images = npy(every)
    assert images.shape == (10, 28, 28, 1) and every.headers["x-distgan-columns"] == "5"
    answer = described(client, "/api/sample", {"seed": 11, "n": 2, "class": "all"})
    assert answer["labels"] == [0, 1, 2, 3, 4] * 2 and answer["seeds"] == [11] * 5 + [12] * 5
    assert answer["columns"] == 5 and answer["shape"] == [10, 28, 28, 1]
    assert np.array_equal(np.frombuffer(base64.b64decode(answer["pixels"]), np.uint8).reshape(10, 28, 28, 1), images)
    assert all(np.array_equal(images[k], by_class[k]) for k in range(5))
    # No class: seed s is drawn in class s mod 5.
    default = npy(client.get("/api/sample", params={"seed": 13, "format": "npy"}))[0]
    assert np.array_equal(default, npy(client.get("/api/sample", params={"seed": 13, "class": 3,
                                                                          "format": "npy"}))[0])


def test_psi_pulls_every_seed_to_the_mean(client):
    mean = npy(client.get("/api/sample", params={"model": "faces64", "n": 3, "psi": 0, "format": "npy"}))
    assert np.array_equal(mean[0], mean[1]) and np.array_equal(mean[1], mean[2])
    plain = client.get("/api/sample", params={"model": "faces64", "seed": 5}).content
    assert client.get("/api/sample", params={"model": "faces64", "seed": 5, "psi": "1.0"}).content == plain
    assert client.get("/api/sample", params={"model": "faces64", "seed": 5, "psi": 0.5}).content != plain


def test_interpolation_ends_are_the_two_seeds_images(client, tmp_path):
    params = {"seed_a": 4, "seed_b": 40, "steps": 7, "class": "Trouser"}
    frames = npy(client.get("/api/interpolate", params={**params, "format": "npy"}))
    assert frames.shape == (1, 7, 28, 28, 1)
    a, b = (npy(client.get("/api/sample", params={"seed": s, "class": "Trouser", "format": "npy"}))[0]
            for s in (4, 40))
    assert np.array_equal(frames[0, 0], a) and np.array_equal(frames[0, -1], b)
    assert not np.array_equal(frames[0, 3], a) and not np.array_equal(frames[0, 3], b)
    strip = client.get("/api/interpolate", params=params)
    assert Image.open(io.BytesIO(strip.content)).size == (7 * 30 + 2, 32)
    assert run_sample(command_of(client, "/api/interpolate", params), tmp_path).read_bytes() == strip.content
    walks = npy(client.get("/api/interpolate", params={**params, "class": "all", "format": "npy"}))
    assert walks.shape == (5, 7, 28, 28, 1) and np.array_equal(walks[1], frames[0])
    rgb = npy(client.get("/api/interpolate", params={"model": "faces64", "seed_a": 1, "seed_b": 2, "steps": 3,
                                                     "format": "npy"}))
    assert rgb.shape == (1, 3, 64, 64, 3)


BAD_REQUESTS = [
    # (path, query, field, words the message must hold: the valid range)
    ("/api/sample", "seed=-1", "seed", "0..4294967295"),
    ("/api/sample", "seed=1.5", "seed", "0..4294967295"),
    ("/api/sample", "seed=abc", "seed", "0..4294967295"),
    ("/api/sample", "seed=4294967296", "seed", "0..4294967295"),
    ("/api/sample", "seed=4294967295&n=2", "seed", "0..4294967294"),
    ("/api/sample", "seed=", "seed", "empty"),
    ("/api/sample", "n=0", "n", "1..32"),
    ("/api/sample", "n=33", "n", "1..32"),
    ("/api/sample", "n=11&class=all", "n", "valid n 1..10"),
    ("/api/sample", "class=Sneaker", "class", "Trouser, Pullover, Sandal, Ankle boot (or an index 0..4"),
    ("/api/sample", "class=5", "class", "index 0..4"),
    ("/api/sample", "class=-1", "class", "index 0..4"),
    ("/api/sample", "model=faces64&class=0", "class", "unconditional"),
    ("/api/sample", "psi=nan", "psi", "0..2"),
    ("/api/sample", "psi=inf", "psi", "0..2"),
    ("/api/sample", "psi=2.5", "psi", "0..2"),
    ("/api/sample", "psi=-0.1", "psi", "0..2"),
    ("/api/sample", "psi=1_0", "psi", "0..2"),
    ("/api/sample", "format=gif", "format", "png, npy, json"),
    ("/api/nearest", "seed=1", "model", "no training-set index"),
    ("/api/sample", "model=nope", "model", "fashion28, faces64"),
    ("/api/sample", "sed=1", "sed", "seed, n, class, psi"),
    ("/api/sample", "seed=1&seed=2", "seed", "more than once"),
    ("/api/sample", "seed=%ff", "seed", "0..4294967295"),
    ("/api/sample", "&&=&", "query", "unknown parameter"),
    ("/api/interpolate", "steps=13", "steps", "2..12"),
    ("/api/interpolate", "steps=1", "steps", "2..12"),
    ("/api/interpolate", "steps=11&class=all", "steps", "valid steps 2..10"),
    ("/api/interpolate", "seed_b=-4", "seed_b", "0..4294967295"),
    ("/api/interpolate", "seed_a=x", "seed_a", "0..4294967295"),
    ("/api/interpolate", "model=faces64&class=all", "class", "unconditional"),
    ("/api/meta", "model=fashion", "model", "fashion28, faces64"),
]


def test_every_bad_parameter_is_a_400_naming_the_field(served):
    url, _ = served
    with httpx.Client(base_url=url, timeout=30) as c:
        for path, query, field, words in BAD_REQUESTS:
            response = c.get(f"{path}?{query}")
            assert response.status_code == 400, (query, response.status_code, response.text)
            assert response.headers["content-type"] == "application/json", query
            body = response.json()
            assert body["field"] == field and body["error"].startswith(f"{field}: "), (query, body)
            assert words in body["error"], (query, body)
            assert "Traceback" not in response.text
        too_long = c.get("/api/sample?seed=" + "1" * SERVE_LIMITS["--max-query-bytes"])
        assert too_long.status_code == 414 and too_long.json()["field"] == "query"
        assert "--max-query-bytes" in too_long.json()["error"]
        body = c.request("GET", "/api/sample", content=b"x" * 10)
        assert body.status_code == 413 and body.json()["field"] == "body"
        post = c.post("/api/sample")
        assert post.status_code in (405, 413) and post.headers["content-type"] == "application/json"


def raw_get(url: str, target: str, host_header: str | None = None) -> tuple[int, bytes]:
    """A GET with `target` sent byte for byte (HTTP clients normalise ../ away)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {host_header or host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_only_its_own_static_files_no_traversal_no_cdn_docs(served):
    url, _ = served
    status, page = raw_get(url, "/")
    assert status == 200 and b'<script type="module" src="static/app.js">' in page
    assert raw_get(url, "/static/app.js")[0] == 200
    secret = Path(__file__).resolve().parents[1] / "pyproject.toml"  # a file the server could reach on disk
    for target in ["/static/../../../../etc/passwd", "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
                   "/static/%2e%2e/%2e%2e/pyproject.toml", "/static/..", "/static/%2e%2e%5cpyproject.toml",
                   "/../../etc/passwd", "/static//etc/passwd", "/static/__init__.py", "/static/",
                   "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]:
        status, body = raw_get(url, target)
        assert status in (400, 404), (target, status)
        assert b"root:" not in body and secret.read_bytes()[:40] not in body, target
    # Bound to 127.0.0.1, it answers only requests for localhost: a DNS-rebinding page's Host is refused.
    status, body = raw_get(url, "/api/models", host_header="attacker.example")
    assert status == 400 and json.loads(body)["field"] == "host"
    assert raw_get(url, "/healthz", host_header="localhost:9000")[0] == 200  # an SSH forward to another port
    with httpx.Client(base_url=url) as c:
        headers = c.get("/").headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


def test_concurrent_clients_get_the_right_images(served):
    url, _ = served
    expected = {}
    with httpx.Client(base_url=url, timeout=60) as c:
        for seed in range(8):
            expected[seed] = c.get("/api/sample", params={"seed": seed, "n": 2, "model": "faces64"}).content

    def fetch(i: int) -> bool:
        with httpx.Client(base_url=url, timeout=60) as c:
            seed = i % 8
            ok = c.get("/api/sample", params={"seed": seed, "n": 2, "model": "faces64"}).content == expected[seed]
            walk = c.get("/api/interpolate", params={"seed_a": seed, "steps": 3})
            return ok and walk.status_code == 200

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(fetch, range(64)))


def test_bad_model_files_stop_it_at_start_naming_the_file(serve_models, tmp_path):
    plain = onnx.load(str(serve_models["rgb"]))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    cases = [(tmp_path / "plain.onnx", "plain.onnx: not a distgan generator; metadata_props lacks distgan.family"),
             (tmp_path / "junk.onnx", "junk.onnx: onnxruntime cannot load it"),
             (tmp_path / "missing.onnx", "missing.onnx: no such ONNX file")]
    for path, message in cases:
        proc = subprocess.run([sys.executable, "-m", "distgan.serve.cli", str(serve_models["cond"]), str(path),
                               "--port", "0"], env=run_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    twice = subprocess.run([sys.executable, "-m", "distgan.serve.cli", str(serve_models["cond"]),
                            str(serve_models["cond"])], env=run_env(), capture_output=True, text=True, timeout=60)
    assert twice.returncode == 2 and "given twice" in twice.stderr


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port`, from /proc/net/tcp (IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if state == "0A" and int(local_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_binds_loopback_unless_told_and_models_get_distinct_ids(served, serve_models, tmp_path):
    url, _ = served  # started without --host
    port = int(url.rsplit(":", 1)[1])
    assert url.startswith("http://127.0.0.1:") and listening_addresses(port) == {"127.0.0.1"}
    # Two files with the same name: told apart by their directories; --host is honoured.
    other = tmp_path / "other"
    other.mkdir()
    (other / "fashion28.onnx").write_bytes(serve_models["cond"].read_bytes())
    proc, other_url = start_server(tmp_path / "log", serve_models["cond"], other / "fashion28.onnx", "--port", "0",
                                   "--host", "0.0.0.0")
    try:
        assert listening_addresses(int(other_url.rsplit(":", 1)[1].rstrip("/"))) == {"0.0.0.0"}
        assert "warning: listening on 0.0.0.0" in (tmp_path / "log").read_text()
        ids = [m["id"] for m in httpx.get(other_url + "api/models").json()["models"]]
        assert ids == [f"{serve_models['cond'].parent.name}/fashion28", "other/fashion28"]
    finally:
        stop_server(proc)
    assert json.loads(httpx.get(url + "/healthz").text)["status"] == "ok"


def test_headers_stay_short_and_links_follow_the_proxy_prefix(served):
    """Seeds, labels and the command travel in the body; a proxy's X-Forwarded-Prefix (from this machine) is put
    in front of the links the server writes, and a prefix that is not a plain path is ignored."""
    url, _ = served
    largest = [("/api/sample", {"seed": 4294967295 - 31, "n": 32}), ("/api/sample", {"seed": 4294967200, "n": 10,
                                                                                     "class": "all"}),
               ("/api/interpolate", {"seed_a": 4294967295, "seed_b": 4294967294, "steps": 10, "class": "all"})]
    with httpx.Client(base_url=url, timeout=60) as c:
        for path, params in largest:
            for form in ("png", "npy", "json"):
                response = c.get(path, params={**params, "format": form})
                assert response.status_code == 200, response.text
                assert all(len(k) + len(v) < 1024 for k, v in response.headers.items()), response.headers
        view = {"seed": 3, "n": 2, "class": "Trouser", "psi": 0.5}
        link = c.get("/api/sample", params={**view, "format": "json"}, headers={"X-Forwarded-Prefix": "/gan/"})
        assert link.json()["link"] == "/gan/?seed=3&n=2&class=Trouser&psi=0.5"
        assert c.get("/api/sample", params={**view, "format": "json"}).json()["link"].startswith("/?seed=3")
        for bad in ("gan", "/a/../b", "/a b", "//evil.example"):
            answer = c.get("/api/sample", params={**view, "format": "json"}, headers={"X-Forwarded-Prefix": bad})
            assert answer.status_code == 200 and answer.json()["link"].startswith("/?"), bad
        walk = c.get("/api/interpolate", params={"seed_a": 1, "seed_b": 2, "steps": 3, "class": "all",
                                                 "format": "json"}).json()
        assert walk["link"] == "/?seed_a=1&seed_b=2&steps=3&walk_class=all" and walk["shape"] == [5, 3, 28, 28, 1]


def test_allowed_hosts_and_root_path(serve_models, tmp_path):
    proc, url = start_server(tmp_path / "log", serve_models["cond"], "--port", "0", "--allowed-hosts",
                             "gan.example.org, *.lab.example", "--root-path", "/gan/")
    try:
        for host, status in [("gan.example.org", 200), ("GAN.example.org:443", 200), ("a.lab.example", 200),
                             ("localhost:8080", 200), ("evil.example", 400), ("lab.example", 400),
                             ("gan.example.org.evil.example", 400)]:
            code, body = raw_get(url.rstrip("/"), "/api/models", host_header=host)
            assert code == status, (host, code, body)
            if status == 400:
                assert json.loads(body)["field"] == "host" and "--allowed-hosts" in json.loads(body)["error"]
        # --root-path: the prefix a proxy strips, as uvicorn's; the links the server writes carry it.
        answer = httpx.get(url + "api/sample", params={"seed": 1, "format": "json"}).json()
        assert answer["link"] == "/gan/?seed=1"
    finally:
        stop_server(proc)


def test_a_folder_serves_every_onnx_in_it(serve_models, tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    for key in ("cond", "rgb"):
        (folder / serve_models[key].name).write_bytes(serve_models[key].read_bytes())
    (folder / "notes.txt").write_text("not a model")
    proc, url = start_server(tmp_path / "log", folder, "--port", "0")
    try:
        assert [m["id"] for m in httpx.get(url + "api/models").json()["models"]] == ["faces64", "fashion28"]
    finally:
        stop_server(proc)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-m", "distgan.serve.cli", str(empty)], env=run_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "empty: a folder with no .onnx file in it" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_from_png_refuses_what_it_cannot_redraw(serve_models, tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("L", (4, 4)).save(plain)
    model = OnnxGenerator(serve_models["cond"])
    drawn = tmp_path / "drawn.png"
    drawn.write_bytes(model.sample(3, 2).png())
    for args, message in [(["--from-png", str(plain)], "plain.png: no distgan text chunks"),
                          (["--from-png", str(tmp_path / "missing.png")], "missing.png: not a readable PNG"),
                          (["--from-png", str(drawn), "--onnx", str(serve_models["rgb"])], "is not the model that drew")]:
        result = subprocess.run([sys.executable, "-m", "distgan.sample", *args], cwd=tmp_path, env=run_env(),
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    ok = subprocess.run([sys.executable, "-m", "distgan.sample", "--from-png", str(drawn), "--grid", "out.png"],
                        cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and (tmp_path / "out.png").read_bytes() == drawn.read_bytes(), ok.stderr

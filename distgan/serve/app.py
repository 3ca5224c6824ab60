"""The Starlette application: the JSON/PNG/npy API, the page's own static files, limits and headers.

    GET /                  the page            GET /api/sample       images (PNG grid, npy, or JSON)
    GET /static/NAME       its files           GET /api/interpolate  a walk between two seeds
    GET /api/models        every model         GET /healthz          liveness
    GET /api/meta          one model, in full  GET /api/nearest      a sample's nearest training images (--data)
    GET /api/mixing        a style-mixing grid GET /api/stages       a pyramid model's stages of one sample
    POST /api/upscale      a PNG/JPEG body through an SR model (JSON)

Behind a reverse proxy: the page asks for everything by relative URL, so it works under any
path prefix; a prefix the proxy strips is `root_path` (uvicorn's --root-path, or an
`X-Forwarded-Prefix` header from a loopback client, i.e. a proxy on this machine), which the
app puts back in front of the links it writes. No response header grows with the request: the
seeds, labels and the command are in the JSON body (`format=json`) and in the PNG's text chunks.

Every error is JSON, `{"error": "...", "field": "..."}`: a bad parameter is a 400 naming it
and its valid range (so is a Host other than localhost, on a loopback-bound server), an
unknown path a 404, a query over the size limit a 414, a request body a 413 (but on
/api/upscale, which takes one up to --max-upload-bytes); an unexpected failure is a 500 with
no traceback (that goes to the log).
Endpoints are plain functions, run in Starlette's thread pool: onnxruntime releases the GIL
and its sessions take concurrent calls.
"""

from __future__ import annotations

import base64
import fnmatch
import io
import ipaddress
import logging
import shlex
import sys
from importlib.resources import files
from typing import Any, Callable
from urllib.parse import urlencode

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distgan.runtime import ALL_CLASSES, MAX_SEED, PSI_RANGE, Drawing, InputError
from distgan.serve.catalog import Limits, ServedModel, ServedUpscaler, limits_json
from distgan.serve.nearest import NearestIndex
from distgan.serve.query import Query
from distgan.serve.upscaling import upscale_upload

log = logging.getLogger("distgan.serve")

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
# The page loads its own files and nothing else; images it makes itself are blob: URLs.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: "
                                 b"data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                                 b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]
SAMPLE_PARAMS = ("model", "seed", "n", "class", "psi", "format")
WALK_PARAMS = ("model", "seed_a", "seed_b", "steps", "class", "psi", "format")
NEAREST_PARAMS = ("model", "seed", "class", "psi", "k")
MIXING_PARAMS = ("model", "row_seed", "rows", "col_seed", "cols", "mix_layer", "class", "psi", "format")
STAGES_PARAMS = ("model", "seed", "class", "psi", "format")
UPSCALE_PARAMS = ("model", "name")
UPLOAD_PATHS = frozenset({"/api/upscale"})  # the only paths that take a request body
DRAIN_LIMITS = 4  # a refused upload is read and dropped up to this many times --max-upload-bytes
FORMATS = ("png", "npy", "json")
MAX_NEIGHBOURS = 16
# A prefix from X-Forwarded-Prefix: a path of plain segments (it is written into links).
PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~/")


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


class BodyTooLarge(Exception):
    """An upload past --max-upload-bytes: declared so (`size`), or grown past it while read (`size` None: a
    chunked body declares no length)."""

    def __init__(self, limit: int, size: int | None = None):
        told = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        super().__init__(f"body: {told}; the limit is {limit:,} (--max-upload-bytes)")


def host_name(host: str) -> str:
    """A Host header without its port ("[::1]:8000" -> "::1", "example.org:443" -> "example.org")."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # no port, or a bare IPv6 address


def is_loopback(host: str) -> bool:
    """A loopback address or localhost ("[::1]" and a ":port" allowed)."""
    name = host_name(host)
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name.lower() == "localhost"


def forwarded_prefix(scope: Scope, headers: dict[bytes, bytes]) -> str | None:
    """X-Forwarded-Prefix ("/gan") from a proxy on this machine (a loopback client), else None; a value that is
    not a plain path is ignored (it would be written into links)."""
    value = headers.get(b"x-forwarded-prefix", b"").decode("latin-1").strip().rstrip("/")
    client = scope.get("client") or ("", 0)
    if not value or not is_loopback(str(client[0])):
        return None
    if not value.startswith("/") or "//" in value or ".." in value or not set(value) <= PREFIX_CHARS:
        return None
    return value


class Guard:
    """ASGI middleware: refuses oversized queries, request bodies and a Host that is not allowed; applies a
    proxy's X-Forwarded-Prefix as root_path (as uvicorn's --root-path does); adds the security headers.

    Bodies: none anywhere but UPLOAD_PATHS, and there at most `max_upload_bytes`, refused from the declared
    Content-Length (the body read and dropped first, up to DRAIN_LIMITS x the limit: a proxy still sending it
    would otherwise see a reset and answer 502 instead), and counted as read (BodyTooLarge) when no length is
    declared.

    Hosts: `allowed_hosts` (patterns as Starlette's TrustedHostMiddleware takes them, "*.example.org") are
    allowed beside localhost; with none, a server bound to a loopback address (`local_only`) answers localhost
    only, which keeps DNS-rebinding pages out, and one bound elsewhere answers any Host."""

    def __init__(self, app: ASGIApp, max_query_bytes: int, local_only: bool, allowed_hosts: tuple[str, ...] = (),
                 max_upload_bytes: int = Limits.max_upload_bytes):
        self.app, self.max_query_bytes, self.max_upload_bytes = app, max_query_bytes, max_upload_bytes
        self.local_only, self.allowed_hosts = local_only, allowed_hosts

    def counted(self, receive: Receive) -> Receive:
        """`receive` raising BodyTooLarge once the body read so far passes the limit."""
        seen = 0

        async def receive_counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_upload_bytes:
                raise BodyTooLarge(self.max_upload_bytes)
            return message

        return receive_counted

    def host_allowed(self, host: str) -> bool:
        if not (self.local_only or self.allowed_hosts) or is_loopback(host):
            return True
        name = host_name(host).lower()
        return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.allowed_hosts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        refusal = None
        if not self.host_allowed(host):
            refusal = error(400, f"host: {host!r} is not served; allowed: localhost"
                                 f"{''.join(', ' + h for h in self.allowed_hosts)} (name the host a proxy forwards "
                                 f"with --allowed-hosts)", "host")
        elif len(scope["query_string"]) > self.max_query_bytes:
            refusal = error(414, f"query: {len(scope['query_string'])} bytes; the limit is {self.max_query_bytes} "
                                 f"(--max-query-bytes)", "query")
        elif route_path(scope) in UPLOAD_PATHS:
            length = headers.get(b"content-length", b"").decode("latin-1")
            if length.isdigit() and int(length) > self.max_upload_bytes:
                refusal = error(413, str(BodyTooLarge(self.max_upload_bytes, int(length))), "body")
                await drain(receive, DRAIN_LIMITS * self.max_upload_bytes)
            receive = self.counted(receive)
        elif headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            refusal = error(413, "body: this API takes no request body; parameters go in the query", "body")
        prefix = forwarded_prefix(scope, headers)
        if prefix is not None and not scope.get("root_path"):
            scope = {**scope, "root_path": prefix, "path": prefix + scope["path"]}
        await (refusal or self.app)(scope, receive, send_with_headers)


async def drain(receive: Receive, most: int) -> None:
    """Read and drop a refused request body, `most` bytes at the most."""
    seen = 0
    while seen <= most:
        message = await receive()
        seen += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return


def route_path(scope: Scope) -> str:
    """The path the routes see: without the root_path a server given --root-path may have put in front."""
    root = scope.get("root_path", "")
    path = scope["path"]
    return path[len(root):] if root and path.startswith(root) else path


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: requests are answered from this table, never from the file system."""
    folder = files("distgan.serve") / "static"
    return {f.name: (f.read_bytes(), CONTENT_TYPES[f.name[f.name.rfind("."):]])
            for f in folder.iterdir() if f.is_file() and f.name[f.name.rfind("."):] in CONTENT_TYPES}


def sample_command(model: ServedModel, drawing: Drawing) -> str:
    """The shell line that writes the same PNG: this interpreter by its absolute path, so it runs in a fresh shell
    without the server's PATH."""
    return shlex.join([sys.executable, "-m", "distgan.sample", "--onnx", str(model.generator.path), *drawing.args,
                       "--grid", drawing.name])


def pixels_json(images: np.ndarray) -> dict[str, Any]:
    """uint8 images as JSON: shape and base64 of the raw bytes (row-major)."""
    return {"shape": list(images.shape), "pixels": base64.b64encode(np.ascontiguousarray(images)).decode("ascii")}


def _drawing_response(request: Request, model: ServedModel, drawing: Drawing, form: str,
                      shape: tuple[int, ...], view: dict[str, str]) -> Response:
    """The drawing as PNG (what every client writes), npy (uint8 `shape`) or JSON (pixels, seeds, labels, the
    command, the page's link to this view). Headers stay short whatever the request: the rest is in the body."""
    headers = {"x-distgan-columns": str(drawing.columns), "x-distgan-filename": drawing.name}
    if form == "png":
        headers["content-disposition"] = f'inline; filename="{drawing.name}"'
        return Response(drawing.png(), media_type="image/png", headers=headers)
    if form == "npy":
        buffer = io.BytesIO()
        np.save(buffer, drawing.images.reshape(shape), allow_pickle=False)
        headers["content-disposition"] = f'attachment; filename="{drawing.name.removesuffix(".png")}.npy"'
        return Response(buffer.getvalue(), media_type="application/octet-stream", headers=headers)
    root = request.scope.get("root_path", "")
    return JSONResponse({
        **pixels_json(drawing.images.reshape(shape)), "seeds": drawing.seeds.tolist(),
        "labels": None if drawing.labels is None else drawing.labels.tolist(), "columns": drawing.columns,
        "filename": drawing.name, "command": sample_command(model, drawing), "text": drawing.text,
        "link": f"{root}/?{urlencode(view)}",
    })


def create_app(served: list[ServedModel | ServedUpscaler], limits: Limits = Limits(), local_only: bool = True,
               allowed_hosts: tuple[str, ...] = (), nearest: dict[str, NearestIndex] | None = None) -> Starlette:
    """The application serving generators and super-resolution models (`served`; the first of each kind is its
    endpoints' default) within `limits`; `local_only` and `allowed_hosts`: see Guard; `nearest`: a model id's
    index of training images (distgan-serve --data)."""
    models = [m for m in served if isinstance(m, ServedModel)]
    upscalers = {m.id: m for m in served if isinstance(m, ServedUpscaler)}
    by_id = {m.id: m for m in models}
    nearest = nearest or {}
    static = _static_files()

    def pick(query: Query) -> ServedModel:
        name = query.text("model", models[0].id if models else None)
        if name in upscalers:
            raise InputError("model", f"{name!r} is a super-resolution model: POST an image to api/upscale; "
                                      f"generators: {', '.join(by_id) or 'none served'}")
        if name not in by_id:
            valid = f"valid: {', '.join(by_id)}" if by_id else "no generator is served"
            raise InputError("model", f"{'no model given' if name is None else repr(name) + ' is not served'}; "
                                      f"{valid}")
        return by_id[name]

    def pick_upscaler(query: Query) -> ServedUpscaler:
        name = query.text("model", next(iter(upscalers), None))
        if name in by_id:
            raise InputError("model", f"{name!r} is a generator, not a super-resolution model; valid: "
                                      f"{', '.join(upscalers) or 'none served'}")
        if name not in upscalers:
            valid = f"valid: {', '.join(upscalers)}" if upscalers else "no super-resolution model is served"
            raise InputError("model", f"{'no model given' if name is None else repr(name) + ' is not served'}; "
                                      f"{valid}")
        return upscalers[name]

    def common(query: Query, field: str, count: int, low: int) -> tuple[ServedModel, str | None, float, str]:
        """model, class, psi and format; and the images `count` (n or steps) makes within --max-images."""
        model = pick(query)
        class_name = query.text("class")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        form = query.choice("format", "png", FORMATS)
        every = class_name is not None and class_name.lower() == ALL_CLASSES and model.generator.conditional
        per_row = model.generator.info.num_classes if every else 1  # class=all: every class per seed or walk
        if count * per_row > limits.max_images:
            raise InputError(field, f"{count} x {per_row} classes (class=all) is {count * per_row} images; the limit "
                                    f"is {limits.max_images} (--max-images): valid {field} "
                                    f"{low}..{max(limits.max_images // per_row, low)}")
        return model, class_name, psi, form

    def view_of(query: Query, names: dict[str, str]) -> dict[str, str]:
        """The page's URL parameters for this request (`names`: API name -> page name)."""
        return {page: query.values[api] for api, page in names.items() if api in query.values}

    def sample(request: Request) -> Response:
        query = Query(request.query_params.multi_items(), SAMPLE_PARAMS)
        seed = query.integer("seed", 0, 0, MAX_SEED)
        n = query.integer("n", 1, 1, limits.max_n)
        model, class_name, psi, form = common(query, "n", n, 1)
        drawing = model.generator.sample(seed, n, class_name, psi)
        view = view_of(query, {"model": "model", "seed": "seed", "n": "n", "class": "class", "psi": "psi"})
        return _drawing_response(request, model, drawing, form, drawing.images.shape, view)

    def interpolate(request: Request) -> Response:
        query = Query(request.query_params.multi_items(), WALK_PARAMS)
        seed_a = query.integer("seed_a", 0, 0, MAX_SEED)
        seed_b = query.integer("seed_b", 1, 0, MAX_SEED)
        steps = query.integer("steps", 16, 2, limits.max_steps)
        model, class_name, psi, form = common(query, "steps", steps, 2)
        drawing = model.generator.interpolate(seed_a, seed_b, steps, class_name, psi)
        rows = len(drawing.images) // steps
        view = view_of(query, {"model": "model", "seed_a": "seed_a", "seed_b": "seed_b", "steps": "steps",
                               "class": "walk_class", "psi": "psi"})
        return _drawing_response(request, model, drawing, form, (rows, steps, *drawing.images.shape[1:]), view)

    def nearest_images(request: Request) -> Response:
        query = Query(request.query_params.multi_items(), NEAREST_PARAMS)
        model = pick(query)
        if model.id not in nearest:
            raise InputError("model", f"{model.id!r} has no training-set index (start distgan-serve with --data DIR "
                                      f"holding images of its shape)")
        seed = query.integer("seed", 0, 0, MAX_SEED)
        class_name = query.text("class")
        if class_name is not None and class_name.lower() == ALL_CLASSES:
            raise InputError("class", "one class per image here: a name or index")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        k = query.integer("k", 8, 1, MAX_NEIGHBOURS)
        drawing = model.generator.sample(seed, 1, class_name, psi)
        index = nearest[model.id]
        found = index.query(drawing.images[0], k)
        return JSONResponse({**index.describe(), "query": pixels_json(drawing.images),
                             "neighbours": {**pixels_json(index.images(found.indices)),
                                            "indices": found.indices.tolist(), "distances": found.distances.tolist(),
                                            "labels": index.labels[found.indices].tolist()}})

    def mixing(request: Request) -> Response:
        """Style-based models: the style-mixing grid (`OnnxGenerator.mixing_grid`), (rows + 1) x (cols + 1) tiles."""
        query = Query(request.query_params.multi_items(), MIXING_PARAMS)
        row_seed = query.integer("row_seed", 0, 0, MAX_SEED)
        rows = query.integer("rows", 3, 1, limits.max_n)
        col_seed = query.integer("col_seed", 100, 0, MAX_SEED)
        cols = query.integer("cols", 4, 1, limits.max_n)
        mix_layer = query.integer("mix_layer", 4, 0, MAX_SEED)  # the model's own range is checked when drawn
        model, class_name, psi, form = common(query, "rows", (rows + 1) * (cols + 1), 1)
        drawing = model.generator.mixing_grid(row_seed, rows, col_seed, cols, mix_layer, class_name, psi)
        view = view_of(query, {"model": "model"})  # the page's URL keeps the model; the card's fields are its own
        return _drawing_response(request, model, drawing, form, (rows + 1, cols + 1, *drawing.images.shape[1:]), view)

    def stages(request: Request) -> Response:
        """Pyramid models (LAPGAN): one seed's stages, coarse to fine, side by side (`OnnxGenerator.stage_grid`),
        as a [1, stages] grid; a model without stage outputs is a 400 naming `model`."""
        query = Query(request.query_params.multi_items(), STAGES_PARAMS)
        model = pick(query)
        seed = query.integer("seed", 0, 0, MAX_SEED)
        class_name = query.text("class")
        psi = query.number("psi", 1.0, *PSI_RANGE)
        form = query.choice("format", "png", FORMATS)
        drawing = model.generator.stage_grid(seed, class_name, psi)
        view = view_of(query, {"model": "model"})  # as /api/mixing: the card's fields are its own
        return _drawing_response(request, model, drawing, form, (1, *drawing.images.shape), view)
    async def upscale(request: Request) -> Response:
        """A PNG/JPEG body through an SR model (`distgan.serve.upscaling`): bicubic and SR PNGs, the crop to zoom.
        The body is read here (Guard counts it); the work runs in the thread pool like every other endpoint's."""
        query = Query(request.query_params.multi_items(), UPSCALE_PARAMS)
        model = pick_upscaler(query)
        name = query.text("name")
        body = await request.body()
        answer = await run_in_threadpool(upscale_upload, model, body, limits.max_upscale_pixels, name)
        return JSONResponse(answer)

    def meta(request: Request) -> Response:
        model = pick(Query(request.query_params.multi_items(), ("model",)))
        described = {**model.describe(full=True), "limits": limits_json(limits)}
        return JSONResponse({**described, "nearest": nearest[model.id].describe() if model.id in nearest else None})

    def model_list(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        return JSONResponse({"models": [m.describe() for m in models],
                             "upscalers": [m.describe() for m in upscalers.values()], "limits": limits_json(limits)})

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(served)})

    def page_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404)
        body, content_type = static[name]
        return Response(body, media_type=content_type)

    routes = [
        Route("/", lambda request: page_file("index.html")),
        Route("/static/{name}", lambda request: page_file(request.path_params["name"])),
        Route("/healthz", healthz), Route("/api/models", model_list), Route("/api/meta", meta),
        Route("/api/sample", sample), Route("/api/interpolate", interpolate), Route("/api/nearest", nearest_images),
        Route("/api/mixing", mixing), Route("/api/stages", stages),
        Route("/api/upscale", upscale, methods=["POST"]),
    ]
    guard = Middleware(Guard, max_query_bytes=limits.max_query_bytes, local_only=local_only,
                       allowed_hosts=allowed_hosts, max_upload_bytes=limits.max_upload_bytes)
    return Starlette(routes=routes, middleware=[guard], exception_handlers=_handlers())


def _handlers() -> dict[Any, Callable[..., Any]]:
    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        return error(400, str(exc), exc.field)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        allowed = (exc.headers or {}).get("Allow", "GET")
        message = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed; use {allowed}"}
        return error(exc.status_code, message.get(exc.status_code, exc.detail))

    async def body_too_large(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyTooLarge)
        return error(413, str(exc), "body")

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url, exc_info=exc)
        return error(500, "internal error (the server's log has the details)")

    return {InputError: bad_input, HTTPException: http_error, BodyTooLarge: body_too_large, Exception: unexpected}

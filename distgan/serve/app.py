"""The Starlette application: the JSON/PNG/npy API, the page's own static files, limits and headers.

    GET /                  the page            GET /api/sample       images (PNG grid or npy)
    GET /static/NAME       its files           GET /api/interpolate  a walk between two seeds
    GET /api/models        every model         GET /healthz          liveness
    GET /api/meta          one model, in full

Every error is JSON, `{"error": "...", "field": "..."}`: a bad parameter is a 400 naming it
and its valid range (so is a Host other than localhost, on a loopback-bound server), an
unknown path a 404, a query over the size limit a 414, a request body a 413; an unexpected
failure is a 500 with no traceback (that goes to the log).
Endpoints are plain functions, run in Starlette's thread pool: onnxruntime releases the GIL
and its sessions take concurrent calls.
"""

from __future__ import annotations

import io
import ipaddress
import logging
import shlex
from importlib.resources import files
from typing import Any, Callable
from urllib.parse import quote

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distgan.runtime import ALL_CLASSES, MAX_SEED, PSI_RANGE, Drawing, InputError
from distgan.serve.catalog import Limits, ServedModel, limits_json
from distgan.serve.query import Query

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
MIXING_PARAMS = ("model", "row_seed", "rows", "col_seed", "cols", "mix_layer", "class", "psi", "format")
FORMATS = ("png", "npy")


def error(status: int, message: str, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status)


def is_loopback(host: str) -> bool:
    """A loopback address or localhost ("[::1]" and a ":port" allowed)."""
    if host.startswith("["):
        name = host[1:host.find("]")]
    elif host.count(":") == 1:
        name = host.rsplit(":", 1)[0]
    else:
        name = host  # no port, or a bare IPv6 address
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name.lower() == "localhost"


class Guard:
    """ASGI middleware: refuses oversized queries, request bodies and (`local_only`: a server bound to a loopback
    address) any Host but localhost, which keeps DNS-rebinding pages out; adds the security headers."""

    def __init__(self, app: ASGIApp, max_query_bytes: int, local_only: bool):
        self.app, self.max_query_bytes, self.local_only = app, max_query_bytes, local_only

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
        if self.local_only and not is_loopback(host):
            refusal = error(400, f"host: {host!r}; this server binds a loopback address and answers localhost only "
                                 f"(reach it as http://localhost:PORT/, or bind another --host)", "host")
        elif len(scope["query_string"]) > self.max_query_bytes:
            refusal = error(414, f"query: {len(scope['query_string'])} bytes; the limit is {self.max_query_bytes} "
                                 f"(--max-query-bytes)", "query")
        elif headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers:
            refusal = error(413, "body: this API takes no request body; parameters go in the query", "body")
        await (refusal or self.app)(scope, receive, send_with_headers)


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: requests are answered from this table, never from the file system."""
    folder = files("distgan.serve") / "static"
    return {f.name: (f.read_bytes(), CONTENT_TYPES[f.name[f.name.rfind("."):]])
            for f in folder.iterdir() if f.is_file() and f.name[f.name.rfind("."):] in CONTENT_TYPES}


def _drawing_response(model: ServedModel, drawing: Drawing, form: str, shape: tuple[int, ...]) -> Response:
    """The drawing as PNG (what every client writes) or npy (uint8 `shape`), with what reproduces it."""
    command = shlex.join(["distgan-sample", "--onnx", str(model.generator.path), *drawing.args,
                          "--grid", drawing.name])
    headers = {"x-distgan-command": quote(command, safe=" /'\"=-_.,:@+"),
               "x-distgan-seeds": ",".join(map(str, drawing.seeds.tolist())),
               "x-distgan-labels": "" if drawing.labels is None else ",".join(map(str, drawing.labels.tolist())),
               "x-distgan-columns": str(drawing.columns), "x-distgan-filename": drawing.name}
    if form == "png":
        headers["content-disposition"] = f'inline; filename="{drawing.name}"'
        return Response(drawing.png(), media_type="image/png", headers=headers)
    buffer = io.BytesIO()
    np.save(buffer, drawing.images.reshape(shape), allow_pickle=False)
    name = drawing.name.removesuffix(".png") + ".npy"
    headers["content-disposition"] = f'attachment; filename="{name}"'
    return Response(buffer.getvalue(), media_type="application/octet-stream", headers=headers)


def create_app(models: list[ServedModel], limits: Limits = Limits(), local_only: bool = True) -> Starlette:
    """The application serving `models` (the first is the default) within `limits`; `local_only`: see Guard."""
    by_id = {m.id: m for m in models}
    static = _static_files()

    def pick(query: Query) -> ServedModel:
        name = query.text("model", models[0].id)
        if name not in by_id:
            raise InputError("model", f"{name!r} is not served; valid: {', '.join(by_id)}")
        return by_id[name]

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

    def sample(request: Request) -> Response:
        query = Query(request.query_params.multi_items(), SAMPLE_PARAMS)
        seed = query.integer("seed", 0, 0, MAX_SEED)
        n = query.integer("n", 1, 1, limits.max_n)
        model, class_name, psi, form = common(query, "n", n, 1)
        drawing = model.generator.sample(seed, n, class_name, psi)
        return _drawing_response(model, drawing, form, drawing.images.shape)

    def interpolate(request: Request) -> Response:
        query = Query(request.query_params.multi_items(), WALK_PARAMS)
        seed_a = query.integer("seed_a", 0, 0, MAX_SEED)
        seed_b = query.integer("seed_b", 1, 0, MAX_SEED)
        steps = query.integer("steps", 16, 2, limits.max_steps)
        model, class_name, psi, form = common(query, "steps", steps, 2)
        drawing = model.generator.interpolate(seed_a, seed_b, steps, class_name, psi)
        rows = len(drawing.images) // steps
        return _drawing_response(model, drawing, form, (rows, steps, *drawing.images.shape[1:]))

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
        return _drawing_response(model, drawing, form, (rows + 1, cols + 1, *drawing.images.shape[1:]))

    def meta(request: Request) -> Response:
        model = pick(Query(request.query_params.multi_items(), ("model",)))
        return JSONResponse({**model.describe(full=True), "limits": limits_json(limits)})

    def model_list(request: Request) -> Response:
        Query(request.query_params.multi_items(), ())
        return JSONResponse({"models": [m.describe() for m in models], "limits": limits_json(limits)})

    def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(models)})

    def page_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404)
        body, content_type = static[name]
        return Response(body, media_type=content_type)

    routes = [
        Route("/", lambda request: page_file("index.html")),
        Route("/static/{name}", lambda request: page_file(request.path_params["name"])),
        Route("/healthz", healthz), Route("/api/models", model_list), Route("/api/meta", meta),
        Route("/api/sample", sample), Route("/api/interpolate", interpolate), Route("/api/mixing", mixing),
    ]
    guard = Middleware(Guard, max_query_bytes=limits.max_query_bytes, local_only=local_only)
    return Starlette(routes=routes, middleware=[guard], exception_handlers=_handlers())


def _handlers() -> dict[Any, Callable[..., Any]]:
    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InputError)
        return error(400, str(exc), exc.field)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"not found: {request.url.path}", 405: f"method {request.method} not allowed; use GET"}
        return error(exc.status_code, message.get(exc.status_code, exc.detail))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url, exc_info=exc)
        return error(500, "internal error (the server's log has the details)")

    return {InputError: bad_input, HTTPException: http_error, Exception: unexpected}

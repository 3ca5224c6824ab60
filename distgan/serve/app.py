"""The Starlette application put together: the route table (`/api/*` answered by
`distgan.serve.endpoints`, the page's own static files from a table read at start), the Guard
middleware (limits, Host, proxy prefix, security headers) and the exception handlers.

    GET /                  the page            GET /static/NAME      its files
    GET /api/*, POST /api/upscale, GET /healthz: see distgan.serve.endpoints

Behind a reverse proxy: the page asks for everything by relative URL, so it works under any
path prefix; a prefix the proxy strips is `root_path` (uvicorn's --root-path, or an
`X-Forwarded-Prefix` header from a loopback client, i.e. a proxy on this machine), which the
app puts back in front of the links it writes.

Every error is JSON, `{"error": "...", "field": "..."}`: a bad parameter is a 400 naming it
and its valid range (so is a Host other than localhost, on a loopback-bound server), an
unknown path a 404, a query over the size limit a 414, a request body a 413 (but on
/api/upscale, which takes one up to --max-upload-bytes); an unexpected failure is a 500 with
no traceback (that goes to the log).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
from importlib.resources import files
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from distgan.runtime import InputError
from distgan.serve.catalog import Limits, ServedModel, ServedUpscaler
from distgan.serve.endpoints import Endpoints
from distgan.serve.nearest import NearestIndex

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
UPLOAD_PATHS = frozenset({"/api/upscale"})  # the only paths that take a request body
DRAIN_LIMITS = 4  # a refused upload is read and dropped up to this many times --max-upload-bytes
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


class PageFiles:
    """The page's files, read once at start: requests are answered from this table, never from the file system."""

    def __init__(self) -> None:
        folder = files("distgan.serve") / "static"
        self.table = {f.name: (f.read_bytes(), CONTENT_TYPES[f.name[f.name.rfind("."):]])
                      for f in folder.iterdir() if f.is_file() and f.name[f.name.rfind("."):] in CONTENT_TYPES}

    def answer(self, name: str) -> Response:
        if name not in self.table:
            raise HTTPException(404)
        body, content_type = self.table[name]
        return Response(body, media_type=content_type)

    def index(self, request: Request) -> Response:
        """GET /: the page."""
        return self.answer("index.html")

    def static(self, request: Request) -> Response:
        """GET /static/NAME: its files."""
        return self.answer(request.path_params["name"])


def create_app(served: list[ServedModel | ServedUpscaler], limits: Limits = Limits(), local_only: bool = True,
               allowed_hosts: tuple[str, ...] = (), nearest: dict[str, NearestIndex] | None = None) -> Starlette:
    """The application serving generators and super-resolution models (`served`; the first of each kind is its
    endpoints' default) within `limits`; `local_only` and `allowed_hosts`: see Guard; `nearest`: a model id's
    index of training images (distgan-serve --data)."""
    api = Endpoints(served, limits, nearest)
    page = PageFiles()
    routes = [
        Route("/", page.index), Route("/static/{name}", page.static),
        Route("/healthz", api.healthz), Route("/api/models", api.model_list), Route("/api/meta", api.meta),
        Route("/api/sample", api.sample), Route("/api/interpolate", api.interpolate),
        Route("/api/nearest", api.nearest_images), Route("/api/mixing", api.mixing), Route("/api/stages", api.stages),
        Route("/api/upscale", api.upscale, methods=["POST"]),
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

"""`distgan-serve MODEL.onnx [MODEL2.onnx ...] [--host 127.0.0.1] [--port 8000]`: a page and API for generators.

Binds 127.0.0.1 unless --host says otherwise: on a training server, reach it through an
SSH port forward (`ssh -L 8000:127.0.0.1:8000 server`, then http://localhost:8000/ on the
laptop). Every model is loaded and run once before the port opens; a file that is not a
distgan generator stops the command with a message naming it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from distgan.runtime import ModelError
from distgan.serve.catalog import Limits, ServedModel, load_models


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened here so port 0 works and the printed address is the real one.

    Its protocol is IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say
    so, and without it every keep-alive response stalled ~40 ms (Nagle against delayed ACKs).
    """
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _summary(model: ServedModel) -> str:
    info = model.generator.info
    classes = f"{info.num_classes} classes" if info.num_classes else "unconditional"
    mode = "L" if info.channels == 1 else "RGB"
    return f"{model.id}: {info.family}, {info.height}x{info.width} {mode}, {classes}, step {info.step}, {info.dataset}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distgan-serve", description="A web page and an HTTP API for exported "
                                                                       "distgan generators (onnxruntime, no torch).")
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL.onnx", help="files from distgan-export")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads per model (default: one per core)")
    defaults = Limits()
    parser.add_argument("--max-n", type=int, default=defaults.max_n,
                        help="images per /api/sample (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="frames per /api/interpolate walk (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help="images one request renders, class=all counting every class (default %(default)s)")
    parser.add_argument("--max-query-bytes", type=int, default=defaults.max_query_bytes,
                        help="longest query string accepted (default %(default)s)")
    args = parser.parse_args(argv)
    for flag in ("max_n", "max_steps", "max_images", "max_query_bytes"):
        if getattr(args, flag) < (2 if flag == "max_steps" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be >= {2 if flag == 'max_steps' else 1}")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvicorn

        from distgan.serve.app import create_app, is_loopback
    except ImportError as exc:
        print(f"distgan-serve: error: {exc.name} is missing; install the serve extra: pip install 'distgan[serve]'",
              file=sys.stderr)
        return 2
    try:
        models = load_models(args.models, threads=args.threads)
    except (FileNotFoundError, ModelError) as exc:
        print(f"distgan-serve: error: {exc}", file=sys.stderr)
        return 2
    limits = Limits(args.max_n, args.max_steps, args.max_images, args.max_query_bytes)
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:  # also socket.gaierror: a host name that does not resolve
        print(f"distgan-serve: error: cannot listen on {args.host}:{args.port} (--host/--port): {exc.strerror}",
              file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    for model in models:
        print(f"model {_summary(model)}")
    print(f"serving {url}", flush=True)
    local_only = is_loopback(args.host)
    if local_only:
        print(f"from another machine: ssh -L {port}:127.0.0.1:{port} THIS_HOST, then open http://localhost:{port}/",
              flush=True)
    else:
        print(f"warning: listening on {args.host}: anyone who can reach this port can use it (no authentication)",
              flush=True)
    config = uvicorn.Config(create_app(models, limits, local_only), log_level="info", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

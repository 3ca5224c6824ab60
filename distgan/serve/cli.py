"""`distgan-serve MODEL.onnx|DIR [...] [--host 127.0.0.1] [--port 8000] [--data DIR]`: a page and API for generators
and super-resolution models (SRGAN exports: the page's upscale card, POST /api/upscale).

Binds 127.0.0.1 unless --host says otherwise: on a training server, reach it through an
SSH port forward (`ssh -L 8000:127.0.0.1:8000 server`, then http://localhost:8000/ on the
laptop), or behind a reverse proxy (README: nginx, Caddy; --root-path, --allowed-hosts).
Every model is loaded and run once before the port opens; a file that is not a distgan
generator or super-resolution model stops the command with a message naming it. A folder serves
every .onnx in it.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from distgan.data.manifest import DataError
from distgan.runtime import ModelError
from distgan.serve.catalog import Limits, ServedModel, ServedUpscaler, load_models, model_files
from distgan.serve.nearest import NearestIndex


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


def _summary(model: ServedModel | ServedUpscaler) -> str:
    if isinstance(model, ServedUpscaler):
        info = model.model.info
        mode = "L" if info.channels == 1 else "RGB"
        return f"{model.id}: {info.family}, super-resolution x{info.scale} {mode}, step {info.step}"
    info = model.generator.info
    classes = f"{info.num_classes} classes" if info.num_classes else "unconditional"
    mode = "L" if info.channels == 1 else "RGB"
    return f"{model.id}: {info.family}, {info.height}x{info.width} {mode}, {classes}, step {info.step}, {info.dataset}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="distgan-serve", description="A web page and an HTTP API for exported "
                                                                       "distgan generators and super-resolution "
                                                                       "models (onnxruntime, no torch).")
    parser.add_argument("models", type=Path, nargs="+", metavar="MODEL.onnx",
                        help="files from distgan-export (generators, SRGAN exports), or folders: every .onnx in them")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads per model (default: one per core)")
    parser.add_argument("--allowed-hosts", default="", metavar="NAMES",
                        help="comma-separated host names a reverse proxy may forward (e.g. gan.example.org, "
                             "*.example.org), answered beside localhost (default: localhost only)")
    parser.add_argument("--root-path", default="", metavar="PREFIX",
                        help="the path prefix a reverse proxy strips (e.g. /gan), as uvicorn's --root-path; a proxy "
                             "on this machine may send X-Forwarded-Prefix instead")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="a prepared training set (distgan-data prepare): adds 'nearest training images'")
    parser.add_argument("--data-split", default="train", help="the split --data searches (default %(default)s)")
    defaults = Limits()
    parser.add_argument("--max-n", type=int, default=defaults.max_n,
                        help="images per /api/sample (default %(default)s)")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="frames per /api/interpolate walk (default %(default)s)")
    parser.add_argument("--max-images", type=int, default=defaults.max_images,
                        help="images one request renders, class=all counting every class (default %(default)s)")
    parser.add_argument("--max-query-bytes", type=int, default=defaults.max_query_bytes,
                        help="longest query string accepted (default %(default)s)")
    parser.add_argument("--max-upload-bytes", type=int, default=defaults.max_upload_bytes,
                        help="largest image POSTed to /api/upscale (default %(default)s)")
    parser.add_argument("--max-upscale-pixels", type=int, default=defaults.max_upscale_pixels,
                        help="most pixels one /api/upscale output may have, scale^2 x the input's "
                             "(default %(default)s: 2048 x 2048)")
    args = parser.parse_args(argv)
    for flag in ("max_n", "max_steps", "max_images", "max_query_bytes", "max_upload_bytes", "max_upscale_pixels"):
        if getattr(args, flag) < (2 if flag == "max_steps" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be >= {2 if flag == 'max_steps' else 1}")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be in 0..65535")
    args.root_path = args.root_path.rstrip("/")
    if args.root_path and not args.root_path.startswith("/"):
        parser.error(f"--root-path must start with '/' (got {args.root_path!r})")
    args.allowed_hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
    return args


def nearest_indexes(data: Path, split: str, models: list[ServedModel | ServedUpscaler]) -> dict[str, NearestIndex]:
    """The --data index for every generator that draws the dataset's image shape (at least one must)."""
    index = NearestIndex.open(data, split)
    generators = [m for m in models if isinstance(m, ServedModel)]
    fits = {m.id: index for m in generators
            if (m.generator.info.height, m.generator.info.width, m.generator.info.channels) == index.image_shape}
    if not fits:
        raise DataError(f"{data}: --data holds {list(index.image_shape)} (H, W, C) images; no served model draws "
                        f"that shape")
    return fits


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
        models = load_models(model_files(args.models), threads=args.threads)
        nearest = nearest_indexes(args.data, args.data_split, models) if args.data else {}
    except (FileNotFoundError, ModelError, DataError) as exc:
        print(f"distgan-serve: error: {exc}", file=sys.stderr)
        return 2
    limits = Limits(args.max_n, args.max_steps, args.max_images, args.max_query_bytes, args.max_upload_bytes,
                    args.max_upscale_pixels)
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
    for model_id, index in nearest.items():
        print(f"nearest training images for {model_id}: {len(index.labels)} images of {index.name} "
              f"({index.describe()['features']}){f', cached in {index.cache}' if index.cache else ''}")
    app = create_app(models, limits, local_only, args.allowed_hosts, nearest)
    config = uvicorn.Config(app, log_level="info", server_header=False, root_path=args.root_path)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())

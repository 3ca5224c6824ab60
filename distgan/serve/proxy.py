"""The nginx recipe for distgan-serve under a path prefix, and an unprivileged nginx that runs it (tests, bench).

`python -m distgan.serve.proxy --prefix /gan --upstream 127.0.0.1:8000` prints the location
block README shows; the tests and bench/serve.py start a real nginx with exactly that block
(`-p` prefix, `-c` config, pid, logs and temp files in a scratch folder; no root needed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

NGINX = "/usr/sbin/nginx"


def location_block(prefix: str = "/gan", upstream: str = "127.0.0.1:8000") -> str:
    """The recipe: nginx strips the prefix (proxy_pass ends in /) and says what it was (X-Forwarded-Prefix); its
    body limit lets /api/upscale's default --max-upload-bytes (20,000,000) through, so the server's own JSON 413
    names the limit (nginx's default, 1 MiB, would answer its own HTML page first)."""
    prefix = "/" + prefix.strip("/")
    return f"""location = {prefix} {{ return 301 {prefix}/; }}
location {prefix}/ {{
    proxy_pass http://{upstream}/;
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-Prefix {prefix};
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    client_max_body_size 20m;
}}
"""


def nginx_config(folder: Path, listen: int, block: str) -> str:
    """A whole nginx.conf for an unprivileged nginx on 127.0.0.1:`listen`, every file it writes in `folder`."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers must read the (private) temp folder
    indented = "".join(f"        {line}\n" for line in block.splitlines())
    return f"""{user}worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {folder}/client_body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{listen};
{indented}    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """A real nginx in front of `upstream` under `prefix`, on a free port, for the length of a `with`."""

    def __init__(self, folder: Path, upstream: str, prefix: str = "/gan"):
        if not Path(NGINX).is_file() and shutil.which("nginx") is None:
            raise FileNotFoundError("nginx is not installed (apt-get install nginx)")
        self.folder, self.port = Path(folder), free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "nginx.conf"
        self.config.write_text(nginx_config(self.folder, self.port, location_block(prefix, upstream)))
        self.url = f"http://127.0.0.1:{self.port}{'/' + prefix.strip('/')}/"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Nginx:
        binary = NGINX if Path(NGINX).is_file() else shutil.which("nginx")
        self.proc = subprocess.Popen([binary, "-p", str(self.folder), "-c", str(self.config), "-e",
                                      str(self.folder / "error.log")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: "
                                   f"{(self.folder / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.__exit__(None, None, None)
        raise RuntimeError(f"nginx did not listen on {self.port} in 20 s")

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: nginx's fast shutdown, workers included
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distgan.serve.proxy",
                                     description="Print the nginx location block for distgan-serve under a prefix.")
    parser.add_argument("--prefix", default="/gan", help="the path on the public site (default %(default)s)")
    parser.add_argument("--upstream", default="127.0.0.1:8000", help="distgan-serve's address (default %(default)s)")
    args = parser.parse_args(argv)
    print(location_block(args.prefix, args.upstream), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

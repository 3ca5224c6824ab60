"""Fetching a weights file on a connected machine: streamed to a temporary file, digest-checked, renamed.

Only ever called when the user asks for a download (`--download`), so an
offline machine or a CI run never starts a 90 MB transfer by surprise.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from tqdm import tqdm


def locate_weights(path: str | os.PathLike | None, env_var: str, what: str,
                   candidates: list[Path | None], error: type[Exception]) -> Path | None:
    """`path`, else $env_var, which must exist; else the first candidate that does; else None.

    A path given explicitly (argument or environment) must exist: falling back
    past it would silently score with other weights than the user named.
    """
    if path is None and os.environ.get(env_var):
        path = os.environ[env_var]
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return path
        raise error(f"{what} {path}: no such file (given explicitly or by ${env_var})")
    return next((c for c in candidates if c is not None and c.is_file()), None)


class WeightsDownloadError(OSError):
    """The download failed or gave a file with another digest (nothing is left in place)."""


def download_checked(url: str, dest: Path, algorithm: str, expected: str, timeout_s: float = 60.0) -> Path:
    """Download `url` to `dest`; its hex digest must start with `expected` (a full digest or a torch-hub prefix)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.new(algorithm)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise WeightsDownloadError(f"downloading {url}: {exc}") from exc
    if not digest.hexdigest().startswith(expected):
        tmp.unlink(missing_ok=True)
        raise WeightsDownloadError(f"{url}: {algorithm} {digest.hexdigest()}, expected {expected}...; not kept")
    os.replace(tmp, dest)
    return dest

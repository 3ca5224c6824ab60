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

"""Fetching a checkpoint a user names by URL, into a local cache, resumably.

Only ever called on an explicit request (an import or an ``init_from`` URL),
never when the service starts. The standard library does the HTTP:

* the file lands in ``<cache>/downloads/<hash of the URL>/<file name>``, where
  ``<cache>`` is ``$AUDIO_DCLS_CACHE``, else ``$XDG_CACHE_HOME/audio_dcls``, else
  ``~/.cache/audio_dcls``; a file already there is used without any request;
* bytes go to ``<name>.part`` first. When the connection drops, the download
  continues where it stopped with an HTTP ``Range`` request (a server that
  ignores ranges sends the whole file again), a few times within one call, and
  across calls since the partial file stays;
* the finished file is renamed into place and its SHA-256 computed (and
  checked, when the caller knows the expected digest);
* progress is a tqdm bar when stderr is a terminal.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

__all__ = ["FetchedFile", "default_cache_dir", "fetch_url", "file_sha256", "is_url", "resolve_source"]

_CHUNK = 1 << 20
_TIMEOUT_S = 60.0
_USER_AGENT = "audio_dcls-checkpoint-fetch"


@dataclass(frozen=True)
class FetchedFile:
    path: Path  # the local file
    sha256: str  # hex digest of its bytes
    url: Optional[str] = None  # where it was downloaded from (None for a local file)


def is_url(source: str) -> bool:
    return str(source).startswith(("http://", "https://"))


def default_cache_dir() -> Path:
    """``$AUDIO_DCLS_CACHE``, else ``$XDG_CACHE_HOME/audio_dcls``, else ``~/.cache/audio_dcls``."""
    explicit = os.environ.get("AUDIO_DCLS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "audio_dcls"


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _cache_path(url: str, cache_dir: Path) -> Path:
    name = os.path.basename(urllib.parse.urlparse(url).path) or "download"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return cache_dir / "downloads" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _total_size(response, start: int) -> Optional[int]:
    """Full size of the remote file from a 200 or 206 response, when the server says."""
    if response.status == 206:
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if m and m.group(3) != "*":
            return int(m.group(3))
        length = response.headers.get("Content-Length")
        return start + int(length) if length else None
    length = response.headers.get("Content-Length")
    return int(length) if length else None


def _progress(total: Optional[int], initial: int, name: str, show: Optional[bool]):
    from tqdm import tqdm

    if show is None:
        show = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not show)


def _fetch_once(url: str, part: Path, show_progress: Optional[bool]) -> Optional[int]:
    """One request: append to ``part`` from its current size. Returns the full size when known.

    Raises OSError-family errors when the connection fails or drops.
    """
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # nothing past what we have: the part may be complete, or stale
            part.unlink()
            raise ConnectionResetError("server refused the resume range; starting over") from None
        raise
    with response:
        if start and response.status != 206:
            start = 0  # the server ignored the range and sends everything
        total = _total_size(response, start)
        with open(part, "ab" if start else "wb") as f, _progress(total, start, part.name[: -len(".part")], show_progress) as bar:
            while True:
                block = response.read(_CHUNK)
                if not block:
                    break
                f.write(block)
                bar.update(len(block))
    size = part.stat().st_size
    if total is not None and size < total:
        raise http.client.IncompleteRead(b"", total - size)
    return total


def fetch_url(
    url: str,
    cache_dir: Optional[Path] = None,
    expected_sha256: Optional[str] = None,
    retries: int = 4,
    show_progress: Optional[bool] = None,
) -> FetchedFile:
    """Download ``url`` into the cache (or find it there); see the module docstring.

    ``retries``: further attempts after a failed or cut request, each resuming
    where the previous stopped. Errors are one-line ``CheckpointError``s; the
    partial file is kept for the next call.
    """
    if not is_url(url):
        raise CheckpointError(f"{url}: not an http(s) URL")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = _cache_path(url, cache_dir)
    if final.is_file():
        digest = file_sha256(final)
        if expected_sha256 is None or digest == expected_sha256.lower():
            return FetchedFile(final, digest, url)
        final.unlink()  # a different file under the same URL: fetch it again
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    last_error: Optional[BaseException] = None
    for _ in range(retries + 1):
        try:
            _fetch_once(url, part, show_progress)
            last_error = None
            break
        except urllib.error.HTTPError as e:
            raise CheckpointError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError, resets, timeouts, cut transfers
            last_error = e
    if last_error is not None:
        have = part.stat().st_size if part.exists() else 0
        reason = getattr(last_error, "reason", None) or last_error
        if isinstance(reason, socket.timeout):
            reason = "timed out"
        raise CheckpointError(
            f"{url}: download failed after {retries + 1} attempts ({type(last_error).__name__}: {str(reason)[:120]}); "
            f"{have} bytes kept in {part}, run again to resume"
        )
    digest = file_sha256(part)
    if expected_sha256 is not None and digest != expected_sha256.lower():
        part.unlink()
        raise CheckpointError(f"{url}: SHA-256 {digest} does not match the expected {expected_sha256.lower()}; download removed")
    os.replace(part, final)
    return FetchedFile(final, digest, url)


def resolve_source(source, cache_dir: Optional[Path] = None, show_progress: Optional[bool] = None) -> FetchedFile:
    """A local path as it is, or a URL fetched into the cache; both with their SHA-256."""
    text = str(source)
    if is_url(text):
        return fetch_url(text, cache_dir, show_progress=show_progress)
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if path.is_dir():
        return FetchedFile(path, "", None)  # a folder has no single digest; formats that take folders check it
    return FetchedFile(path, file_sha256(path), None)

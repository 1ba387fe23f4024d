"""Durable, atomic file writes: a reader sees the old file or the new one, never a part.

Every writer goes the same way: a temporary file with a unique name in the target's
own folder (a rename is only atomic within one file system), written, flushed and
fsynced, renamed over the target, and then the folder fsynced so that the rename
itself survives a power cut. Three forms of the one mechanism:

* :func:`atomic_write` / :func:`atomic_write_json` -- the content in memory (bytes, text, JSON);
* :func:`atomic_open` -- a file object for streaming writers (``np.save``, ``torch.save``, ``csv``);
* :func:`atomic_path` -- a temporary *path* for libraries that only take a file name
  (safetensors, h5py, soundfile): they write it, it is then fsynced and renamed.

Temporary names are ``.{name}.tmp-{pid}-{random}``; :func:`remove_stale_temp_files`
clears those a killed process left behind.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
TEMP_MARK = ".tmp-"


def fsync_dir(folder: PathLike) -> None:
    """fsync a folder so that names created or renamed in it are durable (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on a directory
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_file(path: PathLike) -> None:
    """fsync a finished file that some library wrote by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A fresh temporary sibling of ``path``; it is recognisable by :data:`TEMP_MARK`."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _create_temp(path: Path) -> tuple[int, Path]:
    # O_EXCL: never share a temporary file with another writer; mode 0o666 honours the
    # umask like a plain open() would (mkstemp's 0o600 would hide stores and runs from
    # other users of the machine).
    while True:
        tmp = temp_name(path)
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _commit(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def atomic_open(path: PathLike, mode: str = "wb", encoding: Optional[str] = "utf-8", newline: Optional[str] = None) -> Iterator[IO]:
    """``with atomic_open(p, "wb") as f: np.save(f, a)`` -- the file appears at ``p``, whole and
    fsynced, only when the block ends without an exception; otherwise nothing changes at ``p``.
    ``mode``: "wb" or "w" (text, with ``encoding`` and ``newline`` as for :func:`open`)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """``with atomic_path(p) as tmp: lib.save(obj, tmp)`` -- for writers that want a file name.
    The file ``tmp`` is fsynced and renamed to ``p`` when the block succeeds."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    os.close(fd)
    try:
        yield tmp
        fsync_file(tmp)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: PathLike, data: Union[bytes, str], encoding: str = "utf-8") -> Path:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically and durably."""
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_open(path, "wb") as f:
        f.write(payload)
    return path


def atomic_write_json(path: PathLike, obj: Any, indent: Optional[int] = 1) -> Path:
    """``obj`` as JSON (plus a final newline), atomically and durably."""
    return atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_temp_files(folder: PathLike, name: Optional[str] = None) -> int:
    """Delete the temporary files killed writers left in ``folder`` (only those of ``name``
    when given); returns how many. Call it only where no other writer is at work."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    n = 0
    for p in folder.iterdir():
        # without a name: any temp file, also the undotted ``{name}.tmp-{pid}`` of older versions
        ours = p.name.startswith(f".{name}{TEMP_MARK}") if name else TEMP_MARK in p.name
        if ours and p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n

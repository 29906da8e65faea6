"""Atomic file writes: every file the framework writes goes through :func:`atomic_write`.

A crash or an exception while writing leaves the previous file (or no file) at ``path``, never a
truncated one: the bytes go to a temporary file in the same folder, which replaces ``path`` with
one ``os.replace`` only once it is complete. The file gets the mode a plain ``open`` would give it
(0666 less the umask, typically 0644), not the private 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "current_umask"]


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows (``/proc/self/status``);
    elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, durable: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``.

    Args:
        path: the destination; its folder is created if needed.
        mode: ``"wb"`` or ``"w"`` (text mode writes with ``newline=""``, as the csv module wants).
        durable: also fsync the file and the folder, so that the rename survives a power cut
            (checkpoints and configs; not worth it for every image).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # POSIX; mkstemp made the file private (0600)
            os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, mode, **({} if mode == "wb" else {"newline": ""})) as stream:
            yield stream
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None and error.filename in (None, temporary):
            # Name the file the caller asked for, not the temporary one (e.g. a full disk).
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise
    if durable and os.name == "posix":  # make the rename itself durable
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

"""Atomic file writes: a temporary name in the same folder, then one rename.

The temporary name is unique (a random part, created with ``O_EXCL``), so two writers of
one path never write into each other's temporary file: the last rename wins, and readers
see one whole file or the other. The temporary file is created as ``open(path, "w")``
creates a file (mode 0o666 less the umask), not as ``tempfile.mkstemp`` does (0o600):
after the rename it is the output file, and it must be as readable as the outputs
written directly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_text_atomic(path: Path, text: str, fsync: bool = True) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see the old file or the whole new one."""
    _write_atomic(path, "w", text, fsync)


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    _write_atomic(path, "wb", data, fsync)


def _write_atomic(path: Path, mode: str, data: str | bytes, fsync: bool) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open(..., "w")
            break
        except FileExistsError:
            continue
    try:
        encoding = {"encoding": "utf-8"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **encoding) as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

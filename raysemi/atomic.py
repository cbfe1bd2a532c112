"""Atomic writes: a file or a folder is complete or absent, never half there.

A file is written to a hidden temporary name in its own folder (``.tmp-<name>-<random>``), flushed to disk and
renamed over ``path`` with :func:`os.replace`, which is atomic on one file system: a reader sees the old file or
the new one, and a crash or an exception mid-write leaves the old file as it was. A folder is built under a
hidden staging name of the same form and renamed into place when its ``with`` block succeeds; on an error the
staging folder is removed. Hidden names keep staging out of listings (``checkpoints/step_*``) and out of
mirrored run files; a writer killed before its rename leaves its staging name, which
:func:`remove_staging_leftovers` clears.

Standard library and :mod:`raysemi.errors` only, so every package (``data/``, ``tracking/``, ``engine/``) can use it;
:func:`storage_errors` turns a write that fails for lack of space or permission into one line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from raysemi.errors import StorageError

TEMPORARY = ".tmp-"
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}


def _temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` no other writer picks (created with ``"x"`` mode / ``mkdir``, so the
    umask sets its permissions, unlike ``tempfile``'s owner-only ones)."""
    return path.with_name(f"{TEMPORARY}{path.name}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def open_atomic(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file handle whose contents replace ``path`` when the ``with`` block ends without an error;
    on an error the temporary file is removed and ``path`` is untouched. Creates ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        with tmp.open("xb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` atomically."""
    with open_atomic(path) as handle:
        handle.write(data)


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode())


def write_lines(path: str | Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` joined by newlines, with a final newline, atomically."""
    write_text(path, "\n".join(lines) + "\n")


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> None:
    """Replace ``path`` by ``data`` as JSON atomically."""
    write_text(path, json.dumps(data, indent=indent))


@contextlib.contextmanager
def staging_dir(final: str | Path, replace: bool = False) -> Iterator[Path]:
    """An empty hidden folder beside ``final`` to build it in; renamed to ``final`` when the block succeeds.

    ``final`` may be absent or an empty folder; with ``replace`` an existing ``final`` is removed first.
    Otherwise a non-empty ``final`` (another writer finished first) raises :class:`OSError` from the rename,
    which a caller that accepts the other copy catches. The staging folder is removed on every exit.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(final)
    staging.mkdir()
    try:
        yield staging
        if replace and final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_staging_leftovers(parent: Path, name_glob: str = "*") -> int:
    """Remove staging folders under ``parent`` for names matching ``name_glob`` (those of writers killed
    before their rename); return how many. Only for a folder with one writer at a time."""
    found = [p for p in parent.glob(f"{TEMPORARY}{name_glob}-*") if p.is_dir()]
    for leftover in found:
        shutil.rmtree(leftover, ignore_errors=True)
    return len(found)


@contextlib.contextmanager
def storage_errors(path: Path, what: str) -> Iterator[None]:
    """Turn a write that fails for lack of space or permission into a one-line :class:`StorageError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in STORAGE_ERRNOS:
            raise
        raise StorageError(f"{path}: could not write {what} ({exc.strerror}); free space on that disk or point "
                           "run.dir at other storage, then run the same command again to resume") from None

"""Storage checks: a run directory that cannot be written, or lacks room, fails before training starts.

What can be checked up front is: that ``run.dir`` (or its nearest existing parent) is a folder this process
can create files in, and that its file system has room for the checkpoints the run keeps. What cannot (the disk
filling up mid-run, storage going read-only) surfaces where the write fails, as a one-line
:class:`~raysemi.errors.StorageError` that ends the run, never as a hang or a half-written file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from torch import nn

from raysemi.errors import StorageError

MIB = 2**20
HEADROOM_BYTES = 64 * MIB  # metrics, configs, split files, Ray Train's own files


def check_run_storage(run_dir: Path, needed_bytes: int) -> None:
    """Fail with a :class:`StorageError` unless ``run_dir`` can be created and written, with ``needed_bytes``
    free on its file system."""
    existing = nearest_existing(run_dir)
    if not existing.is_dir():
        raise StorageError(f"run.dir={run_dir}: {existing} is a file, not a folder; choose another run.dir")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise StorageError(f"run.dir={run_dir}: cannot create files in {existing} ({exc.strerror}); "
                           "choose a writable folder (on a cluster, one every node shares)") from None
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise StorageError(f"run.dir={run_dir}: {free / MIB:.0f} MiB free on its disk, the run needs about "
                           f"{needed_bytes / MIB:.0f} MiB for its checkpoints; free space or choose another run.dir")


def nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_storage_bytes(models: dict[str, nn.Module], keep_checkpoints: int) -> int:
    """Bytes a run needs: ``keep_checkpoints`` kept plus one being written, each holding every model's weights
    three times over (the training state with up to two optimizer moments per weight, and ``model.pt``),
    plus headroom for the run's small files."""
    weights = sum(t.numel() * t.element_size() for m in models.values() for t in m.state_dict().values())
    return (keep_checkpoints + 1) * 4 * weights + HEADROOM_BYTES


def check_output_folder(path: Path, flag: str) -> None:
    """Fail with one :class:`StorageError` line naming ``flag`` unless ``path`` is a folder, or can be created
    as one, that this process can write files in; nothing is created (a command checks its outputs before its
    work starts)."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise StorageError(f"{flag} {path}: is a file, not a folder; give a folder")
    _check_writable_ancestor(path, path, flag, "a folder")


def check_output_file(path: Path, flag: str) -> None:
    """Fail with one :class:`StorageError` line naming ``flag`` unless ``path`` can be written as a file: not
    an existing folder, and its folder exists or can be created, writable; nothing is created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise StorageError(f"{flag} {path}: is a folder; give a file name, e.g. {path / 'out'}")
    _check_writable_ancestor(path, path.parent, flag, "a file")


def _check_writable_ancestor(given: Path, folder: Path, flag: str, what: str) -> None:
    """``folder`` (where ``given`` goes) exists or can be created: its nearest existing ancestor is a folder
    this process can create files in."""
    existing = nearest_existing(folder.absolute())
    if not existing.is_dir():
        raise StorageError(f"{flag} {given}: {existing} is a file, so {what} cannot be written under it")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise StorageError(f"{flag} {given}: cannot create files in {existing} ({exc.strerror}); choose a "
                           "writable folder") from None

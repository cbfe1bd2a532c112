"""``run.sync_to``: a run directory mirrored to object storage (``s3://``, ``gs://``, ``abfs://``, ``file://``).

Training reads and writes ``run.dir`` on the local disk of each node, and the mirror keeps the copy that
outlives nodes:

- at start, the driver and every worker :meth:`~RunMirror.pull` what their node lacks: the run's files
  (config, split files, metrics, summary) and the newest complete checkpoint when it is newer than the local
  one, so a run restarted on a fresh node (a lost spot node, a resubmitted job) resumes from it;
- rank 0 uploads each checkpoint as it is written (:meth:`~RunMirror.push_checkpoint`), its ``meta.json``
  last (a checkpoint without ``meta.json`` is never listed, so a cut-short upload is never resumed from), and
  removes the remote checkpoints the local pruning removed; the run's files go up at each checkpoint and at
  the end.

Files go through pyarrow's file systems (Ray Data's own dependency), which read cloud credentials from the
environment or the node's identity (instance profile, workload identity), never from a config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from raysemi.atomic import open_atomic, staging_dir
from raysemi.engine.checkpoint import PREFIX, CheckpointFiles, latest_checkpoint
from raysemi.errors import StorageError

NOT_MIRRORED = {"ray", "wandb"}  # Ray Train's own files; W&B syncs itself (`wandb sync`)
CHECKPOINTS = "checkpoints"


class RunMirror:
    """The copy of the local run directory ``local`` at ``uri``."""

    def __init__(self, uri: str, local: Path):
        from pyarrow import fs

        self.uri, self.local = uri, local
        try:
            self.fs, self.root = fs.FileSystem.from_uri(uri)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise StorageError(f"run.sync_to={uri}: not a storage URI pyarrow can open ({first_line(exc)}); "
                               "expected s3://bucket/path, gs://bucket/path, abfs://..., or file:///path") from None

    # ---- reading ----

    def pull(self) -> None:
        """Copy to ``local`` the run files it lacks and the newest remote checkpoint if newer than its own."""
        remote = self._listing()
        for relative in remote:
            top = relative.split("/", 1)[0]
            if top not in NOT_MIRRORED | {CHECKPOINTS} and not (self.local / relative).exists():
                self._download(relative, self.local / relative)
        newest = self._newest_remote_checkpoint(remote)
        local = latest_checkpoint(self.local)
        if newest is not None and (local is None or local.path.name < newest):
            self._download_checkpoint(newest, remote)

    def _listing(self) -> list[str]:
        from pyarrow import fs

        try:
            infos = self.fs.get_file_info(fs.FileSelector(self.root, recursive=True, allow_not_found=True))
        except OSError as exc:
            raise StorageError(f"run.sync_to={self.uri}: cannot list it ({first_line(exc)})") from None
        return sorted(info.path[len(self.root.rstrip("/")) + 1:] for info in infos if info.type == fs.FileType.File)

    @staticmethod
    def _newest_remote_checkpoint(remote: list[str]) -> str | None:
        complete = [r.split("/")[1] for r in remote
                    if r.startswith(f"{CHECKPOINTS}/{PREFIX}") and r.endswith("/meta.json") and r.count("/") == 2]
        return max(complete) if complete else None

    def _download_checkpoint(self, name: str, remote: list[str]) -> None:
        final = self.local / CHECKPOINTS / name
        try:
            with staging_dir(final) as staging:
                for relative in remote:
                    if relative.startswith(f"{CHECKPOINTS}/{name}/"):
                        self._download(relative, staging / relative.rsplit("/", 1)[1])
        except OSError:  # another worker of this node pulled it first
            if not (final / "meta.json").is_file():
                raise

    def _download(self, relative: str, target: Path) -> None:
        try:  # workers of one node may pull at once: each writes its own temporary file
            with self.fs.open_input_stream(f"{self.root}/{relative}") as source, open_atomic(target) as sink:
                shutil.copyfileobj(source, sink)
        except OSError as exc:
            raise StorageError(f"run.sync_to={self.uri}: cannot read {relative} ({first_line(exc)})") from None

    # ---- writing (rank 0) ----

    def push_run_files(self, skip: frozenset[str] = frozenset()) -> None:
        """Upload the run's files (everything but checkpoints, Ray's and W&B's folders, and ``skip``)."""
        for path in sorted(self.local.rglob("*")):
            relative = path.relative_to(self.local).as_posix()
            top = relative.split("/", 1)[0]
            if path.is_file() and not path.name.startswith(".") and top not in NOT_MIRRORED | {CHECKPOINTS} | skip:
                self._upload(path, relative)

    def push_checkpoint(self, checkpoint: CheckpointFiles) -> None:
        """Upload ``checkpoint`` (``meta.json`` last), then remove remote checkpoints pruned locally."""
        files = sorted(checkpoint.path.iterdir(), key=lambda p: p.name == "meta.json")
        for path in files:
            self._upload(path, f"{CHECKPOINTS}/{checkpoint.path.name}/{path.name}")
        kept = {p.name for p in (self.local / CHECKPOINTS).iterdir()}
        stale = {r.split("/")[1] for r in self._listing() if r.startswith(f"{CHECKPOINTS}/{PREFIX}")} - kept
        for name in stale:
            self.fs.delete_dir(f"{self.root}/{CHECKPOINTS}/{name}")

    def _upload(self, path: Path, relative: str) -> None:
        target = f"{self.root}/{relative}"
        try:
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            with path.open("rb") as source, self.fs.open_output_stream(target) as sink:
                shutil.copyfileobj(source, sink)
        except OSError as exc:
            raise StorageError(f"run.sync_to={self.uri}: cannot write {relative} ({first_line(exc)}); check the "
                               "bucket, its permissions and this node's credentials") from None


def mirror_for(sync_to: str | None, local: Path) -> RunMirror | None:
    return RunMirror(sync_to, local) if sync_to else None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

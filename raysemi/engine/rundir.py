"""The run directory: ``config.yaml``, split files (and ``split.json``, their counts), ``metrics.jsonl``,
``checkpoints/``, ``summary.json``.

A directory is created only after the config and the data passed their checks, and its files are written
through temporary names, so a failed start leaves nothing behind. Re-running the same config on an existing
run directory resumes it; a different config is refused rather than mixed into the old run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from raysemi import atomic
from raysemi.config import Config, active_sections
from raysemi.data.dataset import DatasetSource
from raysemi.data.splits import SPLIT_COUNTS_FILE, write_split_file
from raysemi.engine.checkpoint import latest_checkpoint
from raysemi.engine.mirror import mirror_for
from raysemi.engine.storage import check_run_storage
from raysemi.errors import ConfigError

# Keys that may change between an interrupted run and its resumption.
RESUMABLE_KEYS = {"scaling", "tracking", "run.dir", "run.name", "run.sync_to", "train.log_every",
                  "train.stall_timeout_s", "data.verify"}


def run_directory(cfg: Config) -> Path:
    return Path(cfg.run.dir).expanduser().resolve()


def open_run_dir(cfg: Config, source: DatasetSource, needed_bytes: int) -> tuple[Path, int]:
    """Check the storage (writable, ``needed_bytes`` free), fetch the run from its mirror (``run.sync_to``)
    where this machine lacks it, and create or reopen the run directory; return it and the step training
    continues from."""
    local = run_directory(cfg)
    check_run_storage(local, needed_bytes)
    mirror = mirror_for(cfg.run.sync_to, local)
    if mirror is not None:
        mirror.pull()
    run_dir, start_step = prepare_run_dir(cfg, source)
    if mirror is not None:
        mirror.push_run_files()
    return run_dir, start_step


def prepare_run_dir(cfg: Config, source: DatasetSource) -> tuple[Path, int]:
    """Create (or reopen) the run directory; return it and the step training continues from."""
    run_dir = run_directory(cfg)
    if (run_dir / "config.yaml").is_file():
        _check_same_run(run_dir, cfg)
        checkpoint = latest_checkpoint(run_dir)
        return run_dir, checkpoint.read_meta()["step"] if checkpoint else 0
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run.dir={run_dir} exists and is not a raysemi run; choose an empty or new folder")
    with atomic.staging_dir(run_dir) as staging:  # an existing run_dir is empty: the rename replaces it
        write_split_file(staging / "labeled.txt", source.split.labeled, source.root)
        write_split_file(staging / "unlabeled.txt", source.split.unlabeled, source.root)
        (staging / SPLIT_COUNTS_FILE).write_text(json.dumps(source.counts.as_dict(), indent=1))
        (staging / "config.yaml").write_text(cfg.to_yaml())
    return run_dir, 0


def _check_same_run(run_dir: Path, cfg: Config) -> None:
    """Refuse a config that differs from the run's in a key that is not resumable; the sections of other
    methods than the run's are not compared (runs written before they were left out still hold them)."""
    old = _flatten(active_sections(yaml.safe_load((run_dir / "config.yaml").read_text())))
    new = _flatten(cfg.run_dump())
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and not _resumable(k)]
    if changed:
        key = changed[0]
        raise ConfigError(
            f"run.dir={run_dir} holds a run with a different config ({key}: {old.get(key)!r} there, "
            f"{new.get(key)!r} now); choose a new run.dir or restore the old value"
        )


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE_KEYS)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def finished_summary(run_dir: Path, start_step: int, steps: int) -> dict[str, Any] | None:
    """The summary of a run that already trained its ``steps`` (it would resume at ``start_step``), else None."""
    return read_summary(run_dir) if start_step >= steps else None


def trained_summary(run_dir: Path) -> dict[str, Any]:
    """The summary the training loop wrote at its end (a RuntimeError where it did not)."""
    summary = read_summary(run_dir)
    if summary is None:
        raise RuntimeError(f"training ended without writing {run_dir / 'summary.json'}")
    return summary


def write_json(path: Path, data: Any) -> None:
    """:func:`raysemi.atomic.write_json` into a run directory: a full disk is a one-line :class:`StorageError`."""
    with atomic.storage_errors(path, path.name):
        atomic.write_json(path, data)

"""Which code trained a run: a code version that pairs runs by what they executed, and the commit for the record.

The code version of a benchmark protocol (:func:`code_version`) is a hash of every file under ``raysemi/`` that a
training run imports (all but :data:`NOT_TRAINING_CODE`), the protocol's config and the split files it names, as
they are in the work tree (uncommitted edits count). Each file enters as its git blob id, so two checkouts whose
trees hold the same files get the same version whatever their commits. Two runs are compared only when their
versions are equal (:func:`raysemi.bench.pairs.same_code`). A run directory records the version it trains with
beside itself, in ``<run dir>.code_version`` (:func:`claim_run_dir`), so a half-trained run is never resumed by
other code and a report can read which code trained a run (:func:`recorded_version`).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from raysemi.errors import RaysemiError

TRAINING_CODE = ("raysemi",)  # the code that trains a run (beside the protocol's config and split files)
# Parts of raysemi/ that no training run imports: outside the import closure of the two runners (raysemi.engine.plain
# and raysemi.ray.train; tests/test_gain_benchmark.py checks this list against that closure): reading, reporting,
# benchmarking, sweeping and job-submitting code, and the command line's parser. Editing them leaves a run's code
# version, so a harness, report or sweep change does not make every run stale.
NOT_TRAINING_CODE = ("raysemi/analysis/", "raysemi/bench/", "raysemi/cli.py", "raysemi/configdoc.py",
                     "raysemi/ray/ingest.py", "raysemi/ray/jobs.py", "raysemi/ray/tune.py", "raysemi/ray/uris.py",
                     "raysemi/sweeps.py")


def is_training_code(path: str) -> bool:
    """Whether ``path`` (relative to the repository root, ``/``-separated) is hashed into the code version."""
    return not path.startswith(NOT_TRAINING_CODE)


def code_version(repo: Path, files: list[str], from_git: bool) -> str:
    """12 hex digits of a hash over ``files`` (relative to ``repo``, as :func:`training_files` lists them), each
    as its path and git blob id; ``nogit-`` before them when git did not list the files."""
    digest = hashlib.sha1()
    for path in sorted(files):
        data = (repo / path).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        digest.update(f"{path} {blob}\n".encode())
    return ("" if from_git else "nogit-") + digest.hexdigest()[:12]


def training_files(repo: Path, config: str, say=None) -> tuple[list[str], bool]:
    """The files that decide what a run of the protocol config ``config`` (relative to ``repo``) trains: the
    training code, the config and the ``.txt`` split files its ``data`` section names; and whether git listed
    them (ignored files left out). Outside a git checkout every file under :data:`TRAINING_CODE` but
    ``__pycache__`` is listed, and ``say`` (a function of one line, default: stderr) is told so."""
    from raysemi.config import load_config

    data = load_config(repo / config).data
    splits = [v for v in (data.train_split, data.labeled_split, data.unlabeled_split, data.val_split,
                          data.selection_split) if v and v.endswith(".txt") and (repo / v).is_file()]
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-co", "--exclude-standard", "--", *TRAINING_CODE],
                            capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout.strip():
        code = [p for p in listed.stdout.splitlines() if (repo / p).is_file() and is_training_code(p)]
        return [*code, config, *splits], True
    (say or _stderr)(f"code_version: {repo} is not a git checkout (or git is missing): hashing every file under "
                     f"{', '.join(TRAINING_CODE)}/ but __pycache__; the version is marked nogit-")
    code = [str(p.relative_to(repo)) for folder in TRAINING_CODE for p in (repo / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and is_training_code(p.relative_to(repo).as_posix())]
    return [*code, config, *splits], False


def commit_id(repo: Path) -> str:
    """``repo``'s commit (``+changes`` when the work tree's ``raysemi/`` differs from it), for the record; pairing
    goes by the code version."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+changes" if git("status", "--porcelain", "--", "raysemi") else "")


class MixedCodeError(RaysemiError):
    """A run directory holds a run that other code started."""


def version_file(run_dir: Path) -> Path:
    """Where the code version a run directory trains with is recorded: ``<run dir>.code_version`` beside it."""
    return run_dir.with_name(run_dir.name + ".code_version")


def recorded_version(run_dir: Path) -> str | None:
    """The code version recorded for ``run_dir`` (None where none is)."""
    path = version_file(run_dir)
    return (path.read_text().strip() or None) if path.is_file() else None


def claim_run_dir(run_dir: Path, version: str, restart: bool = False) -> None:
    """Record that ``run_dir`` trains with code ``version``. A directory that another version started (or that
    exists without a record: unknown) is not resumed, which would mix two versions in one run: with ``restart``
    it is deleted so the run starts afresh, else :class:`MixedCodeError` names both versions."""
    marker = version_file(run_dir)
    started = marker.read_text().strip() if marker.is_file() else ("unknown" if run_dir.exists() else None)
    if started not in (None, version):
        if not restart:
            raise MixedCodeError(f"{run_dir} holds a run started at code {started}, not {version}: resuming it "
                                 "would mix two code versions")
        shutil.rmtree(run_dir, ignore_errors=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(version + "\n")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

"""Errors that reach the user as one line.

Every problem a user can fix (a config typo, a missing file, a bad label value) raises a subclass of
:class:`RaysemiError` whose message names the file, key or value at fault and what would be accepted. The CLI
prints that message alone and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class RaysemiError(Exception):
    """A problem the user can fix; its message is the whole explanation."""


class ConfigError(RaysemiError):
    """A config file or override is malformed, names an unknown key or holds a bad value."""


class DataError(RaysemiError):
    """A dataset file is missing, unreadable or inconsistent with its split or its classes."""


class CheckpointError(RaysemiError):
    """A checkpoint or run directory is missing, incomplete or incompatible."""


def find_user_error(exc: BaseException) -> RaysemiError | None:
    """The first :class:`RaysemiError` in ``exc``'s chain, or None.

    Ray wraps exceptions raised in workers and tasks (``RayTaskError``, Train's ``WorkerGroupError`` with its
    ``worker_failures``); the original is kept in the cause chain, or only its text survives in the wrapper's
    message. Both are searched.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, RaysemiError):
            return current
        nested = [getattr(current, name, None) for name in ("__cause__", "__context__", "cause")]
        failures = getattr(current, "worker_failures", None)
        if isinstance(failures, dict):
            nested += list(failures.values())
        stack += [n for n in nested if isinstance(n, BaseException)]
    return _error_from_text(str(exc))


def _error_from_text(text: str) -> RaysemiError | None:
    """Recover a user error whose class name survives only in a wrapped traceback's text."""
    for cls in (ConfigError, DataError, CheckpointError, RaysemiError):
        marker = f"{cls.__name__}: "
        if marker in text:
            return cls(text.rsplit(marker, 1)[1].strip().splitlines()[0])
    return None


class StorageError(RaysemiError):
    """The run's storage cannot be written: no permission, not a folder, or no space left."""

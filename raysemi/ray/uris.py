"""Run locations below a storage location given as a path or an object-store URI."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def below(storage: str, *names: str) -> str:
    """``storage`` with ``names`` appended to its path: ``/mnt/runs`` → ``/mnt/runs/a/b``, and for a URI the
    query (pyarrow's ``?endpoint_override=…&region=…``) stays at the end: ``s3://bucket/team?region=x`` →
    ``s3://bucket/team/a/b?region=x``."""
    if "://" not in storage:
        return "/".join([storage.rstrip("/"), *names])
    parts = urlsplit(storage)
    return urlunsplit(parts._replace(path="/".join([parts.path.rstrip("/"), *names])))

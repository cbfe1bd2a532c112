"""What raysemi prints on the terminal: its ``[raysemi]`` lines, and progress bars for long in-process work
(shown only when stdout is a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """``items`` unchanged, with a rich progress bar on a TTY (plain iteration in logs and CI)."""
    if not sys.stdout.isatty():
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, total=total, transient=True)


def say(text: str) -> None:
    """One ``[raysemi]`` line on stdout. Written directly: Ray Train V2 patches ``print`` in workers to tee
    into its logger, which shows every printed line twice on the driver."""
    sys.stdout.write(f"[raysemi] {text}\n")
    sys.stdout.flush()

"""The stall watchdog: waits on data that end after ``train.stall_timeout_s`` instead of never.

A training loop spends its waits in ``next()`` on Ray Data iterators (one per training stream, one per pass
over the val data). When Ray Data never gets a CPU to decode on, such a ``next()`` blocks forever inside Ray,
where no signal or asynchronous exception reaches it. So :class:`WatchedIterator` makes each ``next()`` in a
helper thread of its own and waits for the answer with a timeout: past it, the loop raises
:class:`StallError` naming what it was waiting for, and the helper thread (a daemon, still blocked in Ray) ends
with the process or the Tune trial's actor. Nothing here imports Ray.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, TypeVar

from raysemi.errors import RaysemiError

T = TypeVar("T")


class StallError(RaysemiError):
    """A run made no progress for ``train.stall_timeout_s``; the message says what it was waiting for."""


class WatchedIterator(Iterator[T]):
    """``iterator`` whose ``next()`` raises :class:`StallError` after ``timeout_s`` seconds without a value.

    ``what`` names the source in the error (``data stream 'labeled'``). Items are fetched one at a time, on
    request, so the wrapped iterator is never read ahead of the loop. After a stall or an error the iterator is
    spent; the helper thread ends with the first error or the end of ``iterator``.
    """

    def __init__(self, iterator: Iterator[T], what: str, timeout_s: float):
        self.what, self.timeout_s = what, timeout_s
        self._iterator = iterator
        self._requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._answers: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self._stalled = False
        self._error: BaseException | None = None  # the end of ``iterator`` (StopIteration) or its failure
        threading.Thread(target=self._serve, name=f"raysemi-next-{what}", daemon=True).start()

    def _serve(self) -> None:
        while self._requests.get():  # one request, one answer
            try:
                self._answers.put((next(self._iterator), None))
            except BaseException as exc:  # StopIteration and real errors alike go back to the caller
                self._answers.put((None, exc))
                return

    def __next__(self) -> T:
        if self._stalled:
            raise StallError(f"{self.what} stalled before")
        if self._error is not None:
            raise self._error
        self._requests.put(True)
        try:
            value, error = self._answers.get(timeout=self.timeout_s)
        except queue.Empty:
            self._stalled = True
            raise StallError(f"no batch from {self.what} for {self.timeout_s:g} s") from None
        if error is not None:
            self._error = error
            raise error
        return value


def watched(iterator: Iterator[T], what: str, timeout_s: float) -> Iterator[T]:
    """``iterator`` under the watchdog, or unchanged when ``timeout_s`` is 0 (the watchdog is off)."""
    return WatchedIterator(iterator, what, timeout_s) if timeout_s > 0 else iterator

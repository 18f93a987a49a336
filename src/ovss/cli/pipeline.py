"""Overlap a batch job's reading and writing with the model: a bounded read-ahead and write-behind.

``ovss segment`` over a folder decodes images, runs the model and writes PNG/JSON outputs. Decoding
(PIL, libjpeg) and encoding (zlib) release the GIL, as PyTorch's kernels do, so a reader thread that
decodes the next images and a writer thread that saves the previous results keep the model busy.

* :func:`read_ahead` yields ``(index, image or None, error or None)`` in input order from a reader
  thread that stays at most ``depth`` decoded images ahead (memory: ``depth`` images).
* :class:`WriteBehind` runs submitted jobs (saving one result) in order on a writer thread, at most
  ``depth`` waiting (memory: ``depth`` results); the first error a job raises is raised again in the
  caller's thread, at the next :meth:`~WriteBehind.submit` or at :meth:`~WriteBehind.close`.

Both threads are daemons and stop when the caller stops (an error, Ctrl-C): the job writes every
file atomically and logs an image as done only after its outputs are in place, so a killed run
leaves no partial file and a re-run redoes exactly the images whose outputs are missing.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
_POLL_S = 0.1  # how often a blocked thread checks whether it was told to stop
_DONE = object()


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` into a bounded queue unless ``stop`` is set first; True when put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def read_ahead(
    keys: Iterable[T], read: Callable[[T], Any], depth: int = 2
) -> Generator[tuple[T, Any, Exception | None], None, None]:
    """``read(key)`` for every key on a reader thread, at most ``depth`` results ahead of the consumer.

    Args:
        keys: what to read, in order.
        read: decodes one key (e.g. ``read_image``); an :class:`Exception` it raises is handed over
            in place of the result, so one unreadable image does not stop the others.
        depth: decoded results held at most (>= 1).

    Yields:
        ``(key, result, None)`` or ``(key, None, error)``, in the order of ``keys``.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def reader() -> None:
        try:
            for key in keys:
                item: tuple[T, Any, Exception | None]
                try:
                    item = (key, read(key), None)
                except Exception as e:  # handed to the consumer, which reports it per image
                    item = (key, None, e)
                if not _put(q, item, stop):
                    return
        except BaseException as e:  # the keys themselves failed: the consumer raises it
            _put(q, (_DONE, None, e), stop)
            return
        _put(q, (_DONE, None, None), stop)

    thread = threading.Thread(target=reader, name="ovss-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            key, value, error = q.get()
            if key is _DONE:
                if error is not None:
                    raise error
                return
            yield key, value, error
    finally:  # the consumer stopped (done, error, Ctrl-C or the generator closed): stop the reader
        stop.set()
        thread.join(timeout=5)


class WriteBehind:
    """Run jobs in order on a writer thread, at most ``depth`` waiting; errors come back to the caller.

    Use as a context manager: a normal exit waits for every job; an exit by an exception (or Ctrl-C)
    drops the jobs not yet started and waits only for the running one.
    """

    def __init__(self, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="ovss-write-behind", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if job is _DONE:
                return
            if self._error is not None or self._stop.is_set():
                continue  # after an error or a cancel: drop the rest
            try:
                job()
            except BaseException as e:
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def submit(self, job: Callable[[], object]) -> None:
        """Queue ``job`` (blocks while ``depth`` jobs wait); raises a previous job's error first."""
        self._raise()
        self._queue.put(job)  # the writer never stops taking jobs before close()

    def close(self, cancel: bool = False) -> None:
        """Wait for the queued jobs (``cancel``: only the running one), then raise a job's error."""
        if cancel:
            self._stop.set()
        else:
            self._queue.put(_DONE)
        self._thread.join()
        if not cancel:
            self._raise()

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: Any) -> None:
        self.close(cancel=kind is not None)

"""Work ahead in threads: each item's producer runs in a worker while the caller consumes earlier items.

Decoding (PyAV), image resizing (PIL) and the processors' numpy work release
the GIL for most of their time, so threads overlap them with the model's
forward passes without copying frames between processes.

An exception of a producer is raised again, the same object with the worker's
traceback, in the consumer's thread when it reaches that item's values; which
exceptions are worth surviving is the consumer's decision (the extractors skip
a `decode.DecodeError` and stop on anything else).
"""
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

_END = object()
_POLL_SECONDS = 0.05


class _Failure:
    """The exception a producer raised, on its way to the consumer."""

    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


def _put(q, value, cancel):
    """Put `value` into `q`, giving up when `cancel` is set. Returns False when cancelled."""
    while not cancel.is_set():
        try:
            q.put(value, timeout=_POLL_SECONDS)
            return True
        except queue.Full:
            continue
    return False


def _run(produce, item, q, cancel):
    """Worker: put each value of produce(item), then _END, or the failure, into `q`."""
    try:
        for value in produce(item):
            if not _put(q, value, cancel):
                return
    except BaseException as exc:  # noqa: B036 - the consumer raises it again; nothing is lost in the thread
        _put(q, _Failure(exc), cancel)
        return
    _put(q, _END, cancel)


def _stream(q, cancel):
    """The consumer's side of one item: its values in order; a producer's exception is raised here."""
    try:
        while True:
            value = q.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.exc
            yield value
    finally:
        cancel.set()


def prefetch_streams(produce, items, workers, depth=1):
    """Run the generator function ``produce(item)`` for up to `workers` items ahead.

    Args:
        produce: item -> iterator of values (e.g. chunks of decoded frames).
        items: the items, in the order they are consumed.
        workers: worker threads (at least 1).
        depth: values a producer may hold ready before it waits for the consumer,
            so memory is bounded by about ``workers * (depth + 1)`` values.
    Yields:
        (item, stream) in the order of `items`; `stream` yields produce(item)'s
        values and raises, as they are, the exceptions produce raised. A stream left
        unfinished is abandoned (its producer stops) when the next item is taken.
    """
    workers = max(1, int(workers))
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prefetch")
    pending = deque()
    iterator = iter(items)

    def submit():
        for item in iterator:
            q, cancel = queue.Queue(maxsize=depth), threading.Event()
            executor.submit(_run, produce, item, q, cancel)
            pending.append((item, q, cancel))
            return

    try:
        for _ in range(workers):
            submit()
        while pending:
            item, q, cancel = pending.popleft()
            submit()
            stream = _stream(q, cancel)
            try:
                yield item, stream
            finally:
                stream.close()
                cancel.set()
    finally:
        for _, _, cancel in pending:
            cancel.set()
        executor.shutdown(wait=True, cancel_futures=True)

"""A helper process that parses the big JSON parts of inference requests, off the serving process's GIL.

``json.loads``, the regular expressions and ``np.asarray`` in ``parsing.py`` hold the GIL for as
long as their input takes: a 1 MiB JSON body of nested lists held it for over 100 ms, a 1 MiB run
of blanks for 17 ms, and while it is held every other request of the serving process waits. So
JSON parts over ``INLINE_BYTES`` are decoded here, in one spawned worker process started at the
first such request (numpy and the decoder, no model), at the lowest CPU priority (``SCHED_IDLE``,
else nice 10), so a busy device serves its small requests first and big ones wait or get a 503:

- at most ``max_pending`` of them are in the worker or waiting for it; more get an
  ``InferenceRequestError`` with status 503 (the server adds Retry-After), so big bodies queue
  among themselves, never in front of the small requests, which are decoded inline;
- a worker that dies is replaced at the next request; the request it had gets a 503.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from concurrent.futures.process import BrokenProcessPool

from edgekit_agent.errors import InferenceRequestError
from edgekit_agent.oip import InferHeader, decode_infer_header
from edgekit_agent.tensors import TensorInfo

# Inline, the worst JSON of this size holds the GIL for ~2 ms (nested lists); a round trip to the
# worker costs about as much, so smaller parts are not worth sending.
INLINE_BYTES = 16 * 1024
# the worker's nice value where SCHED_IDLE is refused
WORKER_NICE = 10

Outcome = tuple[str, InferHeader | tuple[int, str]]  # ("ok", header) or ("error", (status, message))


def _busy(message: str) -> InferenceRequestError:
    return InferenceRequestError(message, status=503)


def _lower_priority() -> None:
    """SCHED_IDLE where the kernel has it: the worker then runs only on a core nothing else wants,
    and a request handler waking up preempts it at once (a nice value only shrinks its share)."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)


def _init_worker(parent: int) -> None:
    _lower_priority()

    # the worker holds its own queue's pipe open, so a parent killed with SIGKILL would leave it
    # waiting forever; it watches for being orphaned instead
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _decode(json_part: bytes, binary_length: int, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo],
            max_depth: int) -> Outcome:
    # errors travel as values: an exception with keyword arguments does not survive pickling
    try:
        return "ok", decode_infer_header(json_part, binary_length, inputs, outputs, max_depth=max_depth)
    except InferenceRequestError as exc:
        return "error", (exc.status, exc.one_line())


class ParserProcess:
    """``decode`` runs in the worker: a module-level function (it is sent by name), ``_decode`` unless
    a test needs another."""

    def __init__(self, max_pending: int = 2, decode: Callable[..., Outcome] = _decode) -> None:
        self._max_pending, self._pending = max_pending, 0
        self._decode = decode
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the agent has threads (MQTT, onnxruntime) a fork would copy mid-step
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker, initargs=(os.getpid(),))
            return self._pool

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def decode(self, json_part: bytes, binary_length: int, inputs: Sequence[TensorInfo],
               outputs: Sequence[TensorInfo], *, max_depth: int, timeout: float) -> InferHeader:
        """``decode_infer_header`` in the worker; status 503 when it has enough to do."""
        with self._lock:
            if self._pending >= self._max_pending:
                raise _busy("busy: too many big JSON requests being parsed")
            self._pending += 1
        pool = self._executor()
        try:
            future: Future[Outcome] = pool.submit(self._decode, json_part, binary_length, list(inputs), list(outputs),
                                                   max_depth)
        except BaseException:
            self._done()
            raise
        # counted until the worker is done with it, not until this caller stops waiting
        future.add_done_callback(lambda _: self._done())
        try:
            _, value = future.result(timeout)
        except BrokenProcessPool as exc:
            self._discard(pool)
            raise _busy("the JSON parser process stopped; retry") from exc
        except FutureTimeoutError as exc:
            raise _busy("busy: parsing the request's JSON took too long") from exc
        if isinstance(value, InferHeader):
            return value
        status, message = value
        raise InferenceRequestError(message, status=status)

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1

    @property
    def pending(self) -> int:
        """Requests in the worker or waiting for it."""
        return self._pending

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["INLINE_BYTES", "Outcome", "ParserProcess"]

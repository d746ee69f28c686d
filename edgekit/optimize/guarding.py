"""Run memory-hungry quantization steps in a child process with a memory limit.

onnxruntime's calibrators and QDQ debugging tools keep every intermediate tensor in memory; on a
detector at 640x640 that is ~0.7 GB per sample, and one unlucky recipe can take the whole
machine. In a child with RLIMIT_DATA the same recipe fails alone, as "out of memory", and the
search goes on.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, TimeoutError
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from edgekit.errors import QuantizationError

R = TypeVar("R")

DEFAULT_LIMIT = 6 * 2**30
PR_SET_PDEATHSIG = 1


def memory_limit() -> int:
    raw = os.environ.get("EDGEKIT_QUANTIZE_MEMORY")
    if raw:
        try:
            return int(float(raw) * 2**30)
        except ValueError:
            pass
    return DEFAULT_LIMIT


def _limit(nbytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (nbytes, nbytes))
    # Die with the search: an interrupted quantize must not leave a calibration running.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_limited(what: str, fn: Callable[..., R], *args: Any, timeout: float | None = None, **kwargs: Any) -> R:
    """``fn(*args, **kwargs)`` in a fresh process limited to ``memory_limit()`` bytes of data.

    A ``timeout`` keyword (seconds) stops the worker when it runs longer: a slow calibration must
    not overrun the search's time budget.
    """
    limit = memory_limit()
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=_limit, initargs=(limit,))
    try:
        return pool.submit(fn, *args, **kwargs).result(timeout=timeout)
    except TimeoutError as exc:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        raise SearchTimeout(f"{what}: stopped at the time budget") from exc
    except MemoryError as exc:
        raise QuantizationError(
            f"{what}: out of memory (limit {limit / 2**30:.1f} GB)",
            hint="set EDGEKIT_QUANTIZE_MEMORY (GB) or use fewer calibration samples",
        ) from exc
    except BrokenProcessPool as exc:
        raise QuantizationError(f"{what}: the worker process died (out of memory?)") from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class SearchTimeout(QuantizationError):
    """A step was stopped because the search's time budget ran out."""

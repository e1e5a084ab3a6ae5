"""Limits on the native thread pools (BLAS, OpenMP) around a piece of work, with the pools found once.

``threadpoolctl.threadpool_limits`` finds the loaded libraries anew on every call: it walks every
shared library of the process with a Python callback, holding the GIL for 50-150 ms, and the window's
thread waits that long for its next frame. Every quick training and every "label next" did it. One
``ThreadpoolController``, made once (by the first job that asks, or the start-up warm-up), answers
every later limit at once. No Qt here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from engine.runtime.first_imports import heavy_imports

_controller = None


def thread_pools():
    """threadpoolctl's view of the loaded native thread pools, made on first use (None without
    threadpoolctl, which comes with scikit-learn)."""
    global _controller
    with heavy_imports():  # one thread makes it (the warm-up job and a map job may both ask)
        if _controller is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                return None
            _controller = ThreadpoolController()
    return _controller


@contextlib.contextmanager
def native_threads(limit: int | None, user_api: str | None = None) -> Iterator[None]:
    """At most ``limit`` threads in the native pools (``user_api`` "blas" or "openmp": only those)
    inside the block, restored after it; ``limit`` None leaves them as they are."""
    controller = thread_pools() if limit is not None else None
    if controller is None:
        yield
        return
    with controller.limit(limits=limit, user_api=user_api):
        yield

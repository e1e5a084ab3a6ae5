"""The client side of running Sortlab's networks on a Dask cluster: connecting (a scheduler address, or a
``LocalCluster`` on this machine), shipping the worker code and the model, and mapping chunks of
images over the workers with results handed back in input order.

The map keeps a bounded window of chunks in flight (a few per worker thread), so memory stays flat
for any number of files and results stream out as soon as the next chunk in order is done. Dask
reschedules the chunks of a worker that dies (``distributed.scheduler.allowed-failures``), and each
chunk's result is consumed exactly once, in order, so every input yields one row. Cancelling the job
context cancels the chunks in flight and raises JobCancelled.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from engine.runtime.jobs import JobContext

CHUNK_SIZE = 16  # images per task: large enough that the scheduler's per-task cost (~1 ms) is noise
INSTALL_HINT = 'Running on a Dask cluster needs the cluster extra: pip install "sortlab[cluster]".'
_LOCAL = re.compile(r"^local(?::(\d+))?$")
_POLL_SECONDS = 0.2


class ClusterError(Exception):
    """The cluster cannot be reached or used; the message says why, in one line."""


def require_distributed():
    """The ``distributed`` module, or ClusterError saying how to install it."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return distributed


@dataclass
class ClusterSpec:
    """Where to run: ``local`` (``n_workers`` processes on this machine) or a scheduler ``address``."""

    address: str | None = None
    n_workers: int | None = None

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """``local``, ``local:N`` or a scheduler address such as ``tcp://10.0.0.5:8786``."""
        text = text.strip()
        local = _LOCAL.match(text)
        if local:
            workers = int(local.group(1)) if local.group(1) else None
            if workers is not None and workers < 1:
                raise ClusterError("local:N needs at least one worker.")
            return cls(None, workers)
        if "://" not in text and not re.match(r"^[\w.\-]+:\d+$", text):
            raise ClusterError(f"{text!r} is neither local[:N] nor a scheduler address such as tcp://HOST:8786.")
        return cls(text if "://" in text else f"tcp://{text}", None)

    def describe(self) -> str:
        if self.address:
            return self.address
        return f"local cluster ({self.n_workers or 'one per core'} workers)"


class ClusterConnection:
    """A connected ``distributed.Client`` (and the LocalCluster it owns, if any); use it as a context
    manager so both are closed."""

    def __init__(self, spec: ClusterSpec, *, timeout: float = 30.0, **local_options):
        distributed = require_distributed()
        self.spec = spec
        self.cluster = None
        try:
            if spec.address is None:
                import os

                workers = spec.n_workers or os.cpu_count() or 1
                options = {"threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
                           "silence_logs": logging.CRITICAL}  # failures reach the client as exceptions
                options.update(local_options)
                self.cluster = distributed.LocalCluster(n_workers=workers, **options)
                self.client = distributed.Client(self.cluster, timeout=timeout)
            else:
                self.client = distributed.Client(spec.address, timeout=timeout)
        except OSError as exc:  # refused, unreachable, timed out
            self.close()
            raise ClusterError(f"Cannot reach the Dask scheduler at {spec.describe()}: {exc}") from None

    def threads(self) -> int:
        """Worker threads now in the cluster (at least 1, so a window is never empty)."""
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        client, cluster = getattr(self, "client", None), self.cluster
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> ClusterConnection:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def ship_code_by_value() -> bytes:
    """Pickle the worker module by value from now on (workers need no Sortlab); returns Sortlab's
    ``preprocess_bytes`` (and the decoder it calls) as by-value cloudpickle bytes for the plugin."""
    import cloudpickle

    import engine.cluster.worker
    import engine.features.preprocess
    import engine.images.imaging

    registered = cloudpickle.list_registry_pickle_by_value()
    for module in (engine.cluster.worker, engine.features.preprocess, engine.images.imaging):
        if module.__name__ not in registered:
            cloudpickle.register_pickle_by_value(module)
    return _by_value_bytes(engine.features.preprocess.preprocess_bytes)


def _by_value_bytes(function: Callable) -> bytes:
    """cloudpickle's by-value copy of ``function``; module-level locks it reaches (the image decoder
    serializes Pillow's header parsing with one) arrive as new, unlocked locks."""
    import io
    import threading
    from collections import ChainMap

    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        dispatch_table = ChainMap({type(threading.Lock()): lambda lock: (threading.Lock, ())},
                                  cloudpickle.Pickler.dispatch_table)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=5).dump(function)
    return buffer.getvalue()


class _ByValue:
    """A function that arrives on the worker as cloudpickle's by-value copy, however Dask pickles it."""

    def __init__(self, function: Callable):
        self.function = function
        self.blob = _by_value_bytes(function)

    def __call__(self, *args, **kwargs):
        return self.function(*args, **kwargs)

    def __reduce__(self):
        import cloudpickle

        return cloudpickle.loads, (self.blob,)


def install_model(connection: ClusterConnection, model: bytes, output: str, preprocessing, kind: str) -> str:
    """Register the ONNX model as a worker plugin (one session per worker, also on workers that join
    later); returns the plugin's name, which tasks use to find it."""
    from engine.cluster.worker import OnnxSessionPlugin

    preprocess_code = ship_code_by_value()
    name = f"sortlab-{kind}-{hashlib.sha256(model).hexdigest()[:16]}"
    plugin = OnnxSessionPlugin(name, model, output, preprocessing, preprocess_code)
    try:
        connection.client.register_plugin(plugin, name=name)
    except Exception as exc:  # a worker failed to load it: the reason comes back from the worker
        raise ClusterError(f"The workers could not load the model: {exc}") from None
    return name


def remove_model(connection: ClusterConnection, name: str) -> None:
    try:
        connection.client.unregister_worker_plugin(name)
    except Exception:  # the cluster went away: nothing left to free
        logging.getLogger(__name__).debug("could not unregister %s", name, exc_info=True)


def map_in_order(
    context: JobContext,
    connection: ClusterConnection,
    plugin_name: str,
    chunks: Iterable[list],
    consume: Callable[[object], None],
    window: int | None = None,
) -> None:
    """Run ``engine.cluster.worker.run_chunk`` on each chunk of (key, bytes-or-reason) items and hand
    each ChunkResult to ``consume`` in chunk order, at most ``window`` chunks in flight."""
    from engine.cluster.worker import run_chunk

    distributed = require_distributed()
    task = _ByValue(run_chunk)
    limit = window or 2 * connection.threads() + 2
    upcoming = iter(chunks)
    pending: deque = deque()

    def submit_next() -> None:
        items = next(upcoming, None)
        if items is not None:
            pending.append(connection.client.submit(task, plugin_name, items, pure=False))

    try:
        for _ in range(limit):
            submit_next()
        while pending:
            future = pending[0]
            ready = threading.Event()
            future.add_done_callback(lambda _future, ready=ready: ready.set())
            while not ready.wait(_POLL_SECONDS):  # (Future.result(timeout) can lose a result under load)
                context.check_cancelled()
            try:
                result = future.result()
            except distributed.KilledWorker:
                raise ClusterError("A chunk of images was on every worker that died while running it; "
                                   "giving up (see the workers' logs).") from None
            except (Exception, distributed.CancelledError) as exc:  # the scheduler went away, a task failed
                raise ClusterError(f"The cluster could not finish a chunk: {exc!r}") from None
            pending.popleft()
            submit_next()
            consume(result)
            context.check_cancelled()
    finally:
        if pending:
            connection.client.cancel(list(pending))

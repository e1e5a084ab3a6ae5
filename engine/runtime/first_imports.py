"""One thread at a time through the first import of a heavy library (openTSNE, scikit-learn,
onnxruntime, torch).

Python imports a module once, but two threads importing a package whose modules import each other
can each find the other's module half initialized: at start-up the training panel's warm-up job
and the map's first layout (two worker threads) both imported openTSNE and one of them failed with
"cannot import name 'Affinities' from partially initialized module 'openTSNE.affinity'". Jobs that
run beside the window's runner (the map's layout, the reports) and the warm-up job itself import
these libraries inside ``heavy_imports()``: a second thread waits until the first has finished and
then finds the modules complete. No Qt here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Re-entrant: the warm-up holds it and calls helpers (the map's warm-up) that take it too.
_FIRST_IMPORTS = threading.RLock()


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Hold while importing a heavy library (or calling code that imports one on first use)."""
    with _FIRST_IMPORTS:
        yield

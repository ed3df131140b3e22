"""Finding reference cycles: objects that only the cyclic garbage collector would free."""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def shoal_cyclic_garbage() -> Iterator[list[str]]:
    """Yields a list that, once the block has run, names the type of every Shoal object
    created in the block that became garbage in a reference cycle (freed only by the cyclic
    GC, which stays off during the block). Assert it is empty after the block."""
    with warnings.catch_warnings():  # (what earlier tests left unclosed is not ours)
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    gc.disable()
    found: list[str] = []
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.extend(sorted({f"{type(o).__module__}.{type(o).__qualname__}"
                             for o in gc.garbage if type(o).__module__.startswith("shoal.")}))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()

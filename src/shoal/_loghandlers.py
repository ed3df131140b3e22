"""The ``logging`` subclasses of Shoal's JSON logs: the formatter, the stdout handler and the
capture used by ``capture_logs``. Only :mod:`shoal._logging` imports this module.

They live apart from :mod:`shoal._logging` because that module is compiled by mypyc
(``tools/native.py``) and these must stay interpreted: compiled, subclasses of the standard
library's logging classes corrupted memory (a freed weak reference left in logging's handler
set, a segfault at the next garbage collection).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import orjson

from shoal import _logging as _core  # (complete by now: it imports this module last)


class JsonFormatter(logging.Formatter):
    """Formats a record as one compact JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(_core.record_to_dict(record), default=_core._default).decode()


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at emit time (pytest's capture swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        batch = _core._batch
        if batch is not None and batch.lines:
            batch.flush()  # keep this thread's lines in order
        super().emit(record)


class _CaptureHandler(logging.Handler):
    def __init__(self, sink: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(logging.DEBUG)
        self._sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self._sink(_core.record_to_dict(record))


@contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Collect every log line emitted inside the block as the dict it would be serialised from.

    ::

        with shoal.testing.capture_logs() as lines:
            ...
        assert any(line["event"] == "order.created" for line in lines)
    """
    lines: list[dict[str, Any]] = []
    handler = _CaptureHandler(lines.append)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old_level) if old_level else level)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)

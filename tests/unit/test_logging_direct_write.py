"""The access log's direct write produces exactly the line the stdlib logging path would."""

import functools
import io
import json
import logging
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shoal
from shoal import _logging
from shoal._context import continue_trace, enter_request
from shoal.testing import capture_logs


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_direct_write_matches_the_stdlib_formatter_field_for_field(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    _logging.configure_logging("INFO")
    # pytest attaches its own capture handlers to the root; leave only ours for this test.
    monkeypatch.setattr(logging.getLogger(), "handlers", [_logging._handler])
    assert _logging._only_our_handler(logging.getLogger("shoal.access"), logging.INFO)
    log = shoal.get_logger("shoal.access")
    trace = continue_trace(None)
    scope = enter_request(trace, "rid-1", None)
    try:
        log.info("request", method="GET", path="/x", route="/x", status=200, duration_ms=1.5)
        # A record factory forces the stdlib path; the line must come out the same.
        factory = logging.getLogRecordFactory()

        def wrapped_factory(*args, **kwargs):
            return factory(*args, **kwargs)

        logging.setLogRecordFactory(wrapped_factory)
        try:
            log.info("request", method="GET", path="/x", route="/x", status=200,
                     duration_ms=1.5)
        finally:
            logging.setLogRecordFactory(factory)
    finally:
        scope.exit()
    direct, stdlib = _lines(out)
    assert list(direct) == list(stdlib)  # same fields, same order
    direct.pop("ts")
    stdlib.pop("ts")
    assert direct == stdlib
    assert direct["trace_id"] == trace.trace_id
    assert direct["request_id"] == "rid-1"


def test_lines_still_reach_capture_logs_when_another_handler_is_attached():
    _logging.configure_logging("INFO")
    with capture_logs() as lines:
        shoal.get_logger("shoal.access").info("request", status=200)
    assert [ln["status"] for ln in lines if ln["event"] == "request"] == [200]


def test_timestamp_is_iso_utc_with_milliseconds_across_second_boundaries():
    assert _logging._iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert _logging._iso(1.999) == "1970-01-01T00:00:01.999Z"
    assert _logging._iso(2.5) == "1970-01-01T00:00:02.500Z"
    assert _logging._iso(1.25) == "1970-01-01T00:00:01.250Z"


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)


@settings(max_examples=300, deadline=None)
@given(method=_TEXT, path=_TEXT, route=_TEXT, request_id=st.none() | _TEXT,
       status=st.integers(100, 599), duration=st.floats(0, 3600, allow_nan=False))
def test_the_access_line_is_what_orjson_writes_for_the_stdlib_fields(
        method: str, path: str, route: str, request_id: str | None, status: int,
        duration: float) -> None:
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        _logging.configure_logging("INFO")
        mp.setattr(logging.getLogger(), "handlers", [_logging._handler])
        trace = continue_trace(None)
        scope = enter_request(trace, request_id, None)
        try:
            _logging.log_access(method, path, route, status, duration)
            # The same fields through the stdlib path (a record factory forces it).
            factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(functools.partial(factory))
            try:
                _logging.log_access(method, path, route, status, duration)
            finally:
                logging.setLogRecordFactory(factory)
        finally:
            scope.exit()
    # (split on "\n" only: a JSON string may hold U+2028 and friends, which splitlines splits)
    direct, stdlib = out.getvalue().split("\n")[:-1]
    # Byte for byte orjson's own serialisation of the parsed line (escapes, separators) ...
    assert orjson.dumps(json.loads(direct)).decode() == direct
    parsed, expected = json.loads(direct), json.loads(stdlib)
    # ... with the stdlib path's fields, in its order (the timestamps may differ by a ms).
    assert list(parsed) == list(expected)
    parsed.pop("ts")
    expected.pop("ts")
    assert parsed == expected
    assert parsed["duration_ms"] == pytest.approx(duration * 1000, abs=0.0006)

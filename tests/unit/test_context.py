import time

from hypothesis import given
from hypothesis import strategies as st

from shoal._context import (
    DEADLINE_MS,
    REQUEST_ID,
    TRACEPARENT,
    continue_trace,
    current_deadline,
    deadline_scope,
    enter_request,
    outgoing_headers,
    parse_deadline_ms,
    parse_traceparent,
)

VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_valid_traceparent_is_continued_with_a_new_span():
    ctx = continue_trace(VALID)
    assert ctx.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert ctx.parent_span_id == "b7ad6b7169203331"
    assert ctx.span_id != "b7ad6b7169203331"
    assert len(ctx.span_id) == 16
    assert ctx.sampled


def test_unsampled_flag_is_kept():
    assert parse_traceparent(VALID[:-2] + "00") == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", False)


def test_malformed_traceparents_start_a_new_trace():
    for bad in [
        None, "", "garbage", "00-" + "0" * 32 + "-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0AF7651916CD43DD8448EB211C80319Z-b7ad6b7169203331-01",
    ]:
        assert parse_traceparent(bad) is None, bad
        ctx = continue_trace(bad)
        assert ctx.parent_span_id is None
        assert len(ctx.trace_id) == 32


def test_future_version_with_extra_fields_is_accepted():
    assert parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-xyz")


@given(st.text(max_size=80))
def test_parse_traceparent_never_raises(value):
    result = parse_traceparent(value)
    if result is not None:
        assert len(result[0]) == 32
        assert len(result[1]) == 16


def test_outgoing_headers_carry_trace_request_id_and_remaining_deadline():
    trace = continue_trace(VALID)
    now = time.monotonic()
    scope = enter_request(trace, "req-1", now + 1.5)
    try:
        headers = outgoing_headers(span_id="1111111111111111", now=now)
    finally:
        scope.exit()
    assert headers[TRACEPARENT] == f"00-{trace.trace_id}-1111111111111111-01"
    assert headers[REQUEST_ID] == "req-1"
    assert headers[DEADLINE_MS] == "1500"
    assert outgoing_headers() == {}


def test_spent_deadline_is_sent_as_zero_not_negative():
    now = time.monotonic()
    scope = enter_request(continue_trace(None), "r", now - 5)
    try:
        assert outgoing_headers(now=now)[DEADLINE_MS] == "0"
    finally:
        scope.exit()


def test_parse_deadline_ms():
    assert parse_deadline_ms("250", 10.0) == 10.25
    assert parse_deadline_ms("nope", 10.0) is None
    assert parse_deadline_ms(None, 10.0) is None


def test_deadline_scope_never_extends_an_existing_deadline():
    with deadline_scope(0.5) as outer:
        with deadline_scope(10.0) as inner:
            assert inner == outer
            assert current_deadline() == outer
        with deadline_scope(0.1) as tighter:
            assert tighter < outer
    assert current_deadline() is None

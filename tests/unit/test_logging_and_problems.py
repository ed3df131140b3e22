import json
import logging
import sys

import orjson
import pytest

import shoal
from shoal._context import continue_trace, enter_request
from shoal._logging import JsonFormatter, record_to_dict
from shoal._problem import problem_body, validation_detail, validation_errors
from shoal._settings import Settings
from shoal.testing import capture_logs

REQUIRED = {"ts", "level", "service", "instance", "trace_id", "span_id", "request_id", "event"}


def test_structured_log_line_has_every_contract_field_and_the_request_context():
    trace = continue_trace(None)
    scope = enter_request(trace, "rid-7", None)
    try:
        with capture_logs() as lines:
            shoal.get_logger("t").info("order.created", order_id=42)
    finally:
        scope.exit()
    (line,) = [ln for ln in lines if ln["event"] == "order.created"]
    assert set(line) >= REQUIRED
    assert line["trace_id"] == trace.trace_id
    assert line["span_id"] == trace.span_id
    assert line["request_id"] == "rid-7"
    assert line["order_id"] == 42
    assert line["level"] == "info"


def test_formatter_emits_one_json_object_per_line_with_exception_text():
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("it",),
                                   sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    data = json.loads(text)
    assert data["event"] == "failed it"
    assert data["error_type"] == "ValueError"
    assert "Traceback" in data["exception"]


def test_stdlib_extra_fields_become_json_members():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.user_id = 5
    assert record_to_dict(record)["user_id"] == 5


def test_problem_body_is_rfc9457_with_trace_and_request_ids():
    trace = continue_trace(None)
    scope = enter_request(trace, "rid", None)
    try:
        body = orjson.loads(problem_body(404, detail="no such user", instance="/users/9"))
    finally:
        scope.exit()
    assert body == {
        "type": "about:blank", "title": "Not Found", "status": 404, "detail": "no such user",
        "instance": "/users/9", "trace_id": trace.trace_id, "request_id": "rid",
    }


def test_validation_errors_name_each_field():
    errors = validation_errors([{"loc": ("body", "email"), "msg": "Field required",
                                 "type": "missing"}])
    assert errors == [{"field": "body.email", "message": "Field required", "type": "missing"}]
    assert validation_detail(errors) == "Invalid value for: body.email."


@pytest.mark.parametrize(
    ("var", "value"),
    [("SHOAL_DRAIN_GRACE", "soon"), ("PORT", "99999"), ("SHOAL_LOG_LEVEL", "LOUD")],
)
def test_bad_setting_fails_naming_the_variable(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(shoal.ConfigurationError) as info:
        Settings.from_env()
    assert info.value.setting == var
    assert var in str(info.value)
    assert value in str(info.value)


def test_missing_service_name_is_a_configuration_error(monkeypatch):
    monkeypatch.delenv("SHOAL_SERVICE", raising=False)
    with pytest.raises(shoal.ConfigurationError, match="SHOAL_SERVICE"):
        shoal.Chassis()

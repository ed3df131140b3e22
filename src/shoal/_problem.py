"""RFC 9457 ``application/problem+json`` bodies, shared by every framework adapter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson

from shoal._context import current_request_id, current_trace
from shoal._errors import ProblemError

PROBLEM_CONTENT_TYPE = "application/problem+json"


def status_title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_body(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    instance: str | None = None,
    type: str = "about:blank",
    errors: Sequence[Mapping[str, Any]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise a problem object; adds ``trace_id`` and ``request_id`` of the current request."""
    body: dict[str, Any] = {
        "type": type,
        "title": title or status_title(status),
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = list(errors)
    if extra:
        for key, value in extra.items():
            body.setdefault(key, value)
    trace = current_trace()
    if trace is not None:
        body["trace_id"] = trace.trace_id
    request_id = current_request_id()
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body, default=str)


def problem_from_error(error: ProblemError, instance: str | None = None) -> bytes:
    return problem_body(
        error.status,
        title=error.title,
        detail=error.detail,
        instance=instance,
        type=error.type,
        errors=error.errors,
        extra=error.extra,
    )


def validation_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic-style errors (``loc``, ``msg``, ``type``) as problem ``errors`` naming the field."""
    out: list[dict[str, Any]] = []
    for err in errors:
        loc = err.get("loc", ())
        out.append(
            {
                "field": ".".join(str(part) for part in loc) if loc else None,
                "message": err.get("msg", "invalid"),
                "type": err.get("type", "value_error"),
            }
        )
    return out


def validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    named = [e["field"] for e in errors if e.get("field")]
    if not named:
        return "The request is invalid."
    return "Invalid value for: " + ", ".join(dict.fromkeys(named)) + "."

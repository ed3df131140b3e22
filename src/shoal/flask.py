"""Flask integration: ``shoal.flask.instrument(app, service="users")``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from shoal._chassis import Chassis
from shoal._errors import ConfigurationError, ProblemError
from shoal._logging import get_logger
from shoal._problem import (
    PROBLEM_CONTENT_TYPE,
    problem_body,
    problem_from_error,
    status_title,
    validation_detail,
    validation_errors,
)
from shoal._wsgi import ROUTE_KEY, ShoalWSGIMiddleware

if TYPE_CHECKING:
    from shoal._settings import Settings

__all__ = ["instrument", "problem_response", "validation_problem"]

_errors = get_logger("shoal.error")


def problem_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> Response:
    return Response(body, status=status, content_type=PROBLEM_CONTENT_TYPE, headers=headers)


def _record_route() -> None:
    rule = request.url_rule
    if rule is not None:
        request.environ[ROUTE_KEY] = rule.rule


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = exc.description if exc.description else None
    # Werkzeug's stock descriptions are prose about the status; keep app-given ones only.
    if detail and type(exc).description == detail:
        detail = None
    headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
    body = problem_body(status, title=status_title(status), detail=detail,
                        instance=request.path)
    return problem_response(status, body, headers)


def _problem_error(exc: ProblemError) -> Response:
    return problem_response(exc.status, problem_from_error(exc, request.path), exc.headers)


def validation_problem(exc: ValidationError) -> Response:
    """A 422 problem+json response naming each invalid field of a pydantic ``exc``.

    Registered for ``ValidationError`` raised by views; also usable as a validation callback
    (e.g. flask-openapi3's ``validation_error_callback``).
    """
    errors = validation_errors(exc.errors(include_url=False))
    body = problem_body(422, detail=validation_detail(errors), instance=request.path,
                        errors=errors)
    return problem_response(422, body)


def _unhandled(exc: Exception) -> Response:
    route = request.environ.get(ROUTE_KEY, "<unmatched>")
    chassis: Chassis = request.environ["shoal.chassis"]
    chassis.exception_raised(route, exc)
    _errors.exception("request.failed", method=request.method, path=request.path, route=route)
    body = problem_body(500, detail="An internal error occurred; it was logged with this "
                                    "trace id.", instance=request.path)
    return problem_response(500, body)


def instrument(
    app: Flask, *, service: str | None = None, settings: Settings | None = None
) -> Chassis:
    """Give ``app`` probes, metrics, JSON logs, trace context and problem+json errors.

    ``service`` defaults to ``SHOAL_SERVICE``. Returns the :class:`~shoal.Chassis`; register
    readiness checks on it (sync callables). Pydantic ``ValidationError`` raised by a view
    becomes a 422 problem naming each field. Raises :class:`~shoal.ConfigurationError` for a
    missing service name, a bad setting, or an async readiness check.
    """
    chassis = Chassis(service, settings=settings)
    if "shoal" in app.extensions:
        raise ConfigurationError("instrument", "this Flask app is already instrumented")
    app.extensions["shoal"] = chassis
    app.before_request(_record_route)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(ProblemError, _problem_error)
    app.register_error_handler(ValidationError, validation_problem)
    app.register_error_handler(Exception, _unhandled)
    inner = app.wsgi_app

    def with_chassis(environ: dict[str, object], start_response: object) -> object:
        environ["shoal.chassis"] = chassis
        return inner(environ, start_response)  # type: ignore[arg-type]

    app.wsgi_app = ShoalWSGIMiddleware(with_chassis, chassis)  # type: ignore[method-assign,arg-type]
    return chassis

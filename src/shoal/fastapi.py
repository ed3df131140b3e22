"""FastAPI (and Starlette) integration: ``shoal.fastapi.instrument(app, service="orders")``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shoal._asgi import ShoalMiddleware
from shoal._chassis import Chassis
from shoal._errors import ProblemError
from shoal._problem import (
    PROBLEM_CONTENT_TYPE,
    problem_body,
    problem_from_error,
    status_title,
    validation_detail,
    validation_errors,
)

if TYPE_CHECKING:
    from shoal._settings import Settings

__all__ = ["instrument", "problem_response"]


def problem_response(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status_code=status, media_type=PROBLEM_CONTENT_TYPE, headers=headers)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == status_title(exc.status_code):
        detail = None
    body = problem_body(exc.status_code, detail=detail, instance=request.url.path)
    return problem_response(exc.status_code, body, dict(exc.headers or {}))


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    body = problem_body(
        422, detail=validation_detail(errors), instance=request.url.path, errors=errors
    )
    return problem_response(422, body)


async def _problem_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.status, problem_from_error(exc, request.url.path), exc.headers)


def instrument(
    app: FastAPI | Any, *, service: str | None = None, settings: Settings | None = None
) -> Chassis:
    """Give ``app`` probes, metrics, JSON logs, trace context and problem+json errors.

    ``service`` defaults to ``SHOAL_SERVICE``. Returns the :class:`~shoal.Chassis`, through
    which the app registers readiness checks (``chassis.add_readiness_check("db", ping)``).
    Call once, after adding the app's own middleware (Shoal's must be outermost).
    Raises :class:`~shoal.ConfigurationError` for a missing service name or a bad setting.
    """
    chassis = Chassis(service, settings=settings)
    app.add_middleware(ShoalMiddleware, chassis=chassis)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ProblemError, _problem_error)
    app.state.shoal = chassis
    return chassis

"""The orders service (FastAPI): orders in its own database; users checked through Shoal's client.

Run standalone (users reachable through discovery)::

    SHOAL_DISCOVERY='static:users=http://127.0.0.1:8001' PORT=8002 \\
        shoal serve examples.shop.orders.app:app
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from decimal import Decimal
from pathlib import Path as FsPath
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.openapi.utils import get_openapi
from sqlalchemy import event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import shoal
import shoal.fastapi
from examples.shop._db import database_url, migrate, sqlite_pragmas
from examples.shop._pagination import decode_cursor, encode_cursor
from examples.shop.orders.models import IdempotencyRecord, Order, OrderItem
from examples.shop.orders.schemas import (
    MAX_ID,
    ItemOut,
    OrderDetail,
    OrderIn,
    OrderOut,
    OrderPage,
    Problem,
    UserSummary,
)
from shoal.client import AsyncClient, BulkheadPolicy, Fallback
from shoal.client import Response as UpstreamResponse

MIGRATIONS = FsPath(__file__).parent / "migrations"
CENT = Decimal("0.01")
DEGRADED_HEADER = "Shoal-Degraded"
log = shoal.get_logger("shop.orders")


def _problem(description: str) -> dict[str | int, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEMS: dict[int | str, dict[str, Any]] = {
    404: _problem("No such order"),
    422: _problem("Invalid input; `errors` names each field"),
    503: _problem("A dependency is unavailable; nothing was written (see Retry-After)"),
}


def _cents(amount: Decimal) -> int:
    return int((amount / CENT).to_integral_value())


def _money(cents: int) -> Decimal:
    return (Decimal(cents) * CENT).quantize(CENT)


def _order_out(order: Order) -> OrderOut:
    return OrderOut(
        id=order.id,
        user_id=order.user_id,
        items=[ItemOut(sku=i.sku, quantity=i.quantity, unit_price=_money(i.unit_price_cents))
               for i in order.items],
        total=_money(order.total_cents),
        # SQLite hands back naive datetimes; every timestamp we store is UTC.
        created_at=order.created_at if order.created_at.tzinfo else order.created_at.replace(
            tzinfo=UTC),
    )


def _request_hash(body: OrderIn) -> str:
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _users_unavailable(exc: shoal.UpstreamError) -> shoal.ProblemError:
    retry_after = getattr(exc, "retry_after", None) or 1.0
    return shoal.ProblemError(
        503,
        detail="The users service is unavailable; the order was not created. Retry later.",
        headers={"Retry-After": str(max(1, round(retry_after)))},
        extra={"upstream": "users", "reason": type(exc).__name__},
    )


@dataclass(frozen=True, slots=True)
class Deps:
    """What the handlers need, built once per app and kept in ``app.state.deps``."""

    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    users: AsyncClient
    users_timeout: float


def deps(request: Request) -> Deps:
    return request.app.state.deps  # type: ignore[no-any-return]


DepsDep = Annotated[Deps, Depends(deps)]
router = APIRouter()


async def check_user(d: Deps, user_id: int) -> None:
    """Raise a 422 problem for an unknown user, a 503 when users cannot answer."""
    try:
        resp = await d.users.get(f"http://users/users/{user_id}", timeout=d.users_timeout)
    except shoal.UpstreamError as exc:
        log.warning("users.unavailable", error=type(exc).__name__, user_id=user_id)
        raise _users_unavailable(exc) from exc
    if resp.status == 404:
        raise shoal.ProblemError(
            422, detail=f"No user with id {user_id}.",
            errors=[{"field": "body.user_id", "message": "unknown user"}],
        )
    if resp.status != 200:
        raise _users_unavailable(
            shoal.UpstreamError(f"users answered {resp.status}", service="users"))


async def replay(d: Deps, key: str, request_hash: str) -> Response | None:
    """The stored answer for ``key``; a 422 problem when it was used with another body."""
    async with d.sessions() as session:
        record = await session.get(IdempotencyRecord, key)
    if record is None:
        return None
    if record.request_hash != request_hash:
        raise shoal.ProblemError(
            422, detail="This Idempotency-Key was already used with a different body.",
            errors=[{"field": "header.idempotency-key", "message": "reused with another body"}],
        )
    return Response(record.response_body, status_code=record.status,
                    media_type="application/json",
                    headers={"Location": f"/orders/{record.order_id}",
                             "Idempotent-Replayed": "true"})


@router.post("/orders", status_code=201, response_model=OrderOut,
             responses={422: PROBLEMS[422], 503: PROBLEMS[503]})
async def create_order(
    d: DepsDep,
    body: OrderIn,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
    ] = None,
) -> Response:
    """Create an order for a known user. With an ``Idempotency-Key`` the order is created at
    most once: the key and the answer are committed in the order's transaction."""
    request_hash = _request_hash(body)
    if idempotency_key is not None:
        replayed = await replay(d, idempotency_key, request_hash)
        if replayed is not None:
            return replayed
    await check_user(d, body.user_id)
    items = [OrderItem(sku=i.sku, quantity=i.quantity, unit_price_cents=_cents(i.unit_price))
             for i in body.items]
    order = Order(user_id=body.user_id, items=items,
                  total_cents=sum(i.quantity * i.unit_price_cents for i in items))
    try:
        async with d.sessions() as session, session.begin():
            session.add(order)
            await session.flush()
            payload = _order_out(order).model_dump_json()
            if idempotency_key is not None:
                session.add(IdempotencyRecord(key=idempotency_key, request_hash=request_hash,
                                              status=201, response_body=payload,
                                              order_id=order.id))
    except IntegrityError:
        # A concurrent duplicate committed first: the key's primary key rejected this one.
        if idempotency_key is None:
            raise
        replayed = await replay(d, idempotency_key, request_hash)
        if replayed is None:
            raise
        return replayed
    log.info("order.created", order_id=order.id, user_id=order.user_id,
             total=str(_money(order.total_cents)))
    return Response(payload, status_code=201, media_type="application/json",
                    headers={"Location": f"/orders/{order.id}"})


def _no_user(_exc: shoal.UpstreamError) -> UpstreamResponse:
    return UpstreamResponse.from_json(None)


@router.get("/orders/{order_id}", response_model=OrderDetail,
            responses={404: PROBLEMS[404], 422: PROBLEMS[422]})
async def get_order(
    d: DepsDep, order_id: Annotated[int, Path(ge=1, le=MAX_ID)], response: Response
) -> OrderDetail:
    """The order with its user; when users cannot answer, the order is still served with
    ``user: null``, ``degraded: ["user"]`` and a ``Shoal-Degraded: user`` header."""
    async with d.sessions() as session:
        order = await session.get(Order, order_id)
    if order is None:
        raise shoal.ProblemError(404, detail=f"No order with id {order_id}.")
    user_resp = await d.users.get(
        f"http://users/users/{order.user_id}",
        timeout=d.users_timeout,
        fallback=Fallback(on=(shoal.UpstreamError,), handler=_no_user),
    )
    degraded: list[str] = []
    user = None
    if user_resp.degraded is not None:
        degraded.append("user")
        response.headers[DEGRADED_HEADER] = "user"
        log.warning("order.degraded", order_id=order_id, part="user", reason=user_resp.degraded)
    elif user_resp.status == 200:
        data = user_resp.json()
        user = UserSummary(id=data["id"], name=data["name"], email=data["email"])
    return OrderDetail(**_order_out(order).model_dump(), user=user, degraded=degraded)


@router.get("/orders", response_model=OrderPage, responses={422: PROBLEMS[422]})
async def list_orders(
    d: DepsDep,
    user_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
) -> OrderPage:
    """Orders in id order, optionally of one user; ``next_cursor`` pages on."""
    stmt = select(Order).order_by(Order.id).limit(limit + 1)
    if user_id is not None:
        stmt = stmt.where(Order.user_id == user_id)
    if cursor is not None:
        try:
            stmt = stmt.where(Order.id > decode_cursor(cursor))
        except ValueError as exc:
            raise shoal.ProblemError(
                422, detail=str(exc), errors=[{"field": "query.cursor", "message": str(exc)}]
            ) from None
    async with d.sessions() as session:
        orders = list(await session.scalars(stmt))
    more = len(orders) > limit
    orders = orders[:limit]
    return OrderPage(items=[_order_out(o) for o in orders],
                     next_cursor=encode_cursor(orders[-1].id) if more and orders else None)


def _openapi(app: FastAPI) -> dict[str, Any]:
    # FastAPI lists only the models routes return; every 4xx/5xx answer is a Problem.
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = (
            Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(database: str | None = None) -> FastAPI:
    """Build the orders app on ``database`` (default: ``DATABASE_URL`` or the SQLite file)."""
    url = database or database_url("orders", driver_async=True)
    if os.environ.get("SHOP_MIGRATE_ON_START", "1") != "0":
        migrate(url, MIGRATIONS)
    engine = create_async_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    users_timeout = float(os.environ.get("ORDERS_USERS_TIMEOUT", "1.0"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The bulkhead caps calls in flight to users, so a slow users cannot absorb orders.
        users = AsyncClient(service=chassis.service, bulkhead=BulkheadPolicy(
            max_concurrent=int(os.environ.get("ORDERS_USERS_MAX_CONCURRENT", "64"))))
        app.state.deps = Deps(engine=engine, sessions=async_sessionmaker(
            engine, expire_on_commit=False), users=users, users_timeout=users_timeout)
        try:
            yield
        finally:
            await users.aclose()
            await engine.dispose()

    app = FastAPI(title="orders", version="1.0.0", lifespan=lifespan,
                  description="The shop's orders service.")
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    chassis = shoal.fastapi.instrument(app, service=os.environ.get("SHOAL_SERVICE", "orders"))

    async def database_ping() -> bool:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True

    chassis.add_readiness_check("database", database_ping)
    return app


app = create_app()

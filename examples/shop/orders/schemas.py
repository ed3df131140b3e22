"""Request and response models of the orders API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, Field

Money = Decimal

#: Ids are 32-bit integer columns in both databases.
MAX_ID = 2**31 - 1


class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    quantity: int = Field(gt=0, le=10_000)
    unit_price: Money = Field(ge=0, le=Decimal("1000000"), max_digits=9, decimal_places=2)


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: int = Field(ge=1, le=MAX_ID)
    items: list[ItemIn] = Field(min_length=1, max_length=100)


class ItemOut(BaseModel):
    sku: str
    quantity: int
    unit_price: Money


class UserSummary(BaseModel):
    id: int
    name: str
    email: str


class OrderOut(BaseModel):
    id: int
    user_id: int
    items: list[ItemOut]
    total: Money
    created_at: datetime


class OrderDetail(OrderOut):
    user: UserSummary | None = Field(
        description="the ordering user, fetched from the users service; null when degraded"
    )
    degraded: list[str] = Field(
        default_factory=list, description="parts of the response served from a fallback"
    )


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, str | None]] | None = None
    trace_id: str | None = None
    request_id: str | None = None


class OrderPage(BaseModel):
    items: list[OrderOut]
    next_cursor: str | None

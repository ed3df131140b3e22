"""Request and response models of the users API (they also produce its OpenAPI document)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, field_validator

# PostgreSQL text cannot hold NUL; refusing it here keeps SQLite and PostgreSQL alike (422).
Name = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00]*$")]

#: Ids are 32-bit integer columns in both databases.
MAX_ID = 2**31 - 1


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name
    email: EmailStr = Field(max_length=320)


class UserPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Name | None = None
    email: EmailStr | None = Field(default=None, max_length=320)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    created_at: datetime
    updated_at: datetime

    @field_validator("created_at", "updated_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # SQLite hands back naive datetimes; every timestamp we store is UTC.
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class UserPage(BaseModel):
    items: list[UserOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class UserPath(BaseModel):
    user_id: int = Field(ge=1, le=MAX_ID)


class UserQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(default=None, max_length=320, pattern=r"^[^\x00]*$")
    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = Field(default=None, max_length=100)


class Problem(BaseModel):
    """RFC 9457 problem details (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, str | None]] | None = None
    trace_id: str | None = None
    request_id: str | None = None

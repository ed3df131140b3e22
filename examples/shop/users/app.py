"""The users service (Flask): CRUD over its own database, through Shoal's chassis.

Run standalone::

    PORT=8001 shoal serve examples.shop.users.app:app
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint, Info, OpenAPI
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import shoal
import shoal.flask
from examples.shop._db import database_url, make_sync_engine, migrate
from examples.shop._pagination import decode_cursor, encode_cursor
from examples.shop.users.models import User
from examples.shop.users.schemas import (
    Problem,
    UserIn,
    UserOut,
    UserPage,
    UserPatch,
    UserPath,
    UserQuery,
)

MIGRATIONS = Path(__file__).parent / "migrations"
log = shoal.get_logger("shop.users")


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEMS: dict[int, Any] = {
    404: _problem_response("No such user"),
    409: _problem_response("The email is already in use"),
    422: _problem_response("Invalid input; `errors` names each field"),
}


def _user_json(user: User, status: int = 200) -> tuple[Response, int]:
    return jsonify(UserOut.model_validate(user).model_dump(mode="json")), status


def _email_taken(email: str) -> shoal.ProblemError:
    return shoal.ProblemError(
        409,
        detail=f"A user with email {email!r} already exists.",
        errors=[{"field": "email", "message": "already in use"}],
    )


def _not_found(user_id: int) -> shoal.ProblemError:
    return shoal.ProblemError(404, detail=f"No user with id {user_id}.")


api = APIBlueprint("users", __name__)


def engine() -> Engine:
    return current_app.extensions["shop.engine"]  # type: ignore[no-any-return]


@api.post("/users", responses={201: UserOut, **PROBLEMS})
def create_user(body: UserIn) -> tuple[Response, int]:
    """Create a user; 409 when the email (case-insensitive) is taken."""
    email = body.email.lower()
    with Session(engine()) as session:
        user = User(name=body.name, email=email)
        session.add(user)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise _email_taken(email) from None
        log.info("user.created", user_id=user.id)
        resp, status = _user_json(user, 201)
        resp.headers["Location"] = f"/users/{user.id}"
        return resp, status


@api.get("/users/<int:user_id>", responses={200: UserOut, **PROBLEMS})
def get_user(path: UserPath) -> tuple[Response, int]:
    with Session(engine()) as session:
        user = session.get(User, path.user_id)
        if user is None:
            raise _not_found(path.user_id)
        return _user_json(user)


@api.get("/users", responses={200: UserPage, **PROBLEMS})
def list_users(query: UserQuery) -> tuple[Response, int]:
    """Users in id order, optionally filtered by email; ``next_cursor`` pages on."""
    stmt = select(User).order_by(User.id).limit(query.limit + 1)
    if query.email is not None:
        stmt = stmt.where(User.email == query.email.lower())
    if query.cursor is not None:
        try:
            after = decode_cursor(query.cursor)
        except ValueError as exc:
            raise shoal.ProblemError(
                422, detail=str(exc), errors=[{"field": "cursor", "message": str(exc)}]
            ) from None
        stmt = stmt.where(User.id > after)
    with Session(engine()) as session:
        users = list(session.scalars(stmt))
    more = len(users) > query.limit
    users = users[: query.limit]
    page = UserPage(
        items=[UserOut.model_validate(u) for u in users],
        next_cursor=encode_cursor(users[-1].id) if more and users else None,
    )
    return jsonify(page.model_dump(mode="json")), 200


@api.patch("/users/<int:user_id>", responses={200: UserOut, **PROBLEMS})
def patch_user(path: UserPath, body: UserPatch) -> tuple[Response, int]:
    with Session(engine()) as session:
        user = session.get(User, path.user_id)
        if user is None:
            raise _not_found(path.user_id)
        if body.name is not None:
            user.name = body.name
        if body.email is not None:
            user.email = body.email.lower()
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            raise _email_taken(str(body.email)) from None
        log.info("user.updated", user_id=user.id)
        return _user_json(user)


@api.delete("/users/<int:user_id>", responses={204: None, **PROBLEMS})
def delete_user(path: UserPath) -> tuple[str, int]:
    with Session(engine()) as session:
        user = session.get(User, path.user_id)
        if user is None:
            raise _not_found(path.user_id)
        session.delete(user)
        session.commit()
    log.info("user.deleted", user_id=path.user_id)
    return "", 204


def create_app(database: str | None = None) -> OpenAPI:
    """Build the users app on ``database`` (default: ``DATABASE_URL`` or the SQLite file)."""
    url = database or database_url("users", driver_async=False)
    if os.environ.get("SHOP_MIGRATE_ON_START", "1") != "0":
        migrate(url, MIGRATIONS)
    db = make_sync_engine(url)

    app = OpenAPI(
        __name__,
        info=Info(title="users", version="1.0.0", description="The shop's users service."),
        doc_ui=False,
        security_schemes={},
        # Problem is the body of every 4xx; registering it here puts it in the components.
        validation_error_model=Problem,
        validation_error_callback=shoal.flask.validation_problem,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["shop.engine"] = db
    app.register_api(api)
    app.add_url_rule("/openapi.json", "openapi_json", lambda: app.api_doc)
    chassis = shoal.flask.instrument(app, service=os.environ.get("SHOAL_SERVICE", "users"))

    def database_ping() -> bool:
        with db.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    chassis.add_readiness_check("database", database_ping)
    return app


app = create_app()

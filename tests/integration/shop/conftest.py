"""Fixtures that run the reference shop (users + orders) as real processes, on SQLite or on
the real PostgreSQL server on 127.0.0.1:5432 (each test session creates and drops its own
databases)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from shoal.testing import ServerProcess

USERS_APP = "examples.shop.users.app:app"
ORDERS_APP = "examples.shop.orders.app:app"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_available() -> bool:
    try:
        engine = create_engine(PG_ADMIN, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception:
        return False
    return True


@dataclass
class Shop:
    """Both services and their databases; restart pieces to test crashes and outages."""

    backend: str
    users_url_db: str
    orders_url_db: str
    data_dir: Path
    users: ServerProcess | None = None
    orders: ServerProcess | None = None
    users_port: int | None = None
    started: list[ServerProcess] = field(default_factory=list)

    def _env(self, database: str) -> dict[str, str]:
        return {"DATABASE_URL": database, "SHOP_DATA_DIR": str(self.data_dir)}

    def start_users(self) -> ServerProcess:
        srv = ServerProcess(USERS_APP, service="users", env=self._env(self.users_url_db),
                            port=self.users_port)
        self.users_port = srv.port
        self.started.append(srv)
        self.users = srv.start(ready_path="/readyz", timeout=30)
        return srv

    def start_orders(self, **extra_env: str) -> ServerProcess:
        assert self.users_port is not None
        env = self._env(self.orders_url_db)
        env["SHOAL_DISCOVERY"] = f"static:users=http://127.0.0.1:{self.users_port}"
        env.update(extra_env)
        srv = ServerProcess(ORDERS_APP, service="orders", env=env,
                            port=self.orders.port if self.orders else None)
        self.started.append(srv)
        self.orders = srv.start(ready_path="/readyz", timeout=30)
        return srv

    def stop_all(self) -> None:
        for srv in reversed(self.started):
            srv.stop()

    def count(self, sql: str, **params: object) -> int:
        """Run a counting query on the orders database (sync driver)."""
        url = self.orders_url_db.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
        if url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(text(sql), params).scalar_one())
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[tuple[str, str]]:
    if not postgres_available():
        if os.environ.get("SHOAL_REQUIRE_EXTERNAL") == "1":
            pytest.fail("PostgreSQL on 127.0.0.1:5432 is required (SHOAL_REQUIRE_EXTERNAL=1)")
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    suffix = secrets.token_hex(4)
    names = (f"shoal_test_users_{suffix}", f"shoal_test_orders_{suffix}")
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (f"postgresql://postgres@127.0.0.1:5432/{names[0]}",
               f"postgresql://postgres@127.0.0.1:5432/{names[1]}")
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _make_shop(backend: str, tmp: Path, request: pytest.FixtureRequest) -> Shop:
    if backend == "postgresql":
        users_db, orders_db = request.getfixturevalue("pg_databases")
    else:
        users_db, orders_db = f"sqlite:///{tmp / 'users.db'}", f"sqlite:///{tmp / 'orders.db'}"
    return Shop(backend=backend, users_url_db=users_db, orders_url_db=orders_db, data_dir=tmp)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shop(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Shop]:
    """A running shop shared by a module's tests (they leave it running)."""
    s = _make_shop(request.param, tmp_path_factory.mktemp(f"shop-{request.param}"), request)
    try:
        s.start_users()
        s.start_orders()
        yield s
    finally:
        s.stop_all()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


def new_user(http: httpx.Client, shop: Shop, name: str = "Ann") -> dict[str, object]:
    assert shop.users is not None
    email = f"{name.lower()}-{secrets.token_hex(4)}@example.com"
    resp = http.post(shop.users.url + "/users", json={"name": name, "email": email})
    assert resp.status_code == 201, resp.text
    return dict(resp.json())

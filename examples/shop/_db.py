"""Database plumbing both shop services use: URLs, SQLite pragmas, migrations under a lock.

Each service owns its database (``DATABASE_URL``); by default a SQLite file in ``SHOP_DATA_DIR``
(``./data``). PostgreSQL URLs (``postgresql://...``) are given the right driver per service.
Schema changes are Alembic migrations, applied at start under a lock so replicas starting
together migrate once.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError


def database_url(service: str, *, driver_async: bool) -> str:
    """``DATABASE_URL`` with the driver this service uses, or the default SQLite file."""
    raw = os.environ.get("DATABASE_URL")
    if not raw:
        data_dir = Path(os.environ.get("SHOP_DATA_DIR", "data")).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        raw = f"sqlite:///{data_dir / f'{service}.db'}"
    url = make_url(raw)
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite" if driver_async else "sqlite")
    elif backend == "postgresql":
        url = url.set(drivername="postgresql+asyncpg" if driver_async else "postgresql+psycopg")
    else:
        raise ValueError(f"DATABASE_URL: unsupported database {backend!r} (sqlite, postgresql)")
    return url.render_as_string(hide_password=False)


def sync_url(url: str) -> str:
    """The blocking-driver twin of ``url`` (Alembic runs migrations synchronously)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    driver = "sqlite" if backend == "sqlite" else "postgresql+psycopg"
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; FULL sync makes an acknowledged commit durable;
    # busy_timeout makes concurrent writers (two replicas) wait instead of failing.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def install_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", sqlite_pragmas)


def make_sync_engine(url: str) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)
    install_sqlite_pragmas(engine)
    return engine


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(7350001)"))
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(7350001)"))
                conn.commit()
    else:
        db_path = engine.url.database or "shop.db"
        with open(f"{db_path}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def head_revision(migrations_dir: Path) -> str | None:
    """The newest revision of a linear migration history (the one nothing revises)."""
    revisions, parents = set(), set()
    for script in (migrations_dir / "versions").glob("*.py"):
        text_ = script.read_text()
        rev = re.search(r'^revision\s*=\s*["\']([^"\']+)', text_, re.MULTILINE)
        down = re.search(r'^down_revision\s*=\s*["\']([^"\']+)', text_, re.MULTILINE)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.add(down.group(1))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _current_revision(engine: Engine) -> str | None:
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError:
        return None


def migrate(url: str, migrations_dir: Path) -> None:
    """Upgrade the database at ``url`` to the newest revision in ``migrations_dir``.

    A database already at the head is left alone without loading Alembic: replicas after the
    first start about half a second faster.
    """
    engine = make_sync_engine(sync_url(url))
    try:
        head = head_revision(migrations_dir)
        if head is not None and _current_revision(engine) == head:
            return
        from alembic import command  # noqa: PLC0415 - only when there is work to do
        from alembic.config import Config  # noqa: PLC0415

        with _migration_lock(engine), engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(migrations_dir))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()

"""Engines and transactions: SQLite (WAL, busy timeout, BEGIN IMMEDIATE for writes) or any SQLAlchemy URL.

Every write is one transaction owned by the caller::

    with write_session(engine) as s:
        record_judgement(session=s, ...)

commits on success and rolls back on error. Reads use ``read_session``.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlmodel import Session, create_engine

from pickloop.errors import UserError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str, *, busy_timeout_ms: int = 30000) -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and explicit BEGIN statements."""
    try:
        if url.startswith("sqlite"):
            db_path = url.split(":///", 1)[-1]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})
            _sqlite_pragmas(engine, busy_timeout_ms)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, ValueError) as e:
        raise UserError(f"bad database URL {redact(url)}: {e}") from None
    except ModuleNotFoundError as e:
        raise UserError(f"database driver missing for {redact(url)}: pip install {e.name}") from None
    return engine


def _sqlite_pragmas(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (pysqlite's own is DEFERRED, too late)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        # A read transaction that later writes fails at once with SQLITE_BUSY; writers take the lock first.
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in creds else url
    return url


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction (BEGIN IMMEDIATE on SQLite): commit on success, roll back on error."""
    with Session(engine, expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except OperationalError as e:
            s.rollback()
            raise _unreachable(engine, e) from None
        except BaseException:
            s.rollback()
            raise


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only transaction; on SQLite a deferred BEGIN so readers never wait for the writer."""
    eng = engine.execution_options(sqlite_begin="DEFERRED") if engine.dialect.name == "sqlite" else engine
    with Session(eng, expire_on_commit=False) as s:
        try:
            yield s  # closing the session ends the transaction and keeps loaded rows readable
        except OperationalError as e:
            raise _unreachable(engine, e) from None


def _unreachable(engine: Engine, e: OperationalError) -> Exception:
    msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
    if "locked" in msg or "busy" in msg:
        return e  # contention, not a user mistake: let callers retry
    return UserError(f"database {redact(engine.url.render_as_string(hide_password=True))} failed: {msg}")


def check_reachable(engine: Engine) -> None:
    """Connect once; a database that cannot be reached is one clear line."""
    try:
        with engine.connect() as c:
            c.exec_driver_sql("SELECT 1")
    except OperationalError as e:
        raise _unreachable(engine, e) from None


def alembic_config(engine: Engine | None) -> Any:  # an alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def check_revision(revision: str) -> None:
    """A UserError unless ``revision`` names a migration (or head/base); reads no database."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        ScriptDirectory.from_config(alembic_config(None)).get_revisions(revision)
    except (CommandError, KeyError, ValueError) as e:
        raise UserError(f"no migration {revision!r}: {str(e).splitlines()[0] if str(e) else 'unknown'}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to ``revision`` with the migrations (never ``create_all``)."""
    from alembic import command

    check_reachable(engine)
    command.upgrade(alembic_config(engine), revision)


def is_current(engine: Engine) -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    with engine.connect() as c:
        return MigrationContext.configure(c).get_current_revision() == head


@lru_cache(maxsize=8)
def _cached_engine(url: str, busy_timeout_ms: int) -> Engine:
    engine = make_engine(url, busy_timeout_ms=busy_timeout_ms)
    upgrade(engine)
    return engine


_ENGINE_LOCK = threading.Lock()


def get_engine(settings=None) -> Engine:  # noqa: ANN001
    """The engine for the settings' database, migrated to head (once per process, also when two threads
    ask at once: the app's warm-up thread and its first page)."""
    from pickloop.settings import get_settings

    s = settings or get_settings()
    with _ENGINE_LOCK:
        return _cached_engine(s.db_url, s.sqlite_busy_timeout_ms)


def table_names(engine: Engine) -> list[str]:
    return sorted(inspect(engine).get_table_names())

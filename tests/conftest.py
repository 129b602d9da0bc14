"""Shared fixtures: a temporary data home on SQLite, and a fresh PostgreSQL database when one is reachable."""
from __future__ import annotations

import os
import uuid

import pytest
import torch

torch.set_num_threads(1)  # two threads on a busy 2-core box make steps ~100x slower
# Tests call `pickloop finetune run` in this process: it would lower the whole test run's CPU priority
# (for good: a process cannot raise it back). tests/finetune/test_priority.py checks the default in
# processes of its own.
os.environ.setdefault("PICKLOOP_FINETUNE_NICE", "0")

PG_ADMIN_URL = os.environ.get("PICKLOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh data home; settings read from the environment point at it."""
    h = tmp_path / "home"
    monkeypatch.setenv("PICKLOOP_HOME", str(h))
    monkeypatch.delenv("PICKLOOP_DATABASE_URL", raising=False)
    monkeypatch.delenv("PICKLOOP_CONFIG", raising=False)
    return h


@pytest.fixture
def ctx(home):
    from pickloop.context import Context

    return Context()


def _pg_available() -> bool:
    from sqlalchemy import create_engine

    try:
        with create_engine(PG_ADMIN_URL).connect() as c:
            c.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure to connect means no server
        return False


@pytest.fixture
def pg_url():
    """A freshly created PostgreSQL database, dropped afterwards. Fails (never skips) in CI without one."""
    from sqlalchemy import create_engine

    if not _pg_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (CI requires it)")
    name = f"pickloop_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    from pickloop.db import _cached_engine

    _cached_engine.cache_clear()
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(db_url):
    from pickloop.db import make_engine, upgrade

    e = make_engine(db_url)
    upgrade(e)
    yield e
    e.dispose()

"""Alembic: head on an empty database, head from the previous revision, and schema == models."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlmodel import SQLModel

import pickloop.schema  # noqa: F401
from pickloop.db import is_current, make_engine, table_names, upgrade


def _diffs(engine):
    with engine.connect() as c:
        return compare_metadata(MigrationContext.configure(c), SQLModel.metadata)


def test_upgrade_empty_database_to_head(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    assert is_current(engine)
    assert {"prompts", "judgements", "jobs", "assignments", "reward_models"} <= set(table_names(engine))
    assert _diffs(engine) == []  # the migrations build exactly what schema.py declares
    upgrade(engine)  # idempotent
    engine.dispose()


def test_upgrade_from_previous_revision_keeps_rows(db_url):
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    assert "assignments" not in table_names(engine)
    with engine.begin() as c:
        c.exec_driver_sql("INSERT INTO prompts (text, text_sha256, pool, split, active, created_at) "
                          "VALUES ('kept', 'x', 'default', 'train', true, CURRENT_TIMESTAMP)")
    upgrade(engine)
    assert is_current(engine) and "assignments" in table_names(engine)
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT text FROM prompts").scalar_one() == "kept"
    engine.dispose()

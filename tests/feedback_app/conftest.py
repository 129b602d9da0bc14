"""Fixtures for the rating app tests."""
from __future__ import annotations

import pytest

from tests.feedback_app.helpers import make_rater


@pytest.fixture(params=["sqlite", "postgresql"])
def actx(request, tmp_path, monkeypatch):
    """A Context on SQLite and on PostgreSQL (handing out sets must hold on both)."""
    from pickloop.context import Context
    from pickloop.settings import get_settings

    monkeypatch.setenv("PICKLOOP_HOME", str(tmp_path / "home"))
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Context(get_settings(home=tmp_path / "home", database_url=url, overlap_share=0.0))


@pytest.fixture
def alice(ctx):
    return make_rater(ctx, "alice")


@pytest.fixture
def admin(ctx):
    return make_rater(ctx, "root", role="admin")


"""Fixtures for the rating app tests."""
from __future__ import annotations

import pytest

from tests.feedback_app.helpers import make_rater


@pytest.fixture
def alice(ctx):
    return make_rater(ctx, "alice")


@pytest.fixture
def admin(ctx):
    return make_rater(ctx, "root", role="admin")


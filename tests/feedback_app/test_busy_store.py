"""SQLite's "database is locked" never reaches a rater as an exception: retried, then one line."""
from __future__ import annotations

import contextlib

import streamlit as st
from sqlalchemy.exc import OperationalError

from feedback_app import ui


def _locked() -> OperationalError:
    return OperationalError("INSERT ...", {}, Exception("database is locked"))


def test_a_locked_store_is_retried_then_reported_in_one_line(ctx, monkeypatch):
    real = ui.write_session
    failures = iter([_locked(), _locked()])  # two busy writers, then the lock is free

    @contextlib.contextmanager
    def flaky(engine):
        err = next(failures, None)
        if err is not None:
            raise err
        with real(engine) as s:
            yield s

    monkeypatch.setattr(ui, "write_session", flaky)
    assert ui.run_write(lambda *, session: "saved") == "saved"
    assert "notice" not in st.session_state

    @contextlib.contextmanager
    def always_locked(engine):
        raise _locked()
        yield  # pragma: no cover

    monkeypatch.setattr(ui, "write_session", always_locked)
    monkeypatch.setattr(ui.time, "monotonic", iter(range(0, 10_000, 20)).__next__)  # 20 s a try, no waiting
    monkeypatch.setattr(ui.time, "sleep", lambda s: None)
    assert ui.run_write(lambda *, session: "saved") is None
    kind, line = st.session_state.pop("notice")
    assert kind == "error" and "not saved" in line and "\n" not in line

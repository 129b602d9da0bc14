"""History with 1,000 answers: one page of bounded size, from a fixed number of queries."""
from __future__ import annotations

from sqlalchemy import event
from streamlit.testing.v1 import AppTest

from feedback_app import logic
from feedback_app.ready_sets import make_answered_sets
from pickloop.db import read_session
from tests.feedback_app.helpers import APP_DIR

PER_PAGE = 24


def test_a_thousand_answers_page_by_page(ctx, alice):
    make_answered_sets(ctx=ctx, rater_id=alice[0].rater_id, n=1000)
    statements = []
    listen = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(ctx.engine, "before_cursor_execute", listen)
    try:
        with read_session(ctx.engine) as s:
            second = logic.history(session=s, rater_id=alice[0].rater_id, limit=PER_PAGE, offset=PER_PAGE)
    finally:
        event.remove(ctx.engine, "before_cursor_execute", listen)
    assert len(second) == PER_PAGE and len([q for q in statements if q.lstrip().upper().startswith("SELECT")]) <= 3
    assert second[0].prompt == "history prompt 975 <b>not bold</b>"  # newest first: answers 25-48
    assert all(len(item.candidates) == 4 for item in second)
    at = AppTest.from_file(str(APP_DIR / "pages/history.py"), default_timeout=60)
    at.session_state["identity"] = alice[0]
    at.run()
    assert not at.exception
    (page,) = [h.proto.body for h in at.get("html") if "pl-hist-item" in h.proto.body]
    assert page.count('class="pl-hist-item"') == PER_PAGE and page.count("<img ") == 4 * PER_PAGE
    assert "history prompt 999 &lt;b&gt;not bold&lt;/b&gt;" in page  # prompts are text, never markup
    assert any("answers 1-24 of 1000" in m.value for m in at.markdown), [m.value for m in at.markdown]
    at.button(key="history_older").click().run()
    assert any("answers 25-48 of 1000" in m.value for m in at.markdown)

"""Sign-ins that survive a reload: signed, expiring, revocable sessions; the cookie never holds the token."""
from __future__ import annotations

from datetime import timedelta

import pytest

from feedback_app import browser, sessions
from pickloop.db import read_session, write_session
from pickloop.schema import Rater, utcnow
from tests.feedback_app.helpers import judgements, make_sets


def _start(ctx, rater_id: int, hours: float = 12.0, now=None) -> tuple[str, int]:
    with write_session(ctx.engine) as s:
        return sessions.start_session(session=s, rater_id=rater_id, hours=hours, now=now)


def _resume(ctx, cookie: str, now=None):
    with read_session(ctx.engine) as s:
        found = sessions.resume_session(session=s, cookie=cookie, now=now)
        return None if found is None else found[0].name


def test_a_session_resumes_until_it_expires_is_revoked_or_forged(ctx, alice):
    ident, token = alice
    cookie, _ = _start(ctx, ident.rater_id, hours=2)
    assert token not in cookie and _resume(ctx, cookie) == "alice"
    assert _resume(ctx, cookie, now=utcnow() + timedelta(hours=2, seconds=1)) is None  # expired
    sid, expires, sig = cookie.split(".")
    forged = [f"{sid}.{int(expires) + 86400}.{sig}",  # a later expiry under the old signature
              f"{sid}.{expires}.{'0' * len(sig)}", f"{'B' if sid[0] != 'B' else 'C'}{sid[1:]}.{expires}.{sig}",
              "", "a.b", "x" * 400]
    assert [_resume(ctx, f) for f in forged] == [None] * len(forged)
    other, _ = _start(ctx, ident.rater_id)
    with write_session(ctx.engine) as s:
        assert sessions.revoke_sessions(session=s, rater_id=ident.rater_id) == 2  # signed out everywhere
    assert _resume(ctx, cookie) is None and _resume(ctx, other) is None


def test_a_deactivated_rater_is_signed_out(ctx, alice):
    cookie, _ = _start(ctx, alice[0].rater_id)
    with write_session(ctx.engine) as s:
        s.get(Rater, alice[0].rater_id).active = False
    assert _resume(ctx, cookie) is None


def _signed_in(page) -> bool:
    return page.get_by_text("labels today").count() > 0


@pytest.mark.browser
@pytest.mark.slow
def test_reload_and_new_tab_keep_the_session_and_sign_out_ends_it_everywhere(ctx, home, alice):
    make_sets(ctx, 6)
    with browser.app_server(home=home) as url, browser.chromium_page() as page:
        browser.sign_in(page, url, name="alice", token=alice[1])
        key = browser.wait_for_set(page, None, n=4)
        page.wait_for_function("() => document.cookie.includes('pickloop_session=')")
        cookies = {c["name"]: c for c in page.context.cookies()}
        value = cookies["pickloop_session"]["value"]
        assert alice[1] not in value and alice[1] not in page.url and cookies["pickloop_session"]["expires"] > 0
        page.reload()
        assert browser.wait_for_set(page, None, n=4) == key  # still signed in, the same set
        tab = page.context.new_page()
        tab.goto(url)
        browser.wait_for_set(tab, None, n=4)
        browser.focus_page(tab)
        tab.keyboard.press("1")  # the new tab rates as alice
        browser.wait_for_labels(tab, 1)
        browser.visible_set(tab).wait_for()
        tab.locator(".pl-panel").get_by_role("button", name="Sign out").click()
        tab.get_by_label("Token").wait_for()
        # the first tab learns at its next rerun (within a second or two), without a reload
        page.get_by_label("Token").wait_for(timeout=20_000)
        page.reload()
        page.get_by_label("Token").wait_for()
        assert not _signed_in(page)
        # the old cookie, put back by hand, is revoked on the server: it signs no one in
        page.context.add_cookies([{"name": "pickloop_session", "value": value, "url": url}])
        page.reload()
        page.get_by_label("Token").wait_for()  # the app checks the cookie before it picks a page
        assert not _signed_in(page)
    (j,) = judgements(ctx)
    assert j.rater_id == alice[0].rater_id

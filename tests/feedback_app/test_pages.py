"""The pages under Streamlit's AppTest: sign-in, pick, tie, none good, skip, undo, replays, admin."""
from __future__ import annotations

import logging

import pytest
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pickloop.db import read_session
from pickloop.schema import Assignment, Judgement, Prompt
from tests.feedback_app.helpers import (APP_DIR, answer, count, judgements, make_sets, panel_data, send_outbox,
                                        send_undo, set_key, shown_set)

TIMEOUT = 60


def app(ident=None, script: str = "app.py") -> AppTest:
    at = AppTest.from_file(str(APP_DIR / script), default_timeout=TIMEOUT)
    if ident is not None:
        at.session_state["identity"] = ident
    return at.run()


def shown_order(ctx, key: str) -> list[int]:
    from feedback_app import logic
    from pickloop.schema import Comparison

    with read_session(ctx.engine) as s:
        comp = s.exec(select(Comparison).where(Comparison.key == key)).one()
        ident_id = s.exec(select(Assignment.rater_id).where(Assignment.comparison_id == comp.id)).first()
        return logic.set_view(session=s, comparison_id=comp.id, rater_id=ident_id).shown_order


def test_sign_in_with_token_then_rate(ctx, alice):
    make_sets(ctx, 2)
    at = app()
    assert not at.exception and count(ctx, Assignment) == 0
    at.text_input(key="signin_name").input("alice")
    at.text_input(key="signin_token").input(alice[1])
    at.button[0].click().run()
    assert not at.exception
    key = set_key(at)
    order = shown_order(ctx, key)
    assert [c["id"] for c in shown_set(at)["candidates"]] == order  # the browser gets the recorded order
    assert len(panel_data(at)["sets"]) == 2  # the next set is already in the browser
    answer(at, "pick", 2, ms=2345)
    (j,) = judgements(ctx)
    assert (j.choice, j.winner_id, j.shown_order, j.rater_id) == ("pick", order[2], order, alice[0].rater_id)
    assert j.time_ms == 2345
    assert set_key(at) != key and "**1** labels today" in [m.value for m in at.markdown]


def test_wrong_token_and_unauthenticated_requests_write_nothing(ctx, alice):
    make_sets(ctx, 2)
    at = app()
    at.text_input(key="signin_name").input("alice")
    at.text_input(key="signin_token").input(alice[1][:-1] + "x")
    at.button[0].click().run()
    assert "wrong token" in at.error[0].value
    assert panel_data(at) is None
    for script in ("pages/rate.py", "pages/history.py", "pages/admin.py"):  # a page reached directly
        page = app(script=script)
        assert "sign in" in page.warning[0].value and not page.button
    assert count(ctx, Assignment) == 0 and count(ctx, Judgement) == 0


@pytest.mark.parametrize("choice", ["tie", "none", "skip"])
def test_tie_none_good_and_skip(ctx, alice, choice):
    make_sets(ctx, 2)
    at = app(alice[0])
    key = set_key(at)
    answer(at, choice)
    (j,) = judgements(ctx)
    assert (j.choice, j.winner_id) == (choice, None)
    assert set_key(at) != key


def test_undo_takes_back_the_last_pick(ctx, alice):
    make_sets(ctx, 2)
    at = app(alice[0])
    key, token = set_key(at), shown_set(at)["token"]
    answer(at, "pick", 0)
    assert count(ctx, Judgement) == 1 and set_key(at) != key
    send_undo(at, token)
    assert count(ctx, Judgement) == 0 and set_key(at) == key  # the same set is back on screen
    assert shown_set(at)["token"] == token  # under the token the browser already shows it with
    answer(at, "pick", 3)
    (j,) = judgements(ctx)
    assert j.winner_id == shown_order(ctx, key)[3]


def test_undo_of_an_answer_the_server_never_saw_keeps_the_one_before(ctx, alice):
    """U pressed before the rerun that would record the last answer: that answer is what is undone
    (it leaves the outbox), never the answer before it, which the server had already recorded."""
    make_sets(ctx, 3)
    at = app(alice[0])
    first = shown_set(at)
    answer(at, "pick", 1)  # recorded
    second = shown_set(at)
    answer(at, "tie", run=False)  # in the browser's outbox, not yet seen by the server
    send_undo(at, second["token"])
    (j,) = judgements(ctx)
    assert j.winner_id == first["candidates"][1]["id"]  # the first answer stands
    assert shown_set(at)["token"] == second["token"]  # the undone set is on screen again
    answer(at, "none")  # answered again: recorded once, as given the second time
    assert sorted(j.choice for j in judgements(ctx)) == ["none", "pick"]


def test_undo_too_late_is_refused(ctx, alice):
    from datetime import timedelta

    from pickloop.db import write_session

    make_sets(ctx, 2)
    at = app(alice[0])
    token = shown_set(at)["token"]
    answer(at, "pick", 0)
    with write_session(ctx.engine) as s:  # the answer is older than the window (clock moved, not slept)
        (j,) = s.exec(select(Judgement)).all()
        j.created_at = j.created_at - timedelta(seconds=ctx.settings.undo_seconds + 10)
        s.add(j)
    send_undo(at, token)
    assert count(ctx, Judgement) == 1 and shown_set(at)["token"] != token
    assert "Too late to undo" in panel_data(at)["status"]["text"]


def test_replayed_click_writes_one_judgement(ctx, alice):
    make_sets(ctx, 3)
    at = app(alice[0])
    first = shown_set(at)
    answer(at, "pick", 1)
    outbox = at.session_state["rating_panel"]["outbox"]
    send_outbox(at, outbox + outbox)  # the same answer delivered again (replayed state, reconnect)
    at.run()  # a plain rerun
    (j,) = judgements(ctx)
    assert j.winner_id == first["candidates"][1]["id"]
    # The browser's outbox keeps every answer the server has not acknowledged: two answers sent
    # together (the rater answered the next set before the rerun) are both recorded, once each.
    second = shown_set(at)
    sets = panel_data(at)["sets"]
    send_outbox(at, [*outbox, {"token": second["token"], "choice": "tie", "winner_id": None, "ms": 900},
                     {"token": sets[1]["token"], "choice": "skip", "winner_id": None, "ms": 800}])
    assert sorted(j.choice for j in judgements(ctx)) == ["pick", "skip", "tie"]


def test_images_go_to_the_browser_once_per_set_and_again_on_request(ctx, alice):
    make_sets(ctx, 6)
    at = app(alice[0])
    first = panel_data(at)["sets"]
    assert len(first) == ctx.settings.app_sets_ahead + 1 == 4  # the set on screen and three ahead
    assert all("src" in c for s in first for c in s["candidates"])  # a fresh panel gets every image
    answer(at, "pick", 0)
    now = panel_data(at)["sets"]
    assert [s["token"] for s in now[:-1]] == [s["token"] for s in first[1:]]
    assert not any("src" in c for s in now[:-1] for c in s["candidates"])
    assert all("src" in c for c in now[-1]["candidates"])  # only the set new to the browser carries images
    # A panel mounted afresh (the rater came back from another page) holds no images and asks again.
    at.session_state["rating_panel"] = {**at.session_state["rating_panel"],
                                        "need": {"id": "n1", "tokens": [now[0]["token"]]}}
    again = panel_data(at.run())["sets"]
    assert [s["token"] for s in again] == [s["token"] for s in now]
    assert all("src" in c for c in again[0]["candidates"])
    at.run()  # the same request seen twice is answered once
    assert not any("src" in c for s in panel_data(at)["sets"] for c in s["candidates"])


def test_forged_answers_write_nothing(ctx, alice):
    make_sets(ctx, 3)
    at = app(alice[0])
    shown = shown_set(at)
    other = make_sets(ctx, 1)[0]
    from pickloop.schema import Candidate

    with read_session(ctx.engine) as s:
        foreign = s.exec(select(Candidate.id).where(Candidate.comparison_id == other)).first()
    send_outbox(at, [{"token": "not-a-token", "choice": "pick", "winner_id": 1, "ms": 5},
                     {"token": shown["token"], "choice": "pick", "winner_id": foreign, "ms": 5},
                     {"token": shown["token"], "choice": "vote-twice", "winner_id": None, "ms": 5},
                     "garbage", {"choice": "tie"}])
    assert not at.exception and count(ctx, Judgement) == 0
    assert "one of the candidates shown" in panel_data(at)["status"]["text"]


def test_two_tabs_write_one_judgement(ctx, alice):
    make_sets(ctx, 3)
    tab1, tab2 = app(alice[0]), app(alice[0])
    key = set_key(tab1)
    assert set_key(tab2) == key  # a second tab shows the same set
    answer(tab1, "pick", 0)
    answer(tab2, "pick", 1)
    (j,) = judgements(ctx)
    assert j.winner_id == shown_order(ctx, key)[0]  # the first answer stands
    assert "already answered" in panel_data(tab2)["status"]["text"] and set_key(tab2) != key


def test_admin_page_refused_to_a_rater(ctx, alice, admin):
    make_sets(ctx, 2, raters_wanted=2)
    for ident in (alice[0], admin[0]):  # an overlap set answered by both: agreement has a figure
        rater = app(ident)
        answer(rater, "pick", 0)
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        app(alice[0]).switch_page("pages/admin.py")  # not in a rater's navigation at all
    at = app(admin[0]).switch_page("pages/admin.py").run()
    assert not at.exception and [t.value for t in at.title] == ["Admin"]
    page = app(alice[0], script="pages/admin.py")
    assert "admins only" in page.error[0].value and not page.tabs
    page = app(admin[0], script="pages/admin.py")
    assert not page.exception and len(page.tabs) == 7
    assert any(m.label == "overall agreement" for m in page.metric)
    page.button(key="admin_export").click().run()
    assert not page.exception and page.get("download_button")
    page.text_area(key="admin_prompts").input("a new prompt\nanother prompt").run()
    page.button(key="admin_add_prompts").click().run()
    assert "2 prompts added" in page.success[0].value
    with read_session(ctx.engine) as s:
        assert {"a new prompt", "another prompt"} <= {p.text for p in s.exec(select(Prompt))}


def test_empty_queue_waits_then_shows_a_set(ctx, alice):
    at = app(alice[0])
    data = panel_data(at)
    assert data["sets"] == [] and "No sets are being drawn" in data["behind"] and not at.exception
    make_sets(ctx, 1)
    at.run()  # what the fragment's one-second rerun does
    assert set_key(at)


def test_missing_image_shows_a_placeholder(ctx, alice, caplog):
    make_sets(ctx, 1)
    from pickloop.schema import Candidate

    with read_session(ctx.engine) as s:
        sha = s.exec(select(Candidate)).first().image_sha256
    ctx.images.fs.rm(ctx.images.path(sha))
    with caplog.at_level(logging.WARNING, logger="pickloop.app"):
        at = app(alice[0])
    import base64

    from feedback_app.ui import PLACEHOLDER_PNG

    srcs = [c["src"] for c in shown_set(at)["candidates"]]
    assert not at.exception and len(srcs) == 4
    assert srcs.count("data:image/png;base64," + base64.b64encode(PLACEHOLDER_PNG).decode()) == 1
    assert any(sha[:16] in r.getMessage() for r in caplog.records)


def test_history_shows_past_picks(ctx, alice):
    make_sets(ctx, 2)
    at = app(alice[0])
    answer(at, "pick", 0)
    page = app(alice[0], script="pages/history.py")
    assert not page.exception and page.markdown[0].value == "answers 1-1 of 1"
    assert any("a test prompt number" in h.proto.body for h in page.get("html"))


def test_an_oidc_identity_without_a_provider_login_is_signed_out(ctx):
    from feedback_app.logic import Identity
    from pickloop.db import write_session
    from feedback_app.logic import allow_oidc_rater

    make_sets(ctx, 1)
    with write_session(ctx.engine) as s:
        r = allow_oidc_rater(session=s, email="eve@example.org")
        ident = Identity(rater_id=r.id, name=r.name, role=r.role, kind=r.kind)
    at = app(ident)  # session state claims eve, but no OIDC provider vouches for her
    assert panel_data(at) is None
    assert count(ctx, Assignment) == 0 and count(ctx, Judgement) == 0


def test_last_set_answered_switches_to_waiting(ctx, alice):
    make_sets(ctx, 1)
    at = app(alice[0])
    answer(at, "pick", 0)
    assert count(ctx, Judgement) == 1 and panel_data(at)["sets"] == [] and panel_data(at)["behind"]


def test_the_rating_guide_shows_once_to_a_new_rater_and_admins_edit_it(ctx, admin):
    from tests.feedback_app.helpers import make_rater

    make_sets(ctx, 2)
    newcomer, _ = make_rater(ctx, "new", guide_seen=False)
    at = app(newcomer)
    guide = panel_data(at)["guide"]
    assert guide["show"] and "Tie (T)" in guide["text"] and "None good (N)" in guide["text"]
    at.session_state["rating_panel"] = {"outbox": [], "guide_seen": "g1"}  # the rater pressed "Got it"
    at.run()
    assert not panel_data(at)["guide"]["show"]
    assert not panel_data(app(newcomer))["guide"]["show"]  # not again, in a new browser session either
    page = app(admin[0], script="pages/admin.py")
    page.text_area(key="admin_guide").input("Pick the sharpest image.\nTie only when truly equal.")
    page.button(key="admin_save_guide").click().run()
    assert not page.exception
    assert panel_data(app(newcomer))["guide"]["text"] == "Pick the sharpest image.\nTie only when truly equal."


def test_sign_out_from_the_panel_ends_the_session(ctx, alice):
    from feedback_app import sessions
    from pickloop.db import write_session

    make_sets(ctx, 2)
    with write_session(ctx.engine) as s:
        cookie, row = sessions.start_session(session=s, rater_id=alice[0].rater_id, hours=1)
    at = AppTest.from_file(str(APP_DIR / "app.py"), default_timeout=TIMEOUT)
    at.session_state["identity"], at.session_state["session_row"] = alice[0], row
    at.run()
    assert panel_data(at) is not None
    at.session_state["rating_panel"] = {"outbox": [], "signout": "s1"}
    at.run()
    assert panel_data(at) is None and "identity" not in at.session_state  # the sign-in form: Chromium tests
    with read_session(ctx.engine) as s:
        assert sessions.resume_session(session=s, cookie=cookie) is None  # revoked on the server

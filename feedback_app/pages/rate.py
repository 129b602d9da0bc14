"""Rate: the prompt and its candidates, large; click or 1-4 pick, T tie, N none good, S skip, U undo,
G the rating guide, Shift+1-4 enlarge.

Speed: the rating panel (``feedback_app/rating_panel.py``) holds the set on screen and the next ones
(``app_sets_ahead``), already decoded in the browser, and swaps to the next set the moment the rater
answers. The answer reaches the server on the rerun that follows, which records it, hands out the sets
after, and sends them ahead. The panel also asks for a rerun of its fragment (a ``tick``) after a
second without one while it holds fewer sets than it should, so sets the generator finishes reach a
browser that ran short without waiting for an answer, and after ``IDLE_TICK_S`` without one otherwise
(a sign-out in another tab, an expired session). All of this is kept in this browser session's state
only.
"""
import streamlit as st

from feedback_app import logic, rating_panel, ui
from feedback_app.rating_panel import Panel
from pickloop.db import read_session

PANEL_KEY = "rating_panel"
SHORT_TICK_S = 1.0  # a panel holding fewer sets than it should asks for a rerun after this long without one
IDLE_TICK_S = 5.0  # a full panel, after this long without one

ident = ui.require_identity()
ctx = ui.context()
state = st.session_state


def panel() -> Panel:
    p = state.get("panel")
    if not isinstance(p, Panel):
        p = state["panel"] = Panel(depth=ctx.settings.app_sets_ahead + 1)
    return p


def notice(text: str) -> None:
    state["status_n"] = state.get("status_n", 0) + 1
    state["status"] = {"id": state["status_n"], "text": text}


def next_set(skip: list[int]) -> logic.SetView | None:
    return ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings, skip=skip)


def undo(p: Panel, token: str) -> None:
    """Take back the answer the browser names (the last one it gave), recorded yet or not."""
    view, me = p.undone_view(token), ui.identity()
    if view is None or me is None:
        notice("Nothing to undo.")
        return
    with read_session(ctx.engine) as s:
        recorded = logic.answered(session=s, rater_id=me.rater_id, comparison_id=view.comparison_id)
    if recorded and not ui.run_write(logic.undo_answer, identity=me, comparison_id=view.comparison_id,
                                     within_s=ctx.settings.undo_seconds + ui.UNDO_SLACK_S):
        notice(f"Too late to undo: an answer can be taken back for {ctx.settings.undo_seconds:g} s.")
        return
    p.restore(token)


def refresh(p: Panel) -> None:
    """Handle what the browser sent, in its order and each entry once (answers, and undos of the last
    answer), then hand out sets until the panel is full."""
    value = state.get(PANEL_KEY)
    signout = value.get("signout") if isinstance(value, dict) else None
    if signout and signout != state.get("signout_seen"):
        ui.sign_out()  # every session of the rater ends; this browser session forgets everything
        state["signout_seen"] = signout  # but this request: a panel state kept by the browser is not a new one
        st.rerun(scope="app")
    p.handle_need(value)
    for answer in p.new_answers(value):
        if answer.choice == "undo":
            undo(p, answer.token)
            p.acknowledge(answer, None)
            continue
        view = p.view_of(answer)  # looked up now: an undo just before may have put its set back
        me = ui.identity()  # the rater always comes from the signed-in identity, never from the browser
        if view is not None and me is not None:
            res = ui.run_write(logic.submit_choice, identity=me, view=view, choice=answer.choice,
                               winner_id=answer.winner_id, time_ms=answer.ms)
            if res is not None and not res[1]:
                notice("That set was already answered (another tab?); here is the next one.")
        p.acknowledge(answer, view)
    seen = value.get("guide_seen") if isinstance(value, dict) else None
    if seen and seen != state.get("guide_seen"):
        state["guide_seen"] = seen
        ui.run_write(logic.mark_guide_seen, rater_id=ident.rater_id)
    p.fill(next_set)


def guide() -> dict:
    with read_session(ctx.engine) as s:
        text = logic.rating_guide(session=s)
        first_time = not logic.guide_seen(session=s, rater_id=ident.rater_id)
    return {"text": text, "show": first_time and not state.get("guide_seen")}


def behind(p: Panel) -> str:
    """Why the browser may have no set to show, and for how long: only asked when the panel is short."""
    if len(p.queue) > 1:
        return ""
    with read_session(ctx.engine) as s:
        return logic.wait_line(session=s, rater_id=ident.rater_id)


@st.fragment
def rating_view() -> None:
    """The bar above the panel and the panel; the panel's answers rerun only this fragment."""
    if ui.identity() is None:  # signed out in another tab (or the session expired): to the sign-in page
        st.rerun(scope="app")
    p = panel()
    refresh(p)
    with read_session(ctx.engine) as s:
        today = logic.labels_today(session=s, rater_id=ident.rater_id)
    bar = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    bar.markdown(f"**{today}** labels today", width="content")
    bar.caption(f"signed in as {ident.name}", width="content")
    issue = state.pop("notice", None)  # a store error from ui.run_write
    if issue:
        notice(issue[1])
    data = p.data(lambda sha: ui.image_data_uri(ctx, sha))
    data.update(undo_s=ctx.settings.undo_seconds, status=state.get("status"), behind=behind(p), guide=guide(),
                depth=p.depth, tick_s={"short": SHORT_TICK_S, "idle": IDLE_TICK_S})
    rating_panel.mount(key=PANEL_KEY, data=data,
                       default={"outbox": [], "need": None, "guide_seen": None, "signout": None, "tick": None},
                       on_outbox_change=lambda: None, on_need_change=lambda: None,
                       on_guide_seen_change=lambda: None, on_signout_change=lambda: None,
                       on_tick_change=lambda: None)


st.html(ui.CSS)
rating_view()

"""Rate: the prompt and its candidates, large; 1-4 pick, T tie, N none good, S skip, U undo.

Speed: the answer is written in the button's callback, before the rerun; the set after the one on
screen is handed out and its images read in a background thread while the rater looks, and images
go inline with the page. So a pick is one short rerun away from the next set. All of this is kept
in this browser session's state only.
"""
import threading
from concurrent.futures import Future

import streamlit as st

from feedback_app import logic, ui
from pickloop.context import Context
from pickloop.db import read_session, write_session

# The next set is fetched this long after a set is sent, unless a pick asks for it sooner: sent at
# once, it competes with sending the set on screen (same process, same CPU) and slows it down.
PREFETCH_DELAY_S = 0.25

ident = ui.require_identity()
ctx = ui.context()
state = st.session_state


def fetch_next(ctx: Context, rater_id: int, after_id: int | None,
               hurry: threading.Event) -> tuple[logic.SetView | None, dict[str, str]]:
    """Hand out the set after ``after_id`` and read its images (runs off the script thread: no st calls)."""
    hurry.wait(PREFETCH_DELAY_S)
    with write_session(ctx.engine) as s:
        view = logic.next_set_for(session=s, rater_id=rater_id, settings=ctx.settings,
                                  skip=[after_id] if after_id is not None else [])
    images = {c.image_sha256: ui.image_data_uri(ctx, c.image_sha256) for c in view.candidates} if view else {}
    return view, images


def done_future(view: logic.SetView | None, images: dict[str, str]) -> tuple[Future, threading.Event]:
    f: Future = Future()
    f.set_result((view, images))
    return f, threading.Event()


def start_prefetch(view: logic.SetView) -> None:
    hurry = threading.Event()
    state["upcoming"] = (ui.background().submit(fetch_next, ctx, ident.rater_id, view.comparison_id, hurry), hurry)


def show(view: logic.SetView | None, images: dict[str, str] | None = None) -> None:
    state["current"] = view
    state["images"] = images if images is not None else (
        {c.image_sha256: ui.image_data_uri(ctx, c.image_sha256) for c in view.candidates} if view else {})
    state["shown_at_ms"] = ui.now_ms()
    state.pop("upcoming", None)


def take_upcoming() -> None:
    """Show the prefetched set (or nothing, and the page asks the queue again)."""
    future, hurry = state.get("upcoming") or (None, None)
    try:
        if future is not None:
            hurry.set()  # a quick rater: fetch now rather than after the delay
        view, images = future.result(timeout=30) if future is not None else (None, None)
    except Exception as e:  # noqa: BLE001 - a failed prefetch just means asking again
        ui.log.warning("prefetch failed: %s", e)
        view, images = None, None
    show(view, images)


def answer(view: logic.SetView, choice: str, winner_id: int | None = None) -> None:
    """Button callback: runs before the rerun, so the next set is drawn in the same run."""
    me = ui.identity()  # the rater always comes from the signed-in identity
    if me is None:
        return
    current = state.get("current")
    is_current = current is not None and current.key == view.key
    took = ui.now_ms() - state.get("shown_at_ms", ui.now_ms()) if is_current else None
    res = ui.run_write(logic.submit_choice, identity=me, view=view, choice=choice, winner_id=winner_id, time_ms=took)
    if res is None:  # refused (say, the set was withdrawn): the notice says why; move on
        if is_current:
            take_upcoming()
        return
    row, created = res
    if created:
        state["last_answer"] = {"at_ms": ui.now_ms(), "choice": row.choice}
    elif is_current:
        state["notice"] = ("info", "That set was already answered (another tab?); here is the next one.")
    if is_current:
        take_upcoming()


def undo() -> None:
    me = ui.identity()
    if me is None:
        return
    set_id = ui.run_write(logic.undo_last, identity=me, settings=ctx.settings)
    state.pop("last_answer", None)
    if set_id is None:
        state["notice"] = ("warning", "Nothing to undo: the last answer is older than "
                                      f"{ctx.settings.undo_seconds:g} s.")
        return
    with read_session(ctx.engine) as s:
        view = logic.set_view(session=s, comparison_id=set_id, rater_id=me.rater_id)
    current, images = state.get("current"), state.get("images", {})
    show(view)
    if current is not None and current.comparison_id != set_id:
        state["upcoming"] = done_future(current, images)  # the set that was on screen comes next
    state["notice"] = ("info", "Undone: answer this set again.")


@st.fragment(run_every=2.0)
def wait_for_sets() -> None:
    st.info("Drawing new candidates… this page refreshes by itself.", icon="⏳")
    with read_session(ctx.engine) as s:  # polling is a read; the write comes once there is a set
        if not logic.has_set_for(session=s, rater_id=ident.rater_id):
            return
    view = ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings)
    if view is not None:
        show(view)
        st.rerun(scope="app")


@st.fragment
def rating_view() -> None:
    """The set on screen; its buttons rerun only this fragment (not the app and its navigation)."""
    if state.get("current") is None:
        show(ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings))
    view = state["current"]
    if view is None:
        st.rerun(scope="app")  # the queue ran dry: the page switches to the waiting state
    top = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    with read_session(ctx.engine) as s:
        top.markdown(f"**{logic.labels_today(session=s, rater_id=ident.rater_id)}** labels today", width="content")
    last = state.get("last_answer")
    if last and ui.now_ms() - last["at_ms"] < ctx.settings.undo_seconds * 1000:
        top.button("Undo", key="undo", shortcut="U", on_click=undo)
    notice = state.pop("notice", None)
    if notice:
        getattr(top, notice[0])(notice[1])
    n = len(view.candidates)
    st.markdown(f"### {view.prompt}")
    # One HTML element for all images and one row of buttons: few messages per set, so it shows fast.
    st.html(ui.candidate_grid([state["images"][c.image_sha256] for c in view.candidates]))
    # Widget keys carry the set key: a late second click of a double click lands on the old set's
    # button (a replay, written once), never on the new set the rater has not looked at yet.
    picks = st.container(horizontal=True, gap="small")
    for cand in view.candidates:
        picks.button(f"Pick {cand.position + 1}", key=f"pick-{view.key}-{cand.position}",
                     shortcut=str(cand.position + 1), on_click=answer, args=(view, "pick", cand.id),
                     type="primary", width="stretch")
    row = st.container(horizontal=True, gap="small")
    row.button("Tie", key=f"tie-{view.key}", shortcut="T", on_click=answer, args=(view, "tie"), width="stretch")
    row.button("None good", key=f"none-{view.key}", shortcut="N", on_click=answer, args=(view, "none"),
               width="stretch")
    row.button("Skip", key=f"skip-{view.key}", shortcut="S", on_click=answer, args=(view, "skip"), width="stretch")
    st.caption(f"set {view.key} · keys: 1-{n} pick, T tie, N none good, S skip, U undo")
    if state.get("upcoming") is None:
        start_prefetch(view)


st.html(ui.CSS)
if state.get("current") is None:
    show(ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings))
if state["current"] is None:
    with read_session(ctx.engine) as s:
        st.markdown(f"**{logic.labels_today(session=s, rater_id=ident.rater_id)}** labels today")
    notice = state.pop("notice", None)
    if notice:
        getattr(st, notice[0])(notice[1])
    wait_for_sets()
else:
    rating_view()

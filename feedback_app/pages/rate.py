"""Rate: the prompt and its candidates, large; click or 1-4 pick, T tie, N none good, S skip, U undo.

Speed: the rating panel (``feedback_app/rating_panel.py``) holds the set on screen and the next one,
already decoded in the browser, and swaps to the next set the moment the rater answers. The answer
reaches the server on the rerun that follows, which records it, hands out the set after, and sends
that ahead. All of this is kept in this browser session's state only.
"""
import streamlit as st

from feedback_app import logic, rating_panel, ui
from feedback_app.rating_panel import Panel
from pickloop.db import read_session

PANEL_KEY = "rating_panel"

ident = ui.require_identity()
ctx = ui.context()
state = st.session_state


def panel() -> Panel:
    p = state.get("panel")
    if not isinstance(p, Panel):
        p = state["panel"] = Panel(depth=ctx.settings.app_sets_ahead + 1)
    return p


def next_set(skip: list[int]) -> logic.SetView | None:
    return ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings, skip=skip)


def refresh(p: Panel) -> None:
    """Record the answers the browser sent (each once), then hand out sets until the panel is full."""
    p.handle_need(state.get(PANEL_KEY))
    for answer, view in p.new_answers(state.get(PANEL_KEY)):
        me = ui.identity()  # the rater always comes from the signed-in identity, never from the browser
        if view is not None and me is not None:
            res = ui.run_write(logic.submit_choice, identity=me, view=view, choice=answer.choice,
                               winner_id=answer.winner_id, time_ms=answer.ms)
            if res is not None:
                row, created = res
                if created:
                    state["last_answer"] = {"at_ms": ui.now_ms(), "choice": row.choice}
                else:
                    state["notice"] = ("info", "That set was already answered (another tab?); "
                                               "here is the next one.")
        p.acknowledge(answer, view)
    p.fill(next_set)


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
    if view is not None:
        panel().show_first(view)  # on screen again, before the set the rater was looking at
    state["notice"] = ("info", "Undone: answer this set again.")


def labels_today() -> int:
    with read_session(ctx.engine) as s:
        return logic.labels_today(session=s, rater_id=ident.rater_id)


@st.fragment(run_every=2.0)
def wait_for_sets() -> None:
    st.info("Drawing new candidates… this page refreshes by itself.", icon="⏳")
    with read_session(ctx.engine) as s:  # polling is a read; the write comes once there is a set
        if not logic.has_set_for(session=s, rater_id=ident.rater_id):
            return
    panel().fill(next_set)
    if panel().queue:
        st.rerun(scope="app")


@st.fragment
def rating_view() -> None:
    """The panel and the bar above it; the panel's answers rerun only this fragment."""
    p = panel()
    refresh(p)
    if not p.queue:
        st.rerun(scope="app")  # the queue ran dry: the page switches to the waiting state
    top = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    top.markdown(f"**{labels_today()}** labels today", width="content")
    last = state.get("last_answer")
    if last and ui.now_ms() - last["at_ms"] < ctx.settings.undo_seconds * 1000:
        top.button("Undo", key="undo", shortcut="U", on_click=undo)
    notice = state.pop("notice", None)
    if notice:
        getattr(top, notice[0])(notice[1])
    rating_panel.mount(key=PANEL_KEY, data=p.data(lambda sha: ui.image_data_uri(ctx, sha)),
                       default={"outbox": [], "need": None}, on_outbox_change=lambda: None,
                       on_need_change=lambda: None)


st.html(ui.CSS)
refresh(panel())
if not panel().queue:
    st.markdown(f"**{labels_today()}** labels today")
    notice = state.pop("notice", None)
    if notice:
        getattr(st, notice[0])(notice[1])
    wait_for_sets()
else:
    rating_view()

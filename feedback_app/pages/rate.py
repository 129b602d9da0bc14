"""Rate: the prompt and its candidates, large; 1-4 pick, T tie, N none good, S skip, U undo.

Speed: the answer is written in the button's callback, before the rerun, and the set after the
one on screen is handed out and its images read at the end of each run, so the next set is on
screen after one short rerun. Both live in this browser session's state only.
"""
import streamlit as st

from feedback_app import logic, ui
from pickloop.db import read_session

ident = ui.require_identity()
ctx = ui.context()
state = st.session_state


def show(view: logic.SetView | None) -> None:
    state["current"] = view
    state["shown_at_ms"] = ui.now_ms()
    if state.get("upcoming") is not None and view is not None and state["upcoming"].key == view.key:
        state["upcoming"] = None


def answer(view: logic.SetView, choice: str, winner_id: int | None = None) -> None:
    """Button callback: runs before the rerun, so the next set is drawn in the same run."""
    me = ui.identity()  # the rater always comes from the signed-in identity
    if me is None:
        return
    current = state.get("current")
    is_current = current is not None and current.key == view.key
    took = ui.now_ms() - state.get("shown_at_ms", ui.now_ms()) if is_current else None
    res = ui.run_write(logic.submit_choice, identity=me, view=view, choice=choice, winner_id=winner_id, time_ms=took)
    if res is None:
        return
    row, created = res
    if created:
        state["last_answer"] = {"at_ms": ui.now_ms(), "choice": row.choice}
    elif is_current:
        state["notice"] = ("info", "That set was already answered (another tab?); here is the next one.")
    if is_current:
        show(state.get("upcoming"))


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
    current = state.get("current")
    state["upcoming"] = current if current is not None and current.comparison_id != set_id else None
    show(view)
    state["notice"] = ("info", "Undone: answer this set again.")


def images_of(view: logic.SetView) -> dict[str, bytes]:
    """The set's image bytes, read once per browser session (a small per-session cache)."""
    cache = state.setdefault("image_cache", {})
    return {c.image_sha256: cache.get(c.image_sha256) or ui.image_bytes(ctx, c.image_sha256) for c in view.candidates}


def prefetch(view: logic.SetView) -> None:
    """Hand out the set after ``view`` and read its images now, while the rater looks at ``view``."""
    upcoming = state.get("upcoming")
    if upcoming is None or upcoming.key == view.key:
        upcoming = ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings,
                                skip=[view.comparison_id])
    keep = images_of(view) | (images_of(upcoming) if upcoming is not None else {})
    state["image_cache"] = keep  # only the set on screen and the next one
    state["upcoming"] = upcoming


@st.fragment(run_every=2.0)
def wait_for_sets() -> None:
    st.info("Drawing new candidates… this page refreshes by itself.", icon="⏳")
    view = ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings)
    if view is not None:
        show(view)
        st.rerun(scope="app")


st.html(ui.CSS)
top = st.columns([2, 1, 4], vertical_alignment="center")
if state.get("current") is None:
    show(ui.run_write(logic.next_set_for, rater_id=ident.rater_id, settings=ctx.settings))
view = state["current"]
last = state.get("last_answer")
if last and ui.now_ms() - last["at_ms"] < ctx.settings.undo_seconds * 1000:
    top[1].button("Undo", key="undo", shortcut="U", on_click=undo)
notice = state.pop("notice", None)
if notice:
    getattr(top[2], notice[0])(notice[1])

if view is None:
    with read_session(ctx.engine) as s:
        top[0].markdown(f"**{logic.labels_today(session=s, rater_id=ident.rater_id)}** labels today")
    wait_for_sets()
    st.stop()

n = len(view.candidates)
images = images_of(view)
st.markdown(f"### {view.prompt}")
for col, cand in zip(st.columns(n, gap="small"), view.candidates):
    with col:
        st.image(images[cand.image_sha256], width="stretch", alt=f"Candidate {cand.position + 1}")
        st.button(f"Pick {cand.position + 1}", key=f"pick-{view.key}-{cand.position}",
                  shortcut=str(cand.position + 1), on_click=answer, args=(view, "pick", cand.id),
                  type="primary", width="stretch")
row = st.columns(3)
row[0].button("Tie", key=f"tie-{view.key}", shortcut="T", on_click=answer, args=(view, "tie"), width="stretch")
row[1].button("None good", key=f"none-{view.key}", shortcut="N", on_click=answer, args=(view, "none"),
              width="stretch")
row[2].button("Skip", key=f"skip-{view.key}", shortcut="S", on_click=answer, args=(view, "skip"), width="stretch")
st.caption(f"set {view.key} · keys: 1-{n} pick, T tie, N none good, S skip, U undo")
# Below this line nothing changes what is on screen for the set: the counter, then the next set.
with read_session(ctx.engine) as s:
    top[0].markdown(f"**{logic.labels_today(session=s, rater_id=ident.rater_id)}** labels today")
prefetch(view)

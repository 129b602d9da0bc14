"""History: the signed-in rater's past answers, newest first, a page of small thumbnails at a time."""
import streamlit as st

from feedback_app import logic, ui
from pickloop.db import read_session

PER_PAGE = 24  # answers on one page

ident = ui.require_identity()
ctx = ui.context()
st.html(ui.CSS)
st.title("Your answers")
with read_session(ctx.engine) as s:
    total = logic.history_count(session=s, rater_id=ident.rater_id)
    pages = max(1, -(-total // PER_PAGE))
    page = min(max(0, st.session_state.get("history_page", 0)), pages - 1)
    items = logic.history(session=s, rater_id=ident.rater_id, limit=PER_PAGE, offset=page * PER_PAGE)
if not items:
    st.info("No answers yet. Rate a few sets first.")
    st.stop()


def turn(by: int) -> None:
    st.session_state["history_page"] = page + by


bar = st.container(horizontal=True, vertical_alignment="center")
bar.button("Newer", key="history_newer", disabled=page == 0, on_click=turn, args=(-1,))
bar.markdown(f"answers {page * PER_PAGE + 1}-{page * PER_PAGE + len(items)} of {total}", width="content")
bar.button("Older", key="history_older", disabled=page >= pages - 1, on_click=turn, args=(1,))
st.html(ui.history_html(ctx, items))

"""History: the signed-in rater's past answers as a gallery, newest first."""
import streamlit as st

from feedback_app import logic, ui
from pickloop.db import read_session

ident = ui.require_identity()
ctx = ui.context()
st.html(ui.CSS)
st.title("Your answers")
with read_session(ctx.engine) as s:
    items = logic.history(session=s, rater_id=ident.rater_id, limit=40)
if not items:
    st.info("No answers yet. Rate a few sets first.")
CHOICE_WORDS = {"pick": "picked", "tie": "tie", "none": "none good", "skip": "skipped"}
for item in items:
    st.markdown(f"**{item.prompt}** · {CHOICE_WORDS.get(item.choice, item.choice)} · "
                f"{item.created_at.astimezone():%Y-%m-%d %H:%M}")
    cols = st.columns(max(len(item.candidates), 4))
    for col, cand in zip(cols, item.candidates):
        mark = "✅ picked" if cand.id == item.winner_id else " "
        col.image(ui.image_bytes(ctx, cand.image_sha256), caption=mark, width="stretch")
    st.divider()

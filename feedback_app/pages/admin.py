"""Admin (admin role only): queue, prompts, model versions and win rates, agreement, raters, export."""
import pandas as pd
import streamlit as st

from feedback_app import logic, ui
from pickloop.db import read_session
from pickloop.store import list_raters

ident = ui.require_admin()
ctx = ui.context()
st.title("Admin")
queue, prompts, models, agree, raters, guide, export = st.tabs(
    ["Queue", "Prompts", "Models", "Agreement", "Raters", "Rating guide", "Export"])

with read_session(ctx.engine) as s:
    counts = logic.queue_counts(session=s)
    rates = logic.win_rates_by_version(session=s)
    report = logic.agreement(session=s)
    guide_text = logic.rating_guide(session=s)
    rater_rows = [{"id": r.id, "name": r.name, "role": r.role, "kind": r.kind, "active": r.active}
                  for r in list_raters(session=s)]  # plain dicts: rows expire when the session ends

with queue:
    cols = st.columns(4)
    for col, key in zip(cols, ("ready_unanswered", "drawing", "done", "failed")):
        col.metric(key.replace("_", " "), counts[key])
    st.caption(f"{counts['ready']} ready sets, {counts['judgements']} answers, "
               f"{counts['active_prompts']} active prompts")

with prompts:
    def _add_prompts() -> None:
        text = st.session_state.get("admin_prompts", "")
        upload = st.session_state.get("admin_prompt_file")
        data = upload.getvalue() if upload is not None else text
        res = ui.run_write(logic.add_prompts_from_text, text=data, pool=st.session_state.get("admin_pool") or "default")
        if res is not None:
            st.session_state["notice"] = ("success", f"{res[0]} prompts added, {res[1]} already present")
            st.session_state["admin_prompts"] = ""

    st.text_area("Paste prompts, one per line", key="admin_prompts", height=150)
    st.file_uploader("…or upload a UTF-8 text file (one prompt per line)", type=["txt"], key="admin_prompt_file")
    st.text_input("Pool", value="default", key="admin_pool")
    st.button("Add prompts", key="admin_add_prompts", on_click=_add_prompts)

with models:
    if not rates:
        st.info("No fine-tuned versions yet: win rates appear once a version with a parent has labels.")
    else:
        df = pd.DataFrame([{"version": r.name, "parent": r.parent, "status": r.status, "wins": r.wins,
                            "losses": r.losses, "ties": r.ties, "pairs": r.pairs,
                            "win rate vs parent": r.win_rate} for r in rates])
        st.dataframe(df, hide_index=True)
        chart = df.dropna(subset=["win rate vs parent"]).set_index("version")[["win rate vs parent"]]
        if not chart.empty:
            st.bar_chart(chart)

with agree:
    if report.pairs == 0:
        st.info("No overlap set has two answers yet.")
    else:
        st.metric("overall agreement", f"{report.overall:.0%}",
                  help=f"{report.pairs} rater pairs on {report.sets} sets")
        st.dataframe(pd.DataFrame([{"rater": k, "agreed": a, "pairs": p, "agreement": a / p}
                                   for k, (a, p) in report.per_rater.items()]), hide_index=True)

with raters:
    st.dataframe(pd.DataFrame(rater_rows), hide_index=True)
    st.caption("Add token raters with `pickloop raters add NAME [--admin]`. OIDC allow list:")

    def _allow() -> None:
        email = st.session_state.get("admin_allow_email", "")
        role = "admin" if st.session_state.get("admin_allow_admin") else "rater"
        if ui.run_write(logic.allow_oidc_rater, email=email, role=role) is not None:
            st.session_state["notice"] = ("success", f"{email} may now sign in")

    st.text_input("Email to allow", key="admin_allow_email")
    st.checkbox("admin", key="admin_allow_admin")
    st.button("Allow", key="admin_allow", on_click=_allow)

with guide:
    def _save_guide() -> None:
        if ui.run_write(logic.save_rating_guide, text=st.session_state.get("admin_guide", "")) is not None:
            st.session_state["notice"] = ("success", "Rating guide saved; raters see it under Guide (key G).")

    st.caption("Shown once to each new rater, and to anyone on demand (the Guide button, key G). "
               "Plain text; one paragraph a line. Empty: the default guide.")
    st.text_area("Rating guide", value=guide_text, key="admin_guide", height=260)
    st.button("Save guide", key="admin_save_guide", on_click=_save_guide)

with export:
    fmt = st.selectbox("Format", logic.export_formats(), key="admin_export_fmt")
    if st.button("Prepare export", key="admin_export"):
        with read_session(ctx.engine) as s:
            data, name, mime = logic.export_labels(session=s, fmt=fmt, images=ctx.images)
        st.download_button(f"Download {name}", data, file_name=name, mime=mime, on_click="ignore")

notice = st.session_state.pop("notice", None)
if notice:
    getattr(st, notice[0])(notice[1])

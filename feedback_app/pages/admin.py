"""Admin (admin role only): queue, prompts (add, hide), Create settings, model versions and win rates,
audiences (groups, which version serves whom), agreement, raters, rating guide, export."""
import pandas as pd
import streamlit as st

from sqlmodel import select

from feedback_app import create, logic, ui
from pickloop import audiences
from pickloop.db import read_session
from pickloop.schema import ModelVersion
from pickloop.store import list_raters, set_prompt_hidden

ident = ui.require_admin()
ctx = ui.context()
st.title("Admin")
queue, prompts, create_tab, models, audience_tab, agree, raters, guide, export = st.tabs(
    ["Queue", "Prompts", "Create", "Models", "Audiences", "Agreement", "Raters", "Rating guide", "Export"])

with read_session(ctx.engine) as s:
    counts = logic.queue_counts(session=s)
    rates = logic.win_rates_by_version(session=s)
    report = logic.agreement(session=s)
    guide_text = logic.rating_guide(session=s)
    create_now = create.create_settings(session=s)
    group_rows = audiences.groups(session=s)
    serving_rows = [r.__dict__ for r in audiences.serving_table(session=s)]
    audience_rates = [{"audience": r.audience, "version": r.version, "parent": r.parent, "raters served": r.raters,
                       "labels": r.labels, "wins": r.wins, "losses": r.losses, "ties": r.ties, "pairs": r.pairs,
                       "win rate vs parent": r.win_rate, "gate win rate": r.gate_win_rate}
                      for r in audiences.audience_win_rates(session=s)]
    version_names = [v.name for v in s.exec(select(ModelVersion).order_by(ModelVersion.id.desc()))]
    prompt_rows = create.prompt_rows(session=s)
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

    def _hide(hidden: bool) -> None:
        prompt_id = st.session_state.get("admin_hide_prompt")
        if prompt_id is not None and ui.run_write(set_prompt_hidden, prompt_id=prompt_id, hidden=hidden):
            st.session_state["notice"] = ("success", f"prompt {prompt_id} {'hidden' if hidden else 'served again'}")

    st.subheader("Prompts in the pool, newest first")
    st.caption("Raters' own prompts from the Create page name their rater. A hidden prompt is never drawn again, "
               "its waiting sets are not handed out, and Create refuses it.")
    if prompt_rows:
        st.dataframe(pd.DataFrame(prompt_rows), hide_index=True)
        texts = {r["id"]: f"{r['id']}: {r['prompt'][:80]} ({r['written by']}{', hidden' if r['hidden'] else ''})"
                 for r in prompt_rows}
        st.selectbox("Prompt", list(texts), format_func=texts.get, key="admin_hide_prompt")
        row = st.container(horizontal=True)
        row.button("Hide", key="admin_hide", on_click=_hide, args=(True,))
        row.button("Serve again", key="admin_unhide", on_click=_hide, args=(False,))

with create_tab:
    def _save_create() -> None:
        res = ui.run_write(create.save_create_settings, enabled=st.session_state.get("admin_create_on", True),
                           max_prompt_chars=int(st.session_state.get("admin_create_max", 0)))
        if res is not None:
            st.session_state["notice"] = ("success", f"Create is {'on' if res.enabled else 'off'}; prompts up to "
                                                     f"{res.max_prompt_chars} characters")

    st.caption("Raters type a prompt, get candidates from the version that serves them, and keep one: a judgement "
               "like any pick, and the prompt joins the pool.")
    st.toggle("Create page on", value=create_now.enabled, key="admin_create_on")
    st.number_input("Longest prompt, characters", min_value=1, max_value=2000, step=10,
                    value=create_now.max_prompt_chars, key="admin_create_max")
    st.button("Save Create settings", key="admin_save_create", on_click=_save_create)

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

with audience_tab:
    def _add_group() -> None:
        name = st.session_state.get("admin_group_name", "")
        if ui.run_write(audiences.add_group, name=name) is not None:
            st.session_state["notice"] = ("success", f"group {name.strip()} added")

    def _membership(member: bool) -> None:
        group, names = st.session_state.get("admin_group"), st.session_state.get("admin_group_raters") or []
        n = ui.run_write(audiences.set_membership, group=group or "", raters=names, member=member)
        if n is not None:
            st.session_state["notice"] = ("success", f"{n} rater(s) {'joined' if member else 'left'} {group}")

    def _serve() -> None:
        ref, audience = st.session_state.get("admin_serve_version"), st.session_state.get("admin_serve_audience", "")
        row = ui.run_write(audiences.serve, ref=ref or "", audience=audience)
        if row is not None:
            st.session_state["notice"] = ("success", f"{row.name} now serves {row.audience}")

    st.caption("A version serves everyone (the shared one), a group of raters or one rater: the first of a rater's "
               "own, their groups' (by name) and the shared one draws their Create candidates and the Rate sets "
               "they are handed.")
    st.dataframe(pd.DataFrame(serving_rows), hide_index=True)
    st.subheader("Win rates per audience")
    st.caption("Each audience's version against its parent, from the answers of the raters it serves: labels on "
               "the sets it drew, and pairs of its candidates and its parent's shown together in one set.")
    st.dataframe(pd.DataFrame(audience_rates), hide_index=True)
    st.selectbox("Version", version_names, key="admin_serve_version")
    st.text_input("Audience (group:NAME or rater:NAME)", key="admin_serve_audience")
    st.button("Serve it", key="admin_serve", on_click=_serve)
    st.subheader("Groups")
    if group_rows:
        st.dataframe(pd.DataFrame([{"group": g, "raters": ", ".join(m)} for g, m in group_rows.items()]),
                     hide_index=True)
        st.selectbox("Group", list(group_rows), key="admin_group")
        st.multiselect("Raters", [r["name"] for r in rater_rows], key="admin_group_raters")
        row = st.container(horizontal=True)
        row.button("Join", key="admin_group_join", on_click=_membership, args=(True,))
        row.button("Leave", key="admin_group_leave", on_click=_membership, args=(False,))
    st.text_input("New group", key="admin_group_name")
    st.button("Add group", key="admin_add_group", on_click=_add_group)

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

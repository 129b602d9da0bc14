"""The rating app (``pickloop app`` runs ``streamlit run feedback_app/app.py``).

Signed out, the only page is sign-in (token, or ``st.login`` when OIDC secrets exist). Signed in:
Rate, Create (unless an admin switched it off), History and, for admins, Admin, in a bar at the top
(the whole width is the candidates'). A token sign-in lasts across reloads and tabs through a signed
session cookie (``sessions.py``). Every page also checks the identity itself.
"""
import streamlit as st

from feedback_app import ui

st.set_page_config(page_title="pickloop", layout="wide", initial_sidebar_state="collapsed")

ident = ui.identity()
ui.keep_session_cookie()
if ident is None:
    page = ui.oidc_sign_in_page if ui.oidc_configured() else ui.token_sign_in_page
    st.navigation([st.Page(page, title="Sign in", url_path="signin")], position="hidden").run()
else:
    pages = [st.Page("pages/rate.py", title="Rate", default=True)]
    if ident.is_admin or ui.create_enabled():  # admins see it switched off, and why
        pages.append(st.Page("pages/create.py", title="Create"))
    pages.append(st.Page("pages/history.py", title="History"))
    if ident.is_admin:
        pages.append(st.Page("pages/admin.py", title="Admin"))
    nav = st.navigation(pages, position="top")
    with st.sidebar:
        st.caption(f"Signed in as **{ident.name}** ({ident.role})")
        st.button("Sign out", key="signout", on_click=ui.sign_out)
    nav.run()

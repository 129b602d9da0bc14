"""Streamlit glue shared by the pages: the cached context, the signed-in identity, image cells.

Only the engine/Context is cached across users (``st.cache_resource``); everything about a rater
lives in ``st.session_state`` (one browser session).
"""
from __future__ import annotations

import base64
import io
import logging
import time

import streamlit as st
from PIL import Image, ImageDraw

from feedback_app import logic
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.images import decode_image
from pickloop.settings import get_settings

log = logging.getLogger("pickloop.app")

IDENTITY = "identity"  # session_state key: logic.Identity of the signed-in rater
CSS = """<style>
[data-testid="stImage"] img { image-rendering: pixelated; border-radius: 4px; }
[data-testid="stMainBlockContainer"] { padding-top: 2rem; }
</style>"""


@st.cache_resource(show_spinner=False)
def _context(db_url: str, images_url: str) -> Context:
    ctx = Context()
    ctx.engine  # noqa: B018 - migrate once per process, not per rerun
    return ctx


def context() -> Context:
    """The shared Context for the current settings (one per database and image store)."""
    s = get_settings()
    return _context(s.db_url, s.images_url)


def _placeholder_png() -> bytes:
    img = Image.new("RGB", (256, 256), (200, 200, 200))
    ImageDraw.Draw(img).text((70, 120), "image unavailable", fill=(90, 90, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


PLACEHOLDER_PNG = _placeholder_png()  # the same for everyone: nothing per-user


def image_data_uri(ctx: Context, sha256: str) -> str:
    """The image inline as a ``data:`` URL: it arrives with the page, no second request to wait for."""
    return "data:image/png;base64," + base64.b64encode(image_bytes(ctx, sha256)).decode("ascii")


def image_bytes(ctx: Context, sha256: str) -> bytes:
    """The stored image, checked to decode; a placeholder (and a log line) when missing or unreadable."""
    try:
        data = ctx.images.read_bytes(sha256)
        decode_image(data, what=f"image {sha256[:12]}")
        return data
    except Exception as e:  # noqa: BLE001 - a broken image must never break the page
        log.warning("image %s cannot be shown: %s", str(sha256)[:16], e)
        return PLACEHOLDER_PNG


# ---------------------------------------------------------------- identity

def oidc_configured() -> bool:
    """Whether ``[auth]`` settings for ``st.login`` exist in the app's secrets."""
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets file at all
        return False


def oidc_email() -> str | None:
    """The email the OIDC provider vouches for in this browser session, or None when not logged in."""
    try:
        if st.user.get("is_logged_in"):
            return str(st.user.get("email") or "") or None
    except Exception:  # noqa: BLE001 - no auth configured, or no running app
        pass
    return None


def identity() -> logic.Identity | None:
    """The signed-in rater, re-checked against the OIDC session when OIDC is in use."""
    ident = st.session_state.get(IDENTITY)
    if not isinstance(ident, logic.Identity):
        return None
    if ident.kind == "oidc" and (oidc_email() or "").lower() != ident.name.lower():
        st.session_state.pop(IDENTITY, None)  # logged out of the provider: signed out here too
        return None
    return ident


def oidc_sign_in_page() -> None:
    st.title("pickloop")
    email = oidc_email()
    if email is None:
        st.button("Sign in", on_click=st.login, type="primary")
        return
    with read_session(context().engine) as s:
        ident = logic.sign_in_oidc(session=s, email=email)
    if ident is None:
        st.error(f"{email} is not on this project's list of raters. Ask an admin to add you.")
        st.button("Sign out", on_click=st.logout)
        return
    st.session_state[IDENTITY] = ident
    st.rerun()


def _token_sign_in() -> None:
    name, token = st.session_state.get("signin_name", ""), st.session_state.get("signin_token", "")
    with read_session(context().engine) as s:
        ident = logic.sign_in(session=s, name=name, token=token)
    st.session_state["signin_token"] = ""  # never keep a token around in the session
    if ident is None:
        st.session_state["signin_error"] = "Unknown rater name or wrong token."
        log.warning("failed sign-in for rater name %r", name[:64])
    else:
        st.session_state.pop("signin_error", None)
        st.session_state[IDENTITY] = ident


def token_sign_in_page() -> None:
    st.title("pickloop")
    st.caption("Sign in with the name and token from `pickloop raters add`.")
    with st.form("signin"):
        st.text_input("Rater name", key="signin_name")
        st.text_input("Token", type="password", key="signin_token")
        st.form_submit_button("Sign in", type="primary", on_click=_token_sign_in)
    if st.session_state.get("signin_error"):
        st.error(st.session_state["signin_error"])


def sign_out() -> None:
    ident = st.session_state.pop(IDENTITY, None)
    for k in [k for k in st.session_state if k not in ("signin_name",)]:
        del st.session_state[k]
    if ident is not None and ident.kind == "oidc":
        st.logout()


def require_identity() -> logic.Identity:
    """The signed-in rater; otherwise the page says so and stops (nothing below it runs)."""
    ident = identity()
    if ident is None:
        st.warning("Please sign in first.")
        st.stop()
    return ident


def require_admin() -> logic.Identity:
    ident = require_identity()
    if not ident.is_admin:
        st.error("This page is for admins only.")
        st.stop()
    return ident


def run_write(fn, *args, **kwargs):  # noqa: ANN001, ANN201
    """Run ``fn(session=..., ...)`` in one write transaction; a UserError is shown, not raised."""
    try:
        with write_session(context().engine) as s:
            return fn(*args, session=s, **kwargs)
    except UserError as e:
        st.session_state["notice"] = ("error", str(e))
        return None


def now_ms() -> int:
    return int(time.time() * 1000)

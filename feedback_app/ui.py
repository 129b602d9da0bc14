"""Streamlit glue shared by the pages: the cached context, the signed-in identity, image cells.

Only the engine/Context is cached across users (``st.cache_resource``); everything about a rater
lives in ``st.session_state`` (one browser session).
"""
from __future__ import annotations

import base64
import html
import io
import logging
import random
import time
from typing import Any, Callable

import streamlit as st
from PIL import Image, ImageDraw

from sqlalchemy.exc import OperationalError

from feedback_app import logic, sessions
from feedback_app.create import create_settings
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.images import decode_image
from pickloop.settings import get_settings

log = logging.getLogger("pickloop.app")

UNDO_SLACK_S = 3.0  # a page allows U for undo_seconds after an answer; the server allows this much more
IDENTITY = "identity"  # session_state key: logic.Identity of the signed-in rater
SESSION_ROW = "session_row"  # session_state key: id of the RaterSession behind the identity (token sign-ins)
COOKIE_VALUE = "session_cookie"  # session_state key: the signed cookie value the page keeps in the browser
CSS = """<style>
[data-testid="stImage"] img { image-rendering: pixelated; border-radius: 4px; }
[data-testid="stMainBlockContainer"] { padding-top: 3.5rem; padding-bottom: 1rem; }
</style>"""
COOKIE_JS = """
export default function ({ data }) {
  const d = data || {};
  const jar = document.cookie.split("; ");
  const secure = location.protocol === "https:" ? "; Secure" : "";
  if (d.value && !jar.includes(`${d.name}=${d.value}`)) {
    document.cookie = `${d.name}=${d.value}; Max-Age=${d.max_age}; Path=/; SameSite=Strict${secure}`;
  }
  if (d.clear && jar.some((c) => c.startsWith(`${d.name}=`))) {
    document.cookie = `${d.name}=; Max-Age=0; Path=/; SameSite=Strict${secure}`;
  }
}
"""
_cookie_component = st.components.v2.component("pickloop.session_cookie", js=COOKIE_JS)


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


THUMB_PX = 96  # side of a History thumbnail, pixels
CHOICE_WORDS = {"pick": "picked", "tie": "tie", "none": "none good", "skip": "skipped"}
HISTORY_CSS = """<style>
.pl-hist-item { margin: 0 0 0.9rem 0; }
.pl-hist-item p { margin: 0 0 0.3rem 0; }
.pl-hist-row { display: flex; gap: 6px; }
.pl-hist-row img { width: 96px; height: 96px; image-rendering: pixelated; border-radius: 4px;
                   border: 3px solid transparent; }
.pl-hist-row img.pl-won { border-color: #21a366; }
</style>"""


@st.cache_data(max_entries=20_000, show_spinner=False)
def _thumbnail_uri(images_url: str, sha256: str) -> str:
    """A small PNG of a stored image as a data: URL. Keyed by content (sha256): nothing per-user."""
    img = decode_image(image_bytes(context(), sha256), what=f"image {sha256[:12]}")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def history_html(ctx: Context, items: list) -> str:
    """One page of History as one HTML block: prompt, answer, time and the thumbnails as shown, the
    picked one framed. Every text is escaped (prompts are user input)."""
    out = [HISTORY_CSS]
    for item in items:
        thumbs = "".join(
            f'<img src="{_thumbnail_uri(ctx.settings.images_url, c.image_sha256)}" alt="candidate {c.position + 1}"'
            f'{" class=pl-won" if c.id == item.winner_id else ""}>' for c in item.candidates)
        out.append(f'<div class="pl-hist-item"><p><b>{html.escape(item.prompt)}</b> · '
                   f'{html.escape(CHOICE_WORDS.get(item.choice, item.choice))} · '
                   f'{item.created_at.astimezone():%Y-%m-%d %H:%M}</p><div class="pl-hist-row">{thumbs}</div></div>')
    return "".join(out)


def image_bytes(ctx: Context, sha256: str) -> bytes:
    """The stored image, checked to decode; a placeholder (and a log line) when missing or unreadable."""
    try:
        data = ctx.images.read_bytes(sha256)
        decode_image(data, what=f"image {sha256[:12]}")
        return data
    except Exception as e:  # noqa: BLE001 - a broken image must never break the page
        log.warning("image %s cannot be shown: %s", str(sha256)[:16], e)
        return PLACEHOLDER_PNG


def create_enabled() -> bool:
    """Whether admins left the Create page on."""
    with read_session(context().engine) as s:
        return create_settings(session=s).enabled


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


def _cookie() -> str | None:
    try:
        return st.context.cookies.get(sessions.COOKIE)
    except Exception:  # noqa: BLE001 - no running app (tests calling functions directly)
        return None


def identity() -> logic.Identity | None:
    """The signed-in rater: this browser session's, re-checked on every run against its session row
    (signed out elsewhere, expired, rater deactivated: signed out here too) or the OIDC login; else
    one resumed from a valid session cookie (a reload, a new tab)."""
    ident = st.session_state.get(IDENTITY)
    if isinstance(ident, logic.Identity):
        if ident.kind == "oidc" and (oidc_email() or "").lower() != ident.name.lower():
            st.session_state.pop(IDENTITY, None)  # logged out of the provider: signed out here too
            return None
        row = st.session_state.get(SESSION_ROW)
        if row is not None:
            with read_session(context().engine) as s:
                live = sessions.session_live(session=s, session_id=row)
            if not live:
                _forget_identity()
                return None
        return ident
    cookie = _cookie()
    if not cookie:
        return None
    with read_session(context().engine) as s:
        found = sessions.resume_session(session=s, cookie=cookie)
    if found is None or found[0].kind == "oidc":
        return None
    rater, row = found
    ident = logic.identity_of(rater)
    st.session_state.update({IDENTITY: ident, SESSION_ROW: row, COOKIE_VALUE: cookie})
    return ident


def keep_session_cookie() -> None:
    """Keep the browser's session cookie in step: written after a sign-in, removed once signed out."""
    value = st.session_state.get(COOKIE_VALUE)
    if value:
        _cookie_component(key="session_cookie", data={"name": sessions.COOKIE, "value": value,
                                                      "max_age": int(context().settings.session_hours * 3600)})
    elif _cookie():
        _cookie_component(key="session_cookie", data={"name": sessions.COOKIE, "clear": True})


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
        cookie, row = run_write(sessions.start_session, rater_id=ident.rater_id,
                                hours=context().settings.session_hours) or (None, None)
        st.session_state.update({IDENTITY: ident, SESSION_ROW: row, COOKIE_VALUE: cookie})


def token_sign_in_page() -> None:
    st.title("pickloop")
    st.caption("Sign in with the name and token from `pickloop raters add`.")
    with st.form("signin"):
        st.text_input("Rater name", key="signin_name")
        st.text_input("Token", type="password", key="signin_token")
        st.form_submit_button("Sign in", type="primary", on_click=_token_sign_in)
    if st.session_state.get("signin_error"):
        st.error(st.session_state["signin_error"])


def _forget_identity() -> None:
    for k in [k for k in st.session_state if k not in ("signin_name",)]:
        del st.session_state[k]


def sign_out() -> None:
    """Sign out everywhere: every session of this rater ends (other tabs and devices at their next
    rerun), and this browser's cookie is removed."""
    ident = st.session_state.get(IDENTITY)
    if isinstance(ident, logic.Identity):
        run_write(sessions.revoke_sessions, rater_id=ident.rater_id)
    _forget_identity()
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


def run_write(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(session=..., ...)`` in one write transaction; a UserError is shown, not raised.

    SQLite under many writers can still say "database is locked" after its busy timeout (a writer
    that held the lock long): the write is tried again until the busy timeout has passed once more,
    then the page shows one line and nothing is raised to the rater.
    """
    deadline = time.monotonic() + context().settings.sqlite_busy_timeout_ms / 1000
    while True:
        try:
            with write_session(context().engine) as s:
                return fn(*args, session=s, **kwargs)
        except UserError as e:
            st.session_state["notice"] = ("error", str(e))
            return None
        except OperationalError as e:
            if not is_locked(e) or time.monotonic() > deadline:
                log.warning("write failed: %s", str(e).splitlines()[0][:200])
                st.session_state["notice"] = ("error", "The database is busy and this was not saved; "
                                                       "try again in a moment.")
                return None
            time.sleep(0.05 + random.random() * 0.1)


def is_locked(e: Exception) -> bool:
    text = str(getattr(e, "orig", None) or e).lower()
    return "locked" in text or "busy" in text


def now_ms() -> int:
    return int(time.time() * 1000)

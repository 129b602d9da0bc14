"""Sign-ins that survive a reload or a new tab: a signed, expiring cookie the server can revoke.

Signing in with a token makes a ``RaterSession`` row and a cookie value
``<session id>.<expiry, unix s>.<HMAC-SHA256>``. The session id is 32 random bytes; the row stores only
its sha256. On a new page load the app checks, in this order: the signature (with a key kept in the
store, so every app process shares it), the expiry, and the row (not revoked, not expired, rater still
active). Signing out revokes every session of the rater, so every tab and device is signed out at its
next rerun. The token itself never leaves the sign-in form: not in the cookie, never in a URL.

No Streamlit here: ``ui.py`` reads the cookie (``st.context.cookies``) and writes it from the page
(a small component), tests call these functions directly.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import update
from sqlmodel import Session, select

from pickloop.schema import AppText, Rater, RaterSession, utcnow

COOKIE = "pickloop_session"
SECRET_NAME = "session_signing_key"


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def signing_key(*, session: Session) -> bytes:
    """The key that signs session cookies, made on first use and kept in the store (call in a write session)."""
    row = session.get(AppText, SECRET_NAME)
    if row is None:
        row = AppText(name=SECRET_NAME, text=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return bytes.fromhex(row.text)


def _sign(key: bytes, sid: str, expires: int) -> str:
    return hmac.new(key, f"{sid}.{expires}".encode(), hashlib.sha256).hexdigest()


def _sha(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def start_session(*, session: Session, rater_id: int, hours: float,
                  now: datetime | None = None) -> tuple[str, int]:
    """A new session for the rater: (cookie value, session row id). Call in a write session."""
    now = now or utcnow()
    expires_at = now + timedelta(hours=hours)
    sid = secrets.token_urlsafe(32)
    row = RaterSession(sid_sha256=_sha(sid), rater_id=rater_id, created_at=now, expires_at=expires_at)
    session.add(row)
    session.flush()
    expires = int(expires_at.timestamp())
    return f"{sid}.{expires}.{_sign(signing_key(session=session), sid, expires)}", row.id


def resume_session(*, session: Session, cookie: str | None, now: datetime | None = None) -> tuple[Rater, int] | None:
    """The rater and session row id for a cookie value, or None when it is forged, expired or revoked."""
    if not cookie or len(cookie) > 256 or cookie.count(".") != 2:
        return None
    sid, expires_s, sig = cookie.split(".")
    key_row = session.get(AppText, SECRET_NAME)
    if key_row is None or not expires_s.isdigit():
        return None
    if not hmac.compare_digest(sig, _sign(bytes.fromhex(key_row.text), sid, int(expires_s))):
        return None
    now = now or utcnow()
    if int(expires_s) <= now.timestamp():
        return None
    row = session.exec(select(RaterSession).where(RaterSession.sid_sha256 == _sha(sid))).first()
    if row is None or not session_live(session=session, session_id=row.id, now=now):
        return None
    return session.get(Rater, row.rater_id), row.id


def session_live(*, session: Session, session_id: int, now: datetime | None = None) -> bool:
    """Whether the session row is neither revoked nor expired, and its rater still active."""
    row = session.get(RaterSession, session_id)
    if row is None or row.revoked_at is not None or _aware(row.expires_at) <= (now or utcnow()):
        return False
    rater = session.get(Rater, row.rater_id)
    return rater is not None and rater.active


def revoke_sessions(*, session: Session, rater_id: int, now: datetime | None = None) -> int:
    """End every live session of the rater (sign out everywhere); returns how many ended."""
    res = session.execute(update(RaterSession).where(RaterSession.rater_id == rater_id,
                                                     RaterSession.revoked_at.is_(None))
                          .values(revoked_at=now or utcnow()))
    return res.rowcount or 0

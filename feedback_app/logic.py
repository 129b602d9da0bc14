"""What the rating app does, as plain functions over a store session (no Streamlit here).

Pages call these; tests call them directly. Every function takes the caller's session, so one
answer (or one hand-out of a set) is one transaction. Who is rating is always an ``Identity``
made by ``sign_in``/``sign_in_oidc``, never a name typed into a widget.

Statistics for the admin page (agreement, win rates, queue counts, export) live in
``feedback_app.stats`` and are re-exported here.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from sqlalchemy import and_, exists, func, or_, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, select

from pickloop.audiences import raters_served, serving_version_id
from pickloop.errors import UserError
from pickloop.schema import AppText, Assignment, Candidate, Comparison, Judgement, Prompt, Rater, utcnow
from pickloop.pace import pace, wait_message
from pickloop.settings import Settings
from pickloop.store import authenticate, candidates_of, record_judgement, undo_judgement

# A set handed to a rater who then leaves is handed to someone else after this long.
ASSIGNMENT_TTL = timedelta(minutes=15)


@dataclass(frozen=True)
class Identity:
    """The signed-in rater. Built only from a verified token or OIDC identity."""

    rater_id: int
    name: str
    role: str
    kind: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True)
class CandidateView:
    id: int
    image_sha256: str
    position: int  # 0-based place on the page, left to right; the hotkey is position + 1


@dataclass(frozen=True)
class SetView:
    """A set as one rater sees it: candidates already in this rater's shuffled order."""

    comparison_id: int
    key: str
    prompt: str
    candidates: tuple[CandidateView, ...]

    @property
    def shown_order(self) -> list[int]:
        return [c.id for c in self.candidates]


# ---------------------------------------------------------------- sign-in

def identity_of(rater: Rater) -> Identity:
    """The identity of a rater row already verified (by token, OIDC or a live session)."""
    return Identity(rater_id=rater.id, name=rater.name, role=rater.role, kind=rater.kind)


def sign_in(*, session: Session, name: str, token: str) -> Identity | None:
    """The identity for a rater's name and token, or None (a wrong token writes nothing)."""
    rater = authenticate(session=session, name=name or "", token=token or "")
    if rater is None or rater.kind == "oidc":  # OIDC raters have no usable token
        return None
    return identity_of(rater)


def sign_in_oidc(*, session: Session, email: str | None) -> Identity | None:
    """The identity for an OIDC-verified email on the allow list (an active rater of kind ``oidc``)."""
    email = (email or "").strip()
    if not email:
        return None
    rater = session.exec(select(Rater).where(Rater.kind == "oidc", Rater.active == True,  # noqa: E712
                                             func.lower(Rater.name) == email.lower())).first()
    return identity_of(rater) if rater is not None else None


# ---------------------------------------------------------------- handing out sets

def shuffled_order(candidate_ids: list[int], *, set_key: str, rater_id: int) -> list[int]:
    """The candidates in the order one rater sees them: shuffled, but the same on every reload."""
    seed = int(hashlib.sha256(f"order:{set_key}:{rater_id}".encode()).hexdigest()[:16], 16)
    ids = sorted(candidate_ids)
    random.Random(seed).shuffle(ids)
    return ids


def set_view(*, session: Session, comparison_id: int, rater_id: int) -> SetView | None:
    """The set as ``rater_id`` sees it, or None if it has fewer than two candidates."""
    comp = session.get(Comparison, comparison_id)
    if comp is None:
        return None
    cands = {c.id: c for c in candidates_of(session=session, comparison_id=comparison_id)}
    if len(cands) < 2:
        return None
    prompt = session.get(Prompt, comp.prompt_id)
    order = shuffled_order(list(cands), set_key=comp.key, rater_id=rater_id)
    return SetView(comparison_id=comp.id, key=comp.key, prompt=prompt.text if prompt else "",
                   candidates=tuple(CandidateView(cid, cands[cid].image_sha256, i) for i, cid in enumerate(order)))


def _answered_by(rater_id: int):  # noqa: ANN202
    return select(Judgement.comparison_id).where(Judgement.rater_id == rater_id)


def _prompt_shown():  # noqa: ANN202
    """The set's prompt is not hidden (an admin hid it: its sets are handed out no more)."""
    return exists().where(Prompt.id == Comparison.prompt_id, Prompt.active == True)  # noqa: E712


def _drawn_by(version_id: int | None):  # noqa: ANN202
    """The set was drawn by ``version_id``, the version that serves the rater (None: no version is promoted
    at all, and any set goes). A version that stops serving leaves its ready sets in the store, unanswered
    and handed out no more (they come back if it serves again)."""
    return true() if version_id is None else Comparison.model_version_id == version_id


def _pending_for(session: Session, rater_id: int, skip: list[int], version_id: int | None) -> Comparison | None:
    """The oldest ready set already handed to this rater and not yet answered (reloads, two tabs)."""
    q = (select(Comparison).join(Assignment, Assignment.comparison_id == Comparison.id)
         .where(Assignment.rater_id == rater_id, Comparison.status == "ready", _prompt_shown(),
                _drawn_by(version_id), Comparison.id.not_in(_answered_by(rater_id)),
                Comparison.id.not_in(skip or [-1]))
         .order_by(Assignment.id))
    return session.exec(q).first()


def _taken_count(comparison_id_col, now: datetime):  # noqa: ANN001, ANN202
    """Raters holding a set: those who answered it, and those handed it less than ASSIGNMENT_TTL ago."""
    a, j = aliased(Assignment), aliased(Judgement)
    answered = exists().where(j.comparison_id == a.comparison_id, j.rater_id == a.rater_id)
    return (select(func.count()).select_from(a)
            .where(a.comparison_id == comparison_id_col, or_(a.assigned_at > now - ASSIGNMENT_TTL, answered))
            .scalar_subquery())


def _claimable(rater_id: int, now: datetime, refused: list[int], version_id: int | None):  # noqa: ANN202
    """Ready sets drawn by the rater's version (``_drawn_by``), of prompts not hidden, that still want a
    rater and that this rater neither holds nor answered; the highest ``priority`` first (active learning:
    the sets the reward model can least tell apart; sets without one last), then partly rated overlap
    sets, then the oldest."""
    mine = exists().where(Assignment.comparison_id == Comparison.id, Assignment.rater_id == rater_id)
    taken = _taken_count(Comparison.id, now)
    return (select(Comparison)
            .where(Comparison.status == "ready", taken < Comparison.raters_wanted, ~mine, _prompt_shown(),
                   _drawn_by(version_id), Comparison.id.not_in(_answered_by(rater_id)),
                   Comparison.id.not_in(refused or [-1]))
            .order_by(Comparison.priority.desc().nulls_last(), taken.desc(), Comparison.id).limit(1))


def _claim(session: Session, rater_id: int, settings: Settings, skip: list[int],
           version_id: int | None) -> Comparison | None:
    """Hand this rater a ready set that still wants a rater (an Assignment row)."""
    now = utcnow()
    refused: list[int] = list(skip)
    for _ in range(5):
        # PostgreSQL: concurrent raters skip each other's locked row instead of waiting for it.
        comp = session.exec(_claimable(rater_id, now, refused, version_id).with_for_update(skip_locked=True)).first()
        if comp is None:
            return None
        # Re-count now that the row is locked: the first count may predate another rater's commit.
        n = session.exec(select(_taken_count(comp.id, now))).one()
        if n >= comp.raters_wanted:
            refused.append(comp.id)
            continue
        _drop_expired_assignments(session, comp.id, now)
        session.add(Assignment(comparison_id=comp.id, rater_id=rater_id, assigned_at=now))
        session.flush()
        return comp
    return None


def _drop_expired_assignments(session: Session, comparison_id: int, now: datetime) -> None:
    """Forget raters who were handed this set long ago and never answered, so it is not rated twice."""
    answered = exists().where(Judgement.comparison_id == Assignment.comparison_id,
                              Judgement.rater_id == Assignment.rater_id)
    for a in session.exec(select(Assignment).where(Assignment.comparison_id == comparison_id,
                                                   Assignment.assigned_at <= now - ASSIGNMENT_TTL, ~answered)):
        session.delete(a)
    session.flush()


def has_set_for(*, session: Session, rater_id: int) -> bool:
    """Whether ``next_set_for`` would find a set: a cheap read, for polling an empty queue."""
    version_id = serving_version_id(session=session, rater_id=rater_id)
    return (_pending_for(session, rater_id, [], version_id) is not None
            or session.exec(_claimable(rater_id, utcnow(), [], version_id)).first() is not None)


def next_set_for(*, session: Session, rater_id: int, settings: Settings,
                 skip: Sequence[int] = ()) -> SetView | None:
    """The set this rater should see now, or None when the queue has nothing for them.

    A set already handed to this rater and not answered comes first (a reload or a second tab
    shows the same set); otherwise a new ready set is handed out (an ``Assignment`` row), so two
    raters never get one set unless it is an overlap set (``raters_wanted`` >= 2, which the
    generator sets for a share ``settings.overlap_share`` of sets). Only sets drawn by the version that
    serves the rater (``pickloop.audiences.serving_version_id``: their own, their groups', else the
    shared one) are handed to them, so an overlap set's two raters are served by one version.
    ``skip`` lists set ids not to return (the page passes the set on screen to get the one after it
    ready in advance). Call inside a write session: it may add an assignment.
    """
    skip = list(skip)
    version_id = serving_version_id(session=session, rater_id=rater_id)
    for _ in range(3):
        comp = (_pending_for(session, rater_id, skip, version_id)
                or _claim(session, rater_id, settings, skip, version_id))
        if comp is None:
            return None
        view = set_view(session=session, comparison_id=comp.id, rater_id=rater_id)
        if view is not None:
            return view
        comp.status = "failed"  # fewer than two candidates: never rateable, keep it out of the queue
        session.add(comp)
        session.flush()
    return None


def wait_line(*, session: Session, rater_id: int) -> str:
    """Why this rater has no set, and for how long (``pickloop.pace.wait_message``), from the pace of the
    version that serves them and the raters it serves."""
    version_id = serving_version_id(session=session, rater_id=rater_id)
    raters = None if version_id is None else raters_served(session=session).get(version_id, {rater_id})
    return wait_message(pace(session=session, version_id=version_id, rater_ids=raters))


# ---------------------------------------------------------------- answers

def idempotency_key(set_key: str, rater_id: int) -> str:
    """One key per (set, rater): any replay of an answer to this set by this rater is the same write."""
    return f"app:{set_key}:{rater_id}"


def submit_choice(*, session: Session, identity: Identity, view: SetView, choice: str,
                  winner_id: int | None = None, time_ms: int | None = None) -> tuple[Judgement, bool]:
    """Record an answer to ``view``: pick (``winner_id``), tie, none (none good) or skip.

    Returns (judgement, created); reruns, double clicks, two tabs and reconnects return the first
    answer with created=False.
    """
    if choice == "pick" and winner_id not in view.shown_order:
        raise UserError("a pick must name one of the candidates shown")
    if time_ms is not None:
        time_ms = max(0, int(time_ms))
    return record_judgement(session=session, comparison_id=view.comparison_id, rater_id=identity.rater_id,
                            choice=choice, winner_id=winner_id if choice == "pick" else None,
                            shown_order=view.shown_order, idempotency_key=idempotency_key(view.key,
                                                                                          identity.rater_id),
                            time_ms=time_ms)


def undo_answer(*, session: Session, identity: Identity, comparison_id: int, within_s: float) -> bool:
    """Take back this rater's answer to one set (the answer the rater last gave, named by the page),
    if younger than ``within_s`` seconds. True when there was one and it is gone; False when the set
    has no answer from this rater (it never reached the server: nothing to take back) or it is too old.
    """
    row = session.exec(select(Judgement).where(Judgement.comparison_id == comparison_id,
                                               Judgement.rater_id == identity.rater_id)).first()
    if row is None or not undo_judgement(session=session, judgement_id=row.id, rater_id=identity.rater_id,
                                         within_s=within_s):
        return False
    for a in session.exec(select(Assignment).where(Assignment.comparison_id == comparison_id,
                                                   Assignment.rater_id == identity.rater_id)):
        a.assigned_at = utcnow()  # the set is this rater's again; keep it from expiring meanwhile
        session.add(a)
    session.flush()
    return True


def answered(*, session: Session, rater_id: int, comparison_id: int) -> bool:
    return session.exec(select(Judgement.id).where(Judgement.comparison_id == comparison_id,
                                                   Judgement.rater_id == rater_id)).first() is not None


def start_of_today(now: datetime | None = None) -> datetime:
    """Local midnight of today, as a UTC datetime."""
    local = (now or datetime.now(timezone.utc)).astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(timezone.utc)


def labels_today(*, session: Session, rater_id: int, now: datetime | None = None) -> int:
    """Answers this rater gave since local midnight; skips are not labels and do not count."""
    return session.exec(select(func.count()).select_from(Judgement)
                        .where(Judgement.rater_id == rater_id, Judgement.choice != "skip",
                               Judgement.created_at >= start_of_today(now))).one()


@dataclass(frozen=True)
class HistoryItem:
    judgement_id: int
    created_at: datetime
    prompt: str
    choice: str
    winner_id: int | None
    candidates: tuple[CandidateView, ...]  # in the order the rater saw them


def history(*, session: Session, rater_id: int, limit: int = 60, offset: int = 0) -> list[HistoryItem]:
    """This rater's answers, newest first, from ``offset`` on, at most ``limit``; each with its
    candidates as shown. Three queries whatever the page size (judgements, then all their candidates)."""
    q = (select(Judgement, Prompt.text).join(Comparison, Judgement.comparison_id == Comparison.id)
         .join(Prompt, and_(Comparison.prompt_id == Prompt.id))
         .where(Judgement.rater_id == rater_id).order_by(Judgement.id.desc()).offset(offset).limit(limit))
    rows = list(session.exec(q))
    by_set: dict[int, dict[int, str]] = {}
    ids = [j.comparison_id for j, _ in rows]
    for c in session.exec(select(Candidate).where(Candidate.comparison_id.in_(ids or [-1]))):
        by_set.setdefault(c.comparison_id, {})[c.id] = c.image_sha256
    out = []
    for j, text in rows:
        cands = by_set.get(j.comparison_id, {})
        order = [cid for cid in j.shown_order if cid in cands] or sorted(cands)
        views = tuple(CandidateView(cid, cands[cid], i) for i, cid in enumerate(order))
        out.append(HistoryItem(j.id, j.created_at, text, j.choice, j.winner_id, views))
    return out


def history_count(*, session: Session, rater_id: int) -> int:
    return session.exec(select(func.count()).select_from(Judgement).where(Judgement.rater_id == rater_id)).one()


# ---------------------------------------------------------------- the rating guide

GUIDE_NAME = "rating_guide"
DEFAULT_GUIDE = """Pick the image that shows the prompt best. Judge first whether it shows what the prompt asks \
(every colour, shape, size and place it names), then how good it looks.

Pick (click an image, or press 1-4): the one best image. Near-identical images: pick the one with the \
fewest flaws.
Tie (T): two or more are equally best and you cannot choose.
None good (N): not one of them shows the prompt acceptably.
Skip (S): you cannot judge this set (the prompt is unclear to you, an image is broken).
Undo (U): take back your last answer, for a few seconds after it.
Enlarge (Shift+1-4, or the corner of an image): a closer look; Esc closes it."""


def rating_guide(*, session: Session) -> str:
    """The rating guide admins wrote, or the default one."""
    row = session.get(AppText, GUIDE_NAME)
    return row.text if row is not None and row.text.strip() else DEFAULT_GUIDE


def save_rating_guide(*, session: Session, text: str) -> None:
    """Replace the rating guide (admins); an empty text brings the default back."""
    text = (text or "").strip()
    if len(text) > 20000:
        raise UserError("the rating guide is limited to 20,000 characters")
    row = session.get(AppText, GUIDE_NAME) or AppText(name=GUIDE_NAME, text="")
    row.text, row.updated_at = text, utcnow()
    session.add(row)
    session.flush()


def guide_seen(*, session: Session, rater_id: int) -> bool:
    rater = session.get(Rater, rater_id)
    return rater is None or rater.guide_seen_at is not None


def mark_guide_seen(*, session: Session, rater_id: int) -> None:
    rater = session.get(Rater, rater_id)
    if rater is not None and rater.guide_seen_at is None:
        rater.guide_seen_at = utcnow()
        session.add(rater)
        session.flush()


from feedback_app.stats import (  # noqa: E402,F401  (re-exported: the admin page's functions)
    AgreementReport, VersionWinRate, add_prompts_from_text, agreement, allow_oidc_rater, export_formats,
    export_labels, queue_counts, win_rates_by_version,
)

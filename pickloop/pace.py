"""How fast sets are answered and drawn: the size of the ready queue, and the rating page's estimate.

The generator keeps as many sets open as the raters online will answer in the next
``queue_lead_seconds`` (plus what their browsers hold ahead); the rating page, when a rater has no
set, says how long the next one should take. Both read the same figures from the store, so they
hold across processes and machines. Both are read per audience: the sets one version draws and the
raters it serves (``pickloop.audiences.raters_served``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Collection

from sqlalchemy import and_, exists, func, or_
from sqlmodel import Session, select

from pickloop.schema import Assignment, Candidate, Comparison, Judgement, Prompt, utcnow

ONLINE_S = 120.0  # a rater who answered or was handed a set this recently (seconds) is online
RATE_WINDOW_S = 60.0  # answer and draw rates are measured over this window, seconds


@dataclass(frozen=True)
class Pace:
    raters_online: int
    answers_per_s: float  # all raters together, over the last RATE_WINDOW_S
    sets_per_s: float  # sets the generator finished, over the last RATE_WINDOW_S
    open_sets: int  # being drawn, or ready and answered by nobody (held in browsers included)
    ready_sets: int  # ready and answered by nobody
    drawing: int  # being drawn now
    since_last_set_s: float | None  # seconds since the generator last finished a set


def _pool(q, pool: str | None):  # noqa: ANN001, ANN202
    if pool is None:
        return q
    return q.join(Prompt, Comparison.prompt_id == Prompt.id).where(Prompt.pool == pool)


def _rate(count: int, first: datetime | None, now: datetime) -> float:
    """Events per second over the window, or over the time since the first one when that is shorter
    (a rater who started 10 s ago at one answer a second answers at one a second, not 1/6)."""
    if count == 0 or first is None:
        return 0.0
    span = max(10.0, min(RATE_WINDOW_S, (now - _aware(first)).total_seconds()))
    return count / span


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)


def pace(*, session: Session, pool: str | None = None, now: datetime | None = None, version_id: int | None = None,
         rater_ids: Collection[int] | None = None) -> Pace:
    """The figures above, at ``now`` (default: the current time). ``version_id``: only the sets that
    version draws (open, ready, drawing, drawn); ``rater_ids``: only these raters (online, answers): one
    audience's queue (``generator.queue``)."""
    now = now or utcnow()
    window, online = now - timedelta(seconds=RATE_WINDOW_S), now - timedelta(seconds=ONLINE_S)
    who_j, who_a = [Judgement.created_at > online], [Assignment.assigned_at > online]
    answers = [Judgement.created_at > window]
    if rater_ids is not None:
        ids = sorted(rater_ids) or [-1]
        who_j.append(Judgement.rater_id.in_(ids))
        who_a.append(Assignment.rater_id.in_(ids))
        answers.append(Judgement.rater_id.in_(ids))
    raters = session.exec(select(Judgement.rater_id).where(*who_j)
                          .union(select(Assignment.rater_id).where(*who_a))).all()
    n_ans, first_ans = session.exec(select(func.count(), func.min(Judgement.created_at)).where(*answers)).one()
    drawn = [] if version_id is None else [Candidate.model_version_id == version_id]
    finished = (select(Candidate.comparison_id, func.max(Candidate.created_at).label("at")).where(*drawn)
                .group_by(Candidate.comparison_id).subquery())
    n_sets, first_set = session.exec(select(func.count(), func.min(finished.c.at))
                                     .where(finished.c.at > window)).one()
    last_set = session.exec(select(func.max(Candidate.created_at)).where(*drawn)).one()
    answered = exists().where(Judgement.comparison_id == Comparison.id)
    of_version = [] if version_id is None else [Comparison.model_version_id == version_id]
    counts = dict(session.exec(_pool(select(Comparison.status, func.count()), pool)
                               .where(or_(Comparison.status == "drawing",
                                          and_(Comparison.status == "ready", ~answered)), *of_version)
                               .group_by(Comparison.status)).all())
    ready, drawing = int(counts.get("ready", 0)), int(counts.get("drawing", 0))
    return Pace(raters_online=len(set(raters)), answers_per_s=_rate(int(n_ans), first_ans, now),
                sets_per_s=_rate(int(n_sets), first_set, now), open_sets=ready + drawing, ready_sets=ready,
                drawing=drawing,
                since_last_set_s=None if last_set is None else (now - _aware(last_set)).total_seconds())


def open_sets_wanted(p: Pace, settings) -> int:  # noqa: ANN001
    """Open sets to keep: what the raters online answer in ``queue_lead_seconds``, plus what each
    one's browser holds (the set on screen and ``app_sets_ahead``), within the configured bounds."""
    want = math.ceil(p.answers_per_s * settings.queue_lead_seconds) + p.raters_online * (settings.app_sets_ahead + 1)
    return max(settings.queue_min_sets, min(settings.queue_max_sets, want))


def sets_wanted(*, session: Session, settings, pool: str | None = None, now: datetime | None = None,  # noqa: ANN001
                version_id: int | None = None, rater_ids: Collection[int] | None = None) -> int:
    """How many more sets the generator should draw now (0: the queue is big enough); with ``version_id``
    and ``rater_ids``, for one audience's version and the raters it serves."""
    p = pace(session=session, pool=pool, now=now, version_id=version_id, rater_ids=rater_ids)
    return max(0, open_sets_wanted(p, settings) - p.open_sets)


def ready_unanswered(*, session: Session, pool: str | None = None, version_id: int | None = None) -> int:
    return pace(session=session, pool=pool, version_id=version_id).ready_sets


def wait_message(p: Pace) -> str:
    """One line for a rater who has no set to answer: why, and about how long the next one takes."""
    if p.sets_per_s > 0:
        every = 1.0 / p.sets_per_s
        eta = max(1.0, every - (p.since_last_set_s or 0.0))
        line = (f"The model draws a set about every {every:.0f} s" if every >= 1.5 else
                f"The model draws about {p.sets_per_s:.1f} sets a second")
        if p.answers_per_s > p.sets_per_s:
            line += f" and raters answer about every {1 / p.answers_per_s:.1f} s, so it has fallen behind"
        return f"{line}. The next set should be here in about {eta:.0f} s."
    if p.drawing:
        return "The model is drawing the first sets; the first usually takes a few seconds."
    return ("No sets are being drawn. Is the generator running? (`pickloop app` starts one; "
            "or run `pickloop generate --watch`.)")

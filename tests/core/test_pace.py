"""The ready queue's size follows the raters online and their answer rate; the wait line is honest."""
from __future__ import annotations

import re
from datetime import timedelta

from sqlmodel import select

from pickloop.db import read_session, write_session
from pickloop.pace import open_sets_wanted, pace, sets_wanted, wait_message
from pickloop.schema import Candidate, utcnow
from pickloop.store import candidates_of, record_judgement
from tests.feedback_app.helpers import make_rater, make_sets


def _answer(ctx, rater_id: int, comparison_ids: list[int], times) -> None:
    with write_session(ctx.engine) as s:
        for cid, at in zip(comparison_ids, times):
            ids = [c.id for c in candidates_of(session=s, comparison_id=cid)]
            j, _ = record_judgement(session=s, comparison_id=cid, rater_id=rater_id, choice="pick",
                                    winner_id=ids[0], shown_order=ids, idempotency_key=f"k{cid}")
            j.created_at = at  # the clock is set, not slept
            s.add(j)


def test_queue_size_follows_raters_online_and_their_answer_rate(ctx):
    ids = make_sets(ctx, 40)
    alice, _ = make_rater(ctx, "alice")
    make_rater(ctx, "bob")  # signed up, never rating: not online
    now = utcnow()
    _answer(ctx, alice.rater_id, ids[:30], [now - timedelta(seconds=30 - i) for i in range(30)])
    with read_session(ctx.engine) as s:
        p = pace(session=s, now=now)
        assert p.raters_online == 1 and abs(p.answers_per_s - 1.0) < 0.05 and p.open_sets == 10
        # one answer a second for 30 s of lead, plus the 4 sets alice's browser holds
        assert open_sets_wanted(p, ctx.settings) == 34
        assert sets_wanted(session=s, settings=ctx.settings, now=now) == 24
        # an hour later nobody is online: only the floor of queue_min_sets, which 10 open sets exceed
        later = now + timedelta(hours=1)
        quiet = pace(session=s, now=later)
        assert quiet.raters_online == 0 and quiet.answers_per_s == 0
        assert sets_wanted(session=s, settings=ctx.settings, now=later) == 0


def test_wait_line_gives_an_estimate_when_generation_is_behind(ctx):
    now = utcnow()
    with read_session(ctx.engine) as s:
        assert "No sets are being drawn" in wait_message(pace(session=s, now=now))
    ids = make_sets(ctx, 12)
    with write_session(ctx.engine) as s:  # the generator finished one set every 6 s over the last minute
        for k, cid in enumerate(ids):
            for c in s.exec(select(Candidate).where(Candidate.comparison_id == cid)):
                c.created_at = now - timedelta(seconds=66 - 6 * k)
                s.add(c)
    alice, _ = make_rater(ctx, "alice")
    _answer(ctx, alice.rater_id, ids[:10], [now - timedelta(seconds=10 - i) for i in range(10)])
    with read_session(ctx.engine) as s:
        p = pace(session=s, now=now)
        line = wait_message(p)
    assert 0.15 < p.sets_per_s < 0.2 and p.answers_per_s > p.sets_per_s and p.ready_sets == 2
    assert re.search(r"every [56] s .*fallen behind.* in about [56] s", line), line

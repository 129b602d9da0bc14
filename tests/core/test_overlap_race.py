"""Two raters answer each of 40 overlap sets at the same moment: every set ends done, and the counts agree.

Each transaction locks the set's row before counting its answers, so the second count sees the first
answer (on PostgreSQL READ COMMITTED a plain count sees only its own transaction's answer).
"""
from __future__ import annotations

import threading

from sqlmodel import func, select

from feedback_app.stats import queue_counts as admin_counts
from generator.queue import queue_counts
from pickloop.db import make_engine, read_session, upgrade, write_session
from pickloop.schema import Comparison, Judgement
from pickloop.store import add_rater, candidates_of, record_judgement, undo_judgement
from tests.core.helpers import make_ready_set

SETS = 40


def _answer_all(engine, rater_id: int, sets: list[tuple[int, list[int]]], start: threading.Barrier,
                errors: list) -> None:
    try:
        for comp_id, ids in sets:
            start.wait(timeout=60)  # both raters answer this set together
            with write_session(engine) as s:
                record_judgement(session=s, comparison_id=comp_id, rater_id=rater_id, choice="pick",
                                 winner_id=ids[rater_id % 2], shown_order=ids, idempotency_key=f"{comp_id}:{rater_id}")
    except Exception as e:  # noqa: BLE001 - report to the test, never hang the other thread
        errors.append(repr(e))
        start.abort()


def test_two_raters_answering_overlap_sets_at_once(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with write_session(engine) as s:
        raters = [add_rater(session=s, name=f"r{i}")[0].id for i in range(2)]
        sets = []
        for i in range(SETS):
            comp = make_ready_set(s, None, prompt=f"p{i % 5}", raters_wanted=2)
            sets.append((comp.id, [c.id for c in candidates_of(session=s, comparison_id=comp.id)]))
    start, errors = threading.Barrier(2), []
    threads = [threading.Thread(target=_answer_all, args=(engine, r, sets, start, errors)) for r in raters]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    with read_session(engine) as s:
        statuses = {c.id: c.status for c in s.exec(select(Comparison))}
        answers = {cid: n for cid, n in s.exec(select(Judgement.comparison_id, func.count())
                                               .group_by(Judgement.comparison_id))}
        assert answers == {comp_id: 2 for comp_id, _ in sets}
        assert statuses == {comp_id: "done" for comp_id, _ in sets}
        assert queue_counts(session=s) == {"drawing": 0, "ready": 0, "done": SETS, "failed": 0}
        counts = admin_counts(session=s)
        assert (counts["done"], counts["ready"], counts["ready_unanswered"], counts["judgements"]) == \
            (SETS, 0, 0, 2 * SETS)
    # an undo puts the set back in the queue for the rater who took the answer back
    comp_id, _ = sets[0]
    with write_session(engine) as s:
        j = s.exec(select(Judgement).where(Judgement.comparison_id == comp_id,
                                           Judgement.rater_id == raters[0])).one()
        assert undo_judgement(session=s, judgement_id=j.id, rater_id=raters[0], within_s=3600)
    with read_session(engine) as s:
        assert s.get(Comparison, comp_id).status == "ready"
    engine.dispose()

"""8 processes each write 250 judgements and replay every one: exactly 2,000 rows, no errors."""
from __future__ import annotations

import multiprocessing as mp

from sqlmodel import func, select

from pickloop.db import make_engine, read_session, upgrade, write_session
from pickloop.schema import Judgement
from pickloop.store import add_rater, candidates_of, record_judgement
from tests.core.helpers import make_ready_set

WORKERS, PER_WORKER = 8, 250


def _rate_all(url: str, rater_id: int, sets: list[tuple[int, list[int]]], out) -> None:
    try:
        engine = make_engine(url)
        created = 0
        for replay in (False, True):
            for comp_id, ids in sets:
                with write_session(engine) as s:
                    _, new = record_judgement(
                        session=s, comparison_id=comp_id, rater_id=rater_id, choice="pick",
                        winner_id=ids[(comp_id + rater_id) % 2], shown_order=ids,
                        idempotency_key=f"{comp_id}:{rater_id}")
                created += new
                assert not (replay and new), "a replay wrote a row"
        out.put(("ok", created))
    except Exception as e:  # noqa: BLE001 - report, don't hang the parent
        out.put(("error", repr(e)))


def test_parallel_writers_with_replays(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    with write_session(engine) as s:
        raters = [add_rater(session=s, name=f"w{i}")[0].id for i in range(WORKERS)]
        sets = []
        for i in range(PER_WORKER):
            comp = make_ready_set(s, None, prompt=f"p{i % 20}", raters_wanted=WORKERS)
            sets.append((comp.id, [c.id for c in candidates_of(session=s, comparison_id=comp.id)]))
    engine.dispose()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rate_all, args=(db_url, r, sets, out)) for r in raters]
    for p in procs:
        p.start()
    results = [out.get(timeout=900) for _ in procs]
    for p in procs:
        p.join(60)
    assert [r[0] for r in results] == ["ok"] * WORKERS, results
    assert sum(r[1] for r in results) == WORKERS * PER_WORKER
    with read_session(engine) as s:
        assert s.exec(select(func.count()).select_from(Judgement)).one() == WORKERS * PER_WORKER
    engine.dispose()

"""The app's logic, called directly: handing out sets, answers, undo, sign-in, admin figures."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlmodel import select

from feedback_app import logic
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Assignment, Comparison, Judgement, ModelVersion
from tests.feedback_app.helpers import count, judgements, make_rater, make_sets


def next_for(ctx, ident, **kw):
    with write_session(ctx.engine) as s:
        return logic.next_set_for(session=s, rater_id=ident.rater_id, settings=ctx.settings, **kw)


def answer(ctx, ident, view, choice="pick", pos=0):
    with write_session(ctx.engine) as s:
        winner = view.candidates[pos].id if choice == "pick" else None
        row, created = logic.submit_choice(session=s, identity=ident, view=view, choice=choice, winner_id=winner)
        return row.id, created


def test_two_raters_get_different_sets_and_a_reload_shows_the_same(actx):
    a, _ = make_rater(actx, "a")
    b, _ = make_rater(actx, "b")
    make_sets(actx, 3)
    va, vb = next_for(actx, a), next_for(actx, b)
    assert va.key != vb.key
    assert next_for(actx, a).key == va.key  # reload / second tab: the same set, the same order
    assert next_for(actx, a).shown_order == va.shown_order
    answer(actx, a, va)
    va2 = next_for(actx, a)
    assert va2.key not in (va.key, vb.key)
    assert next_for(actx, a).key == va2.key
    assert next_for(actx, b).key == vb.key
    answer(actx, a, va2)
    assert next_for(actx, a) is None  # the third set is b's, the first answered: nothing left for a
    assert count(actx, Assignment) == 3


def test_overlap_sets_go_to_two_raters(actx):
    a, _ = make_rater(actx, "a")
    b, _ = make_rater(actx, "b")
    c, _ = make_rater(actx, "c")
    make_sets(actx, 1, raters_wanted=2)
    va, vb = next_for(actx, a), next_for(actx, b)
    assert va.key == vb.key and next_for(actx, c) is None
    answer(actx, a, va, pos=0)
    answer(actx, b, vb, pos=0)
    with read_session(actx.engine) as s:
        assert s.exec(select(Comparison)).one().status == "done"
        report = logic.agreement(session=s)
    same = va.candidates[0].id == vb.candidates[0].id
    assert report.sets == 1 and report.pairs == 1 and report.agreed == int(same)


def test_order_is_shuffled_per_rater_and_recorded(ctx, alice):
    make_sets(ctx, 30)
    orders = set()
    for _ in range(30):
        view = next_for(ctx, alice[0])
        assert view.shown_order == logic.shuffled_order(view.shown_order, set_key=view.key, rater_id=alice[0].rater_id)
        orders.add(tuple(sorted(view.shown_order).index(i) for i in view.shown_order))
        jid, _ = answer(ctx, alice[0], view, pos=2)
        with read_session(ctx.engine) as s:
            j = s.get(Judgement, jid)
            assert j.shown_order == view.shown_order and j.winner_id == view.shown_order[2]
    assert len(orders) > 5  # not always slot order


def test_replays_write_one_judgement(ctx, alice):
    make_sets(ctx, 2)
    ident = alice[0]
    view = next_for(ctx, ident)
    first = answer(ctx, ident, view, pos=1)
    assert first[1] is True
    for choice in ("pick", "tie", "skip"):  # a double click, a second tab, a reconnect
        jid, created = answer(ctx, ident, view, choice=choice, pos=3)
        assert (jid, created) == (first[0], False)
    assert len(judgements(ctx)) == 1 and judgements(ctx)[0].winner_id == view.candidates[1].id
    assert judgements(ctx)[0].idempotency_key == logic.idempotency_key(view.key, ident.rater_id)


def test_a_pick_must_name_a_shown_candidate(ctx, alice):
    make_sets(ctx, 1)
    view = next_for(ctx, alice[0])
    with pytest.raises(UserError), write_session(ctx.engine) as s:
        logic.submit_choice(session=s, identity=alice[0], view=view, choice="pick", winner_id=99999)
    assert count(ctx, Judgement) == 0


def test_undo_within_window_shows_the_set_again(ctx, alice):
    make_sets(ctx, 2)
    ident = alice[0]
    view = next_for(ctx, ident)
    answer(ctx, ident, view)
    with write_session(ctx.engine) as s:
        assert logic.undo_answer(session=s, identity=ident, comparison_id=view.comparison_id,
                                 within_s=ctx.settings.undo_seconds)
    assert count(ctx, Judgement) == 0
    assert next_for(ctx, ident).key == view.key
    with write_session(ctx.engine) as s:  # nothing left to take back
        assert not logic.undo_answer(session=s, identity=ident, comparison_id=view.comparison_id,
                                     within_s=ctx.settings.undo_seconds)


def test_undo_refused_after_the_window(ctx, alice):
    make_sets(ctx, 1)
    view = next_for(ctx, alice[0])
    jid, _ = answer(ctx, alice[0], view)
    with write_session(ctx.engine) as s:
        j = s.get(Judgement, jid)
        j.created_at = j.created_at - timedelta(seconds=ctx.settings.undo_seconds + 1)
        s.add(j)
    with write_session(ctx.engine) as s:
        assert not logic.undo_answer(session=s, identity=alice[0], comparison_id=view.comparison_id,
                                     within_s=ctx.settings.undo_seconds)
    assert count(ctx, Judgement) == 1


def test_expired_assignment_goes_to_another_rater(ctx):
    a, _ = make_rater(ctx, "a")
    b, _ = make_rater(ctx, "b")
    make_sets(ctx, 1)
    view = next_for(ctx, a)
    assert next_for(ctx, b) is None
    with write_session(ctx.engine) as s:
        asg = s.exec(select(Assignment)).one()
        asg.assigned_at = asg.assigned_at - logic.ASSIGNMENT_TTL - timedelta(seconds=1)
        s.add(asg)
    assert next_for(ctx, b).key == view.key
    assert next_for(ctx, a) is None  # a's stale hold was dropped
    assert count(ctx, Assignment) == 1


def test_labels_today_and_history(ctx, alice):
    make_sets(ctx, 3)
    ident = alice[0]
    for choice in ("pick", "tie", "skip"):
        answer(ctx, ident, next_for(ctx, ident), choice=choice, pos=1)
    with read_session(ctx.engine) as s:
        assert logic.labels_today(session=s, rater_id=ident.rater_id) == 2  # skips are not labels
        items = logic.history(session=s, rater_id=ident.rater_id)
    assert [i.choice for i in items] == ["skip", "tie", "pick"]
    assert items[2].winner_id == items[2].candidates[1].id and len(items[2].candidates) == 4


def test_sign_in(ctx, alice):
    ident, token = alice
    with write_session(ctx.engine) as s:
        assert logic.sign_in(session=s, name="alice", token=token) == ident
        assert logic.sign_in(session=s, name="alice", token=token + "x") is None
        assert logic.sign_in(session=s, name="nobody", token=token) is None
        assert logic.sign_in_oidc(session=s, email="alice") is None  # a token rater is not an OIDC identity
        assert logic.sign_in_oidc(session=s, email="eve@example.org") is None
        logic.allow_oidc_rater(session=s, email="Eve@example.org")
    with read_session(ctx.engine) as s:
        eve = logic.sign_in_oidc(session=s, email="eve@example.org")
        assert eve is not None and eve.kind == "oidc" and not eve.is_admin
        assert logic.sign_in(session=s, name="Eve@example.org", token="") is None


def test_win_rates_against_parent(ctx, alice):
    make_sets(ctx, 1)
    with write_session(ctx.engine) as s:
        base = s.exec(select(ModelVersion)).one()
        child = ModelVersion(name="dpo-1", base_model=base.base_model, parent_id=base.id, method="dpo")
        s.add(child)
        s.flush()
        cid = child.id
    # Four sets mixing two candidates of each version; the rater always picks the child's first.
    ids = make_sets(ctx, 4)
    with write_session(ctx.engine) as s:
        from pickloop.schema import Candidate

        for c in s.exec(select(Candidate).where(Candidate.comparison_id.in_(ids))):
            if c.slot < 2:
                c.model_version_id = cid
                s.add(c)
    ident = alice[0]
    with read_session(ctx.engine) as s:
        slot_of = {c.id: c.slot for c in s.exec(select(Candidate))}
    while (view := next_for(ctx, ident)) is not None:
        pos = next(i for i, c in enumerate(view.candidates) if slot_of[c.id] == 0)
        answer(ctx, ident, view, pos=pos)
    with read_session(ctx.engine) as s:
        rates = {r.name: r for r in logic.win_rates_by_version(session=s)}
    # Per set: the child's slot-0 image beat both parent images (2 wins); slot 1 vs parents says nothing.
    assert rates["dpo-1"].wins == 8 and rates["dpo-1"].losses == 0 and rates["dpo-1"].win_rate == 1.0


def test_queue_counts_prompts_and_export(ctx, alice):
    make_sets(ctx, 2)
    view = next_for(ctx, alice[0])
    answer(ctx, alice[0], view, pos=0)
    with write_session(ctx.engine) as s:
        assert logic.add_prompts_from_text(session=s, text="a red circle\r\n\na blue square\n") == (2, 0)
        assert logic.add_prompts_from_text(session=s, text=b"a red circle\n") == (0, 1)
        with pytest.raises(UserError):
            logic.add_prompts_from_text(session=s, text=b"\xff\xfe bad")
    with read_session(ctx.engine) as s:
        counts = logic.queue_counts(session=s)
        assert counts["done"] == 1 and counts["ready"] == 1 and counts["judgements"] == 1
        data, name, _ = logic.export_labels(session=s, fmt="json")
        rows = json.loads(data)
        assert rows[0]["winner_id"] == view.candidates[0].id and len(rows[0]["shown"]) == 4
        data, name, _ = logic.export_labels(session=s, fmt="csv")
        assert name.endswith(".csv") and data.decode().count("\n") == 2
        assert "pickapic-parquet" in logic.export_formats()
        data, name, _ = logic.export_labels(session=s, fmt="pickapic-parquet", images=ctx.images)
        assert data[:4] == b"PAR1"


def test_pickapic_export_with_a_tie_downloads_both_files(ctx, alice):
    import io
    import zipfile

    make_sets(ctx, 2)
    answer(ctx, alice[0], next_for(ctx, alice[0]), pos=1)
    answer(ctx, alice[0], next_for(ctx, alice[0]), choice="tie")
    with read_session(ctx.engine) as s:
        data, name, mime = logic.export_labels(session=s, fmt="pickapic-parquet", images=ctx.images)
    assert name == "pickloop-labels.zip" and mime == "application/zip"
    names = sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == ["pickloop-labels.parquet", "pickloop-labels.undecided.parquet"]


def test_concurrent_raters_never_share_a_set(actx):
    from concurrent.futures import ThreadPoolExecutor

    raters = [make_rater(actx, f"r{i}")[0] for i in range(6)]
    make_sets(actx, 4)

    def claim(ident):
        for _ in range(20):
            try:
                view = next_for(actx, ident)
                return view.key if view else None
            except Exception:  # noqa: BLE001 - SQLite busy under contention: try again, as a rerun would
                continue
        raise AssertionError("never got an answer")

    with ThreadPoolExecutor(6) as pool:
        keys = list(pool.map(claim, raters))
    got = [k for k in keys if k]
    assert len(got) == 4 and len(set(got)) == 4
    assert count(actx, Assignment) == 4


def test_has_set_for_matches_next_set_for(ctx, alice):
    ident = alice[0]
    with read_session(ctx.engine) as s:
        assert not logic.has_set_for(session=s, rater_id=ident.rater_id)
    make_sets(ctx, 1)
    with read_session(ctx.engine) as s:
        assert logic.has_set_for(session=s, rater_id=ident.rater_id)
    view = next_for(ctx, ident)
    with read_session(ctx.engine) as s:
        assert logic.has_set_for(session=s, rater_id=ident.rater_id)  # held by this rater
    answer(ctx, ident, view)
    with read_session(ctx.engine) as s:
        assert not logic.has_set_for(session=s, rater_id=ident.rater_id)

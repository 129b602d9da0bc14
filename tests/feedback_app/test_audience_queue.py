"""The Rate page's queue per audience, on SQLite and PostgreSQL: a rater is handed only sets drawn by the
version that serves them (their own, their groups', else the shared one), overlap sets only between raters
of one version; a version that stops serving hands out no more; the worker sizes each audience's queue by
the raters it serves; win rates per audience."""
from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlmodel import select

from feedback_app import logic
from generator.queue import QueueWatch
from pickloop import audiences
from pickloop.db import read_session, write_session
from pickloop.schema import Candidate, Comparison, Judgement, ModelVersion, utcnow
from pickloop.settings import get_settings
from tests.feedback_app.helpers import count, make_rater, make_sets


def next_for(ctx, ident):
    with write_session(ctx.engine) as s:
        return logic.next_set_for(session=s, rater_id=ident.rater_id, settings=ctx.settings)


def answer(ctx, ident, view, pos=0):
    with write_session(ctx.engine) as s:
        return logic.submit_choice(session=s, identity=ident, view=view, choice="pick",
                                   winner_id=view.candidates[pos].id)[1]


def version_of(ctx, key: str) -> str:
    with read_session(ctx.engine) as s:
        comp = s.exec(select(Comparison).where(Comparison.key == key)).one()
        return s.get(ModelVersion, comp.model_version_id).name


def drain(ctx, ident) -> list[str]:
    """Answer every set the rater is handed; the names of the versions that drew them, in order."""
    names = []
    while (view := next_for(ctx, ident)) is not None:
        names.append(version_of(ctx, view.key))
        assert answer(ctx, ident, view) is True and answer(ctx, ident, view) is False  # a replay writes nothing
    return names


def add_version(ctx, name: str, audience: str | None = None) -> int:
    """A fine-tuned version of the shared base; ``audience``: made to serve it."""
    with write_session(ctx.engine) as s:
        base = s.exec(select(ModelVersion).where(ModelVersion.method == "base")).one()
        row = ModelVersion(name=name, base_model=base.base_model, method="dpo", parent_id=base.id)
        s.add(row)
        s.flush()
        if audience is not None:
            audiences.serve(session=s, ref=name, audience=audience)
        return row.id


@pytest.fixture
def world(actx):
    """base-1 (shared) drew 4 sets; v-group serves designers (alice, bob) and drew 2 sets and an overlap set;
    painters (dora) has no version; carol is in no group."""
    make_sets(actx, 4)
    people = {n: make_rater(actx, n)[0] for n in ("alice", "bob", "carol", "dora")}
    with write_session(actx.engine) as s:
        for group, members in (("designers", ["alice", "bob"]), ("painters", ["dora"])):
            audiences.add_group(session=s, name=group)
            audiences.set_membership(session=s, group=group, raters=members)
    vg = add_version(actx, "v-group", "group:designers")
    make_sets(actx, 2, version=vg)
    make_sets(actx, 1, version=vg, raters_wanted=2)
    return people


def test_a_rater_gets_only_sets_of_the_version_that_serves_them(actx, world):
    first = next_for(actx, world["dora"])  # painters has no version: dora falls back to the shared one
    assert version_of(actx, first.key) == "base-1"
    assert drain(actx, world["alice"]) == ["v-group"] * 3
    assert drain(actx, world["bob"]) == ["v-group"]  # the overlap set alice answered: bob is its second rater
    assert drain(actx, world["carol"]) == ["base-1"] * 3  # the fourth is dora's, held
    assert drain(actx, world["dora"]) == ["base-1"]
    with read_session(actx.engine) as s:
        overlap = s.exec(select(Comparison).where(Comparison.raters_wanted == 2)).one()
        who = {j.rater_id for j in s.exec(select(Judgement).where(Judgement.comparison_id == overlap.id))}
        assert overlap.status == "done" and who == {world["alice"].rater_id, world["bob"].rater_id}
    assert count(actx, Judgement) == 8  # every answer once, replays included


def test_a_version_that_stops_serving_hands_out_no_more_of_its_sets(actx, world):
    alice = world["alice"]
    held = next_for(actx, alice)
    assert version_of(actx, held.key) == "v-group"
    v2 = add_version(actx, "v-group-2", "group:designers")  # another promoted for the group: v-group retired
    assert next_for(actx, alice) is None  # not even the set she holds: v-group's sets are skipped, not shown
    make_sets(actx, 1, version=v2)
    assert drain(actx, alice) == ["v-group-2"]
    with write_session(actx.engine) as s:  # retired with no successor: the group falls back to the shared one
        s.get(ModelVersion, v2).status = "retired"
    assert version_of(actx, next_for(actx, alice).key) == "base-1"
    with read_session(actx.engine) as s:  # skipped, not retired: v-group's sets wait, unanswered
        assert s.exec(select(Comparison).where(Comparison.key == held.key)).one().status == "ready"
    with write_session(actx.engine) as s:
        audiences.serve(session=s, ref="v-group", audience="group:designers")
    assert next_for(actx, alice).key == held.key  # served again: the set she held is hers again
    with write_session(actx.engine) as s:
        assert logic.has_set_for(session=s, rater_id=world["carol"].rater_id)


def test_the_worker_sizes_each_audiences_queue_by_the_raters_it_serves(actx, world):
    settings = get_settings(home=actx.settings.home, queue_min_sets=1, queue_lead_seconds=30.0, app_sets_ahead=3)
    now = utcnow()
    watch = QueueWatch(SimpleNamespace(engine=actx.engine, settings=settings, base_model=actx.base_model),
                       worker_id="w", clock=lambda: now)
    with read_session(actx.engine) as s:
        shared = s.exec(select(ModelVersion).where(ModelVersion.name == "base-1")).one().id
        vg = s.exec(select(ModelVersion).where(ModelVersion.name == "v-group")).one().id
        assert audiences.raters_served(session=s) == {
            vg: {world["alice"].rater_id, world["bob"].rater_id},
            shared: {world["carol"].rater_id, world["dora"].rater_id}}
    # nobody online: each keeps the floor (1), which their own open sets (4 and 3) exceed
    assert (watch.wanted(shared), watch.wanted(vg)) == (0, 0)
    next_for(actx, world["alice"])  # alice is online now: 4 sets for her browser and lead, 3 open
    now = utcnow()
    assert (watch.wanted(shared), watch.wanted(vg)) == (0, 1)
    next_for(actx, world["bob"])
    now = utcnow()
    assert (watch.wanted(shared), watch.wanted(vg)) == (0, 5)  # two raters online: 8, 3 open
    now = utcnow() + timedelta(hours=1)  # an hour later nobody is online again
    assert watch.wanted(vg) == 0
    empty = add_version(actx, "v-nobody", "rater:alice")  # alice's own version: v-group serves bob alone
    now = utcnow()
    assert watch.wanted(vg) == 1 and watch.wanted(empty) == 1  # each serves one rater online, nothing open
    with write_session(actx.engine) as s:
        audiences.add_group(session=s, name="empty")
    add_version(actx, "v-empty", "group:empty")
    with read_session(actx.engine) as s:
        assert [v.name for v in audiences.drawing_versions(session=s, base_model=actx.base_model)] == [
            "base-1", "v-group", "v-empty", "v-nobody"]
        empty_id = s.exec(select(ModelVersion).where(ModelVersion.name == "v-empty")).one().id
    assert watch.wanted(empty_id) == 0  # a group with no one in it: nothing drawn for it


def test_win_rates_per_audience(actx, world):
    """Mixed sets drawn for the group: two of v-group's candidates and two of its parent's (base-1)."""
    with read_session(actx.engine) as s:
        vg = s.exec(select(ModelVersion).where(ModelVersion.name == "v-group")).one().id
        base = s.exec(select(ModelVersion).where(ModelVersion.name == "base-1")).one().id
    with write_session(actx.engine) as s:
        s.get(ModelVersion, vg).metrics = {"gate_win_rate": 0.75}  # as the gate records it on promotion
        for comp in s.exec(select(Comparison)):
            comp.status = "done"  # only the mixed sets below are handed out
        ids = []
        for i in range(3):
            comp = Comparison(key=f"mixed{i}", prompt_id=1, model_version_id=vg, status="ready")
            s.add(comp)
            s.flush()
            ids.append(comp.id)
            for slot in range(4):
                s.add(Candidate(comparison_id=comp.id, slot=slot, prompt_id=1, seed=slot, params={},
                                model_version_id=vg if slot < 2 else base, image_sha256=f"{i}{slot}".ljust(64, "0")))
    with read_session(actx.engine) as s:
        slot_of = {c.id: c.slot for c in s.exec(select(Candidate))}

    def pick(ident, slot):
        view = next_for(actx, ident)
        assert answer(actx, ident, view, pos=next(i for i, c in enumerate(view.candidates) if slot_of[c.id] == slot))

    pick(world["alice"], 0)  # v-group's candidate beats both of its parent's: 2 wins
    pick(world["bob"], 2)  # the parent's beats both of v-group's: 2 losses
    with write_session(actx.engine) as s:
        view = logic.next_set_for(session=s, rater_id=world["alice"].rater_id, settings=actx.settings)
        logic.submit_choice(session=s, identity=world["alice"], view=view, choice="tie")  # 4 ties
    with write_session(actx.engine) as s:  # carol's answer to a v-group set (an old one) is not the group's
        comp = s.get(Comparison, ids[0])
        cands = [c.id for c in s.exec(select(Candidate).where(Candidate.comparison_id == comp.id)
                                      .order_by(Candidate.slot))]
        s.add(Judgement(comparison_id=comp.id, rater_id=world["carol"].rater_id, choice="pick", winner_id=cands[0],
                        shown_order=cands, idempotency_key="carol"))
    with read_session(actx.engine) as s:
        rows = {r.audience: r for r in audiences.audience_win_rates(session=s)}
        by_version = {r.name: r for r in logic.win_rates_by_version(session=s)}
    g = rows["group:designers"]
    assert (g.version, g.parent, g.raters, g.labels) == ("v-group", "base-1", 2, 3)
    assert (g.wins, g.losses, g.ties, g.pairs, g.win_rate) == (2, 2, 4, 8, 0.5)
    assert g.gate_win_rate == pytest.approx(0.75)  # what the gate measured when v-group was promoted
    e = rows["everyone"]
    assert (e.version, e.parent, e.raters, e.labels, e.pairs, e.win_rate) == ("base-1", None, 2, 0, 0, None)
    assert (by_version["v-group"].wins, by_version["v-group"].pairs) == (4, 10)  # every rater's answers

"""The store's data functions on SQLite and PostgreSQL."""
from __future__ import annotations

import pytest
from sqlmodel import select

from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Judgement, Prompt
from pickloop.store import (
    add_candidates, add_prompts, add_rater, add_set, authenticate, candidates_of, data_snapshot,
    ensure_base_version, ensure_rater_without_sign_in, find_version, get_rater, preference_pairs, prompt_split,
    record_judgement, undo_judgement,
)
from tests.core.helpers import make_ready_set


@pytest.mark.parametrize("text", [
    "a red circle",
    "دائرة حمراء على خلفية زرقاء",  # right-to-left
    "\u202eevil override\u202c a circle",  # bidi control characters are text, kept exactly
    "emoji 🟥 and 中文",
])
def test_prompt_round_trips_exactly(engine, text):
    with write_session(engine) as s:
        add_prompts(session=s, texts=[text])
    with read_session(engine) as s:
        assert [p.text for p in s.exec(select(Prompt))] == [text]


@pytest.mark.parametrize("text,reason", [
    ("x" * 10_000, "limit is 2000"),
    ("a\x00b", "NUL"),
    ("   ", "empty"),
    ("line\x07bell", "control character"),
])
def test_bad_prompts_refused_and_nothing_written(engine, text, reason):
    with pytest.raises(UserError, match=reason):
        with write_session(engine) as s:
            add_prompts(session=s, texts=["a good prompt", text])  # all or none
    with read_session(engine) as s:
        assert s.exec(select(Prompt)).all() == []


def test_prompts_dedupe_and_split_is_stable(engine):
    with write_session(engine) as s:
        a = add_prompts(session=s, texts=["a blue square", "a blue square", "a red circle"])
    with write_session(engine) as s:
        b = add_prompts(session=s, texts=["a blue square"])
    assert len({p.id for p in a}) == 2 and b[0].id == a[0].id
    assert a[0].split == prompt_split("a blue square")
    splits = [prompt_split(f"prompt {i}") for i in range(2000)]
    assert 0.07 < splits.count("heldout") / len(splits) < 0.13


def test_raters_tokens_and_unknown_rater(engine):
    with write_session(engine) as s:
        r, token = add_rater(session=s, name="alice", role="admin")
    with read_session(engine) as s:
        assert authenticate(session=s, name="alice", token=token).id == r.id
        assert authenticate(session=s, name="alice", token=token + "x") is None
        assert authenticate(session=s, name="bob", token=token) is None
        assert get_rater(session=s, name="alice").token_hash != token  # only a hash is stored
        with pytest.raises(UserError, match="unknown rater"):
            get_rater(session=s, name="mallory")
    with pytest.raises(UserError, match="already exists"):
        with write_session(engine) as s:
            add_rater(session=s, name="alice")


def test_raters_without_sign_in_are_made_once_and_no_token_opens_them(engine):
    with write_session(engine) as s:
        a = ensure_rater_without_sign_in(session=s, name="simulated:large", kind="simulated")
        again = ensure_rater_without_sign_in(session=s, name="simulated:large", kind="simulated")
        imported = ensure_rater_without_sign_in(session=s, name="user-17", kind="imported")
        assert again.id == a.id != imported.id
        assert (a.kind, a.role, imported.kind) == ("simulated", "rater", "imported")
    with read_session(engine) as s:
        for name, hashed in (("simulated:large", "!simulated"), ("user-17", "!imported"), ("user-17", "")):
            assert authenticate(session=s, name=name, token=hashed) is None


def test_a_set_and_its_candidates_in_one_call_or_two(engine):
    with write_session(engine) as s:
        p = add_prompts(session=s, texts=["a red circle"])[0]
        v = ensure_base_version(session=s, base_model="embedded:shapes")
        ready = add_set(session=s, prompt_id=p.id, model_version_id=v.id, raters_wanted=2, candidates=[
            dict(slot=k, seed=k, params={"steps": 1}, image_sha256=f"{k}" * 64) for k in range(3)])
        drawing = add_set(session=s, prompt_id=p.id, model_version_id=v.id, status="drawing", claimed_by="w")
        assert drawing.claimed_at is not None and ready.claimed_at is None and len(ready.key) == 32
        added = add_candidates(session=s, comparison=drawing, candidates=[
            dict(slot=0, seed=5, params={}, image_sha256="a" * 64, from_noise_memory=True)])
        ready_id, drawing_id, added_id = ready.id, drawing.id, added[0].id
    with read_session(engine) as s:
        cands = candidates_of(session=s, comparison_id=ready_id)
        assert [(c.slot, c.seed, c.prompt_id, c.model_version_id) for c in cands] == [
            (k, k, p.id, v.id) for k in range(3)]
        (c,) = candidates_of(session=s, comparison_id=drawing_id)
        assert c.id == added_id and c.from_noise_memory and c.prompt_id == p.id


def test_judgement_is_idempotent_and_validated(engine):
    with write_session(engine) as s:
        comp = make_ready_set(s, None, n=3)
        rater, _ = add_rater(session=s, name="r1")
        ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
    args = dict(comparison_id=comp.id, rater_id=rater.id, choice="pick", winner_id=ids[1],
                shown_order=[ids[2], ids[0], ids[1]], time_ms=900)
    with write_session(engine) as s:
        first, created = record_judgement(session=s, idempotency_key="k1", **args)
        assert created
    with write_session(engine) as s:  # replayed click
        again, created = record_judgement(session=s, idempotency_key="k1", **args)
        assert not created and again.id == first.id
    with write_session(engine) as s:  # second tab: another key, same rater and set
        other, created = record_judgement(session=s, idempotency_key="k2", **{**args, "winner_id": ids[0]})
        assert not created and other.id == first.id and other.winner_id == ids[1]
    for bad, msg in [({"choice": "best"}, "choice must be"), ({"winner_id": 999999}, "must name one"),
                     ({"shown_order": ids[:2]}, "shown order"), ({"rater_id": 424242}, "unknown rater")]:
        with pytest.raises(UserError, match=msg):
            with write_session(engine) as s:
                record_judgement(session=s, idempotency_key="k3", **{**args, **bad})
    with read_session(engine) as s:
        rows = s.exec(select(Judgement)).all()
        assert len(rows) == 1 and rows[0].shown_order == [ids[2], ids[0], ids[1]]
        assert data_snapshot(session=s) == rows[0].id


def test_undo_within_window_then_refused(engine):
    with write_session(engine) as s:
        comp = make_ready_set(s, None)
        rater, _ = add_rater(session=s, name="r1")
        ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
        j, _ = record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id, choice="tie",
                                winner_id=None, shown_order=ids, idempotency_key="u1")
    with write_session(engine) as s:
        assert not undo_judgement(session=s, judgement_id=j.id, rater_id=rater.id + 1, within_s=10)
        assert not undo_judgement(session=s, judgement_id=j.id, rater_id=rater.id, within_s=-1)
        assert undo_judgement(session=s, judgement_id=j.id, rater_id=rater.id, within_s=10)
    with read_session(engine) as s:
        assert s.exec(select(Judgement)).all() == []


def test_preference_pairs_from_choices(engine):
    with write_session(engine) as s:
        rater, _ = add_rater(session=s, name="r1")
        answers = {"pick": None, "tie": None, "none": None, "skip": None}
        sets = {}
        for i, choice in enumerate(answers):
            comp = make_ready_set(s, None, prompt=f"prompt {i}", n=3)
            ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
            record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id, choice=choice,
                             winner_id=ids[2] if choice == "pick" else None, shown_order=ids,
                             idempotency_key=f"p{i}")
            sets[choice] = ids
    with read_session(engine) as s:
        pairs = preference_pairs(session=s)
        no_ties = preference_pairs(session=s, include_ties=False)
    picks = [p for p in pairs if p.label == 1.0]
    assert sorted((p.a.id, p.b.id) for p in picks) == [(sets["pick"][2], sets["pick"][0]),
                                                       (sets["pick"][2], sets["pick"][1])]
    assert len([p for p in pairs if p.label == 0.5]) == 3  # every pair of a 3-way tie
    assert len(no_ties) == 2


def test_find_version(engine):
    with write_session(engine) as s:
        make_ready_set(s, None)
    with read_session(engine) as s:
        v = find_version(session=s, ref="latest")
        assert find_version(session=s, ref=v.id).id == v.id == find_version(session=s, ref=v.name).id
        with pytest.raises(UserError, match="no model version"):
            find_version(session=s, ref="nope")

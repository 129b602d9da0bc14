"""``finetune run --audience``: the same run on an audience's labels, from its parent, promoted for it."""
from __future__ import annotations

import json

import pytest
from sqlmodel import select

from finetune.auto import reward_trust
from finetune.dpo import store_pairs
from finetune.jobs import run_finetune_job
from finetune.registry import gate_and_promote
from pickloop.audiences import LabelScope, add_group, label_scope, parent_for, set_membership
from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Judgement, ModelVersion, Rater, RewardModelRow
from pickloop.store import preference_pairs, promoted_version
from tests.finetune.conftest import add_labelled_sets

TINY = {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "log_every": 0}


def _rater_of(ctx, judgement_ids: list[int]) -> str:
    with read_session(ctx.engine) as s:
        return s.get(Rater, s.get(Judgement, judgement_ids[0]).rater_id).name


@pytest.fixture
def three(labelled):
    """The ``labelled`` home (3 picks by one rater, "first") plus 2 picks by "second" and 1 by "third";
    group "designers" holds first and third. Returns (ctx, {label: rater name})."""
    names = {"first": _rater_of(labelled, [1])}
    names["second"] = _rater_of(labelled, add_labelled_sets(labelled, n_sets=2, split="train", seed=1))
    names["third"] = _rater_of(labelled, add_labelled_sets(labelled, n_sets=1, split="train", seed=2))
    with write_session(labelled.engine) as s:
        add_group(session=s, name="designers")
        set_membership(session=s, group="designers", raters=[names["first"], names["third"]])
    return labelled, names


def _weights(ctx, scope: LabelScope) -> list[float]:
    return sorted(p.weight for p in store_pairs(ctx, scope=scope))


def test_labels_of_a_rater_a_group_and_the_others_at_a_weight(three):
    ctx, n = three
    assert _weights(ctx, LabelScope()) == [1.0] * 6  # everyone: every pick, as before
    assert _weights(ctx, label_scope(f"rater:{n['second']}")) == [1.0, 1.0]
    assert _weights(ctx, label_scope("group:designers")) == [1.0] * 4
    assert _weights(ctx, label_scope(f"rater:{n['second']}", 0.25)) == [0.25] * 4 + [1.0, 1.0]
    with read_session(ctx.engine) as s:
        second = s.exec(select(Rater).where(Rater.name == n["second"])).one().id
        assert {p.rater_id for p in preference_pairs(session=s, rater_ids={second})} == {second}


def test_bad_scopes_are_one_line(three):
    ctx, n = three
    for audience, weight, said in [("team:x", 0, "audience must be"), ("rater:x", 1.5, "between 0 and 1"),
                                   ("rater:x", "abc", "between 0 and 1"), ("rater:x", float("nan"), "between"),
                                   ("everyone", 0.5, "everyone has no others")]:
        with pytest.raises(UserError, match=said):
            label_scope(audience, weight)
    with pytest.raises(UserError, match="no group 'nobody'"):
        run_finetune_job(ctx, method="dpo", overrides=TINY, audience="group:nobody")
    # too few labels of its own (settings.audience_min_labels, 20 by default): one line, nothing trained
    with pytest.raises(UserError, match=f"rater:{n['third']} has 1 label of its own"):
        run_finetune_job(ctx, method="dpo", overrides=TINY, audience=f"rater:{n['third']}")


def test_cli_refuses_a_bad_audience_or_weight_in_one_line_exit_2(three, capsys):
    ctx, n = three
    for extra in (["--audience", "team:x"], ["--audience", f"rater:{n['first']}", "--others-weight", "2"],
                  ["--audience", f"rater:{n['first']}", "--others-weight", "x"], ["--audience", "rater:nobody"],
                  ["--audience", f"rater:{n['first']}"]):  # 3 labels: fewer than 20
        for method in ("auto", "dpo"):
            assert main(["finetune", "run", "--method", method, *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith("pickloop: error:"), err
    with read_session(ctx.engine) as s:
        assert s.exec(select(ModelVersion).where(ModelVersion.method != "base")).all() == []


def test_reward_models_and_trust_are_per_audience(ctx):
    from reward import find_reward_model, latest_reward_model_id

    with write_session(ctx.engine) as s:
        s.add(RewardModelRow(path="x", sha256="0" * 64, backbone="b", data_snapshot=0, metrics={"cv_acc": 0.9}))
        s.add(RewardModelRow(path="y", sha256="0" * 64, backbone="b", data_snapshot=0,
                             metrics={"audience": "rater:ann", "cv_acc": 0.8, "cv_pairs": 500}))
    with read_session(ctx.engine) as s:
        shared, ann = latest_reward_model_id(session=s), latest_reward_model_id(session=s, audience="rater:ann")
        assert (find_reward_model(session=s).path, shared, ann) == ("x", 1, 2)  # the newer one is ann's only
        assert latest_reward_model_id(session=s, audience="group:g") is None
    assert reward_trust(ctx, "rater:ann").trusted and reward_trust(ctx, "rater:ann").reward_model_id == 2
    assert "no reward model trained yet for group:g" in reward_trust(ctx, "group:g").reason


@pytest.mark.slow
def test_an_audience_run_is_promoted_for_it_and_leaves_the_shared_version(three, monkeypatch):
    ctx, n = three
    monkeypatch.setenv("PICKLOOP_AUDIENCE_MIN_LABELS", "2")
    from pickloop.context import Context

    ctx = Context()
    aud = f"rater:{n['second']}"
    with write_session(ctx.engine) as s:
        base = promoted_version(session=s)
        assert parent_for(session=s, audience=aud, base_model=ctx.base_model).id == base.id  # none of its own
    out = run_finetune_job(ctx, method="dpo", overrides=TINY, audience=aud, others_weight=0.5)
    assert out.status == "done" and "of rater:" in out.message and "weight 0.5" in out.message
    with read_session(ctx.engine) as s:
        v = s.exec(select(ModelVersion).where(ModelVersion.name == out.version)).one()
    assert (v.audience, v.status, v.parent_id, v.metrics["human_pairs"]) == (aud, "candidate", base.id, 6.0)
    assert v.name.endswith("-for-rater-" + n["second"] + "-w0.5")
    # a constant scorer: every image ties, 0.5 >= 0.5 passes; the version serves its audience only
    gate = gate_and_promote(ctx, out.version, scorer=lambda prompts, images: [0.0] * len(prompts),
                            prompts=["a red circle"], seeds=[1])
    assert gate.passed
    with write_session(ctx.engine) as s:
        assert promoted_version(session=s).id == base.id  # the shared version untouched
        assert promoted_version(session=s, audience=aud).name == out.version
        assert parent_for(session=s, audience=aud, base_model=ctx.base_model).name == out.version
    # the shared run on the same snapshot is another run (not "already done"), from the shared parent
    shared = run_finetune_job(ctx, method="dpo", overrides=TINY)
    assert shared.status == "done" and shared.version != out.version
    # the audience's next run continues from its own version, on its labels newer than that version's
    add_labelled_sets(ctx, n_sets=1, split="train", seed=5)  # another rater's: nothing new for the audience
    assert run_finetune_job(ctx, method="dpo", overrides=TINY, audience=aud).status == "nothing-new"
    add_labelled_sets(ctx, n_sets=1, split="train", seed=6, rater=n["second"])
    assert main(["finetune", "run", "--method", "dpo", "--config", json.dumps(TINY), "--audience", aud]) == 0
    with read_session(ctx.engine) as s:
        last = s.exec(select(ModelVersion).order_by(ModelVersion.id.desc())).first()
    assert last.audience == aud and last.parent_id == v.id and last.metrics["human_pairs"] == 1.0

"""``finetune run --method auto``: the run decides from its own data whether to trust the reward model,
which candidates to train, and the gate promotes the best that passes."""
from __future__ import annotations

import pytest
from sqlmodel import select

from finetune.auto import AI_CANDIDATES, AI_SETS, ddpo_doubtful, plan_candidates, reward_trust, run_auto
from pickloop.db import read_session, write_session
from pickloop.schema import Job, ModelVersion, RewardModelRow
from tests.finetune.test_ai_feedback import fast_base, labelled, register_reward_model, tiny_clip  # noqa: F401

DPO = dict(steps=2, batch_size=2, lr=1e-2, seed=1, checkpoint_every=0, log_every=0,
           ai_feedback_sets=2, ai_feedback_candidates=2)
DDPO = dict(epochs=1, sample_batch_size=2, sample_batches_per_epoch=1, train_batch_size=2, steps=3,
            images_per_prompt=2, stat_min_count=2, timestep_fraction=0.5, drift_prompts=0)


def _set_metrics(ctx, rid: int, **metrics) -> None:
    with write_session(ctx.engine) as s:
        row = s.get(RewardModelRow, rid)
        row.metrics = {**row.metrics, **metrics}
        s.add(row)


def _heldout_prompts(ctx, n: int = 2) -> None:
    from pickloop.store import add_prompts

    with write_session(ctx.engine) as s:
        for p in add_prompts(session=s, texts=[f"a blue square on a white background {i}" for i in range(n)]):
            p.split = "heldout"
            s.add(p)


def _versions(ctx) -> list[ModelVersion]:
    with read_session(ctx.engine) as s:
        return list(s.exec(select(ModelVersion).where(ModelVersion.method != "base").order_by(ModelVersion.id)))


def test_trust_follows_the_cross_validated_accuracy(ctx):
    assert not reward_trust(ctx).trusted and "no reward model" in reward_trust(ctx).reason
    with write_session(ctx.engine) as s:
        row = RewardModelRow(path="x", sha256="0" * 64, backbone="b", data_snapshot=0, metrics={})
        s.add(row)
        s.flush()
        rid = row.id
    assert "no cross-validated accuracy" in reward_trust(ctx).reason
    _set_metrics(ctx, rid, cv_acc=0.55, cv_pairs=600)
    t = reward_trust(ctx)
    assert not t.trusted and "0.550" in t.reason and "below 0.70" in t.reason
    _set_metrics(ctx, rid, cv_acc=0.95, cv_pairs=20)
    assert not reward_trust(ctx).trusted and "20 pairs only" in reward_trust(ctx).reason
    _set_metrics(ctx, rid, cv_acc=0.82, cv_pairs=600)
    assert reward_trust(ctx).trusted and reward_trust(ctx).cv_acc == 0.82 and reward_trust(ctx).ranks
    # weak overall, but right where it is sure: its best-against-worst rankings may make AI pairs
    _set_metrics(ctx, rid, cv_acc=0.6, cv_acc_top=0.8, cv_acc_top_se=0.03)
    t = reward_trust(ctx)
    assert not t.trusted and t.ranks and "quarter it separates most" in t.reason
    _set_metrics(ctx, rid, cv_acc_top=0.66, cv_acc_top_se=0.07)  # within noise of 0.60: no
    assert not reward_trust(ctx).ranks


def test_an_untrusted_reward_model_ranks_nothing(ctx):
    untrusted = plan_candidates(reward_trust(ctx), dpo={"steps": 5})
    assert [[c.name for c in stage] for stage in untrusted] == [["dpo"]]
    assert untrusted[0][0].overrides == {"steps": 5, "ai_feedback_sets": 0}
    from finetune.auto import Trust

    ranks_only = plan_candidates(Trust(False, 1, 0.6, 500, "", ranks=True), variants=("dpo", "dpo+ai"))
    assert [[c.name for c in stage] for stage in ranks_only] == [["dpo+ai"]]  # no DDPO, no judge to choose
    trusted = plan_candidates(Trust(True, 1, 0.9, 500, ""), dpo={"steps": 5}, variants=("dpo", "dpo+ai"))
    assert [[c.name for c in stage] for stage in trusted] == [["dpo", "dpo+ai"], ["ddpo"]]
    ai = trusted[0][1].overrides
    assert (ai["ai_feedback_sets"], ai["ai_feedback_candidates"], ai["steps"]) == (AI_SETS, AI_CANDIDATES, 5)
    assert trusted[0][0].overrides["ai_feedback_sets"] == 0


@pytest.mark.slow
def test_untrusted_run_trains_human_dpo_only_and_says_so_once(labelled, tiny_clip):  # noqa: F811 - fixtures
    rid = register_reward_model(labelled, tiny_clip)
    _set_metrics(labelled, rid, cv_acc=0.52, cv_pairs=300)
    _heldout_prompts(labelled)
    lines: list[str] = []
    out = run_auto(labelled, dpo=DPO, ddpo=DDPO, log=lines.append)
    assert sum("not trusting the reward model" in x for x in lines) == 1 and "0.520" in lines[0]
    assert [(c.name, c.status) for c in out.candidates] == [("dpo", "candidate")]  # no judge for a non-shapes model
    (v,) = _versions(labelled)
    assert v.metrics["ai_pairs"] == 0 and v.status == "candidate" and v.metrics["gate_judged_win"] is False
    with read_session(labelled.engine) as s:
        assert {j.kind for j in s.exec(select(Job))} == {"finetune-dpo"}  # no DDPO
    assert out.promoted == []
    lines.clear()
    again = run_auto(labelled, dpo=DPO, ddpo=DDPO, log=lines.append)  # no new labels: nothing to do
    assert again.candidates == [] and "nothing to do" in lines[-1]


@pytest.mark.slow
def test_trusted_run_promotes_the_better_dpo_then_stacks_ddpo_on_it(labelled, tiny_clip, monkeypatch):  # noqa: F811 - fixtures
    monkeypatch.setenv("PICKLOOP_PROMOTE_MIN_WIN_RATE", "0")  # a random reward model: let every gate pass
    monkeypatch.setenv("PICKLOOP_AUTO_DPO_VARIANTS", '["dpo", "dpo+ai"]')  # both DPO candidates
    from pickloop.context import Context

    ctx = Context()
    rid = register_reward_model(ctx, tiny_clip)
    _set_metrics(ctx, rid, cv_acc=0.9, cv_pairs=300)
    _heldout_prompts(ctx)
    lines: list[str] = []
    out = run_auto(ctx, dpo=DPO, ddpo=DDPO, log=lines.append)
    assert lines[0].startswith("trusting the reward model")
    names = [(c.stage, c.name) for c in out.candidates]
    assert names == [("dpo", "dpo"), ("dpo", "dpo+ai"), ("ddpo", "ddpo")]
    dpo_pair = out.candidates[:2]
    best = max(dpo_pair, key=lambda c: c.gate["gate_win_rate"])
    other = dpo_pair[1 - dpo_pair.index(best)]
    assert best.status == "promoted" and other.status == "passed" and best.name in other.reason
    ddpo = out.candidates[2]
    assert ddpo.status == "promoted" and out.promoted == [best.version, ddpo.version]
    by_name = {v.name: v for v in _versions(ctx)}
    assert by_name[ddpo.version].parent_id == by_name[best.version].id  # DDPO started from stage 1's winner
    assert by_name[ddpo.version].status == "promoted" and by_name[best.version].status == "retired"
    assert by_name[other.version].status == "candidate"
    assert [by_name[c.version].metrics["ai_pairs"] > 0 for c in dpo_pair] == [False, True]


def _version(ctx, name: str, method: str, parent_id: int | None, status: str, **metrics) -> int:
    with write_session(ctx.engine) as s:
        row = ModelVersion(name=name, base_model="embedded:shapes", method=method, parent_id=parent_id,
                           status=status, metrics=metrics)
        s.add(row)
        s.flush()
        return int(row.id)


def test_ddpo_is_doubtful_after_a_ddpo_that_climbed_a_more_accurate_reward_model(ctx):
    from finetune.auto import Trust

    with write_session(ctx.engine) as s:
        rows = [RewardModelRow(path=f"r{i}", sha256=str(i) * 64, backbone="b", data_snapshot=0, metrics=m)
                for i, m in enumerate([{"cv_acc": 0.78, "cv_pairs": 250}, {}])]
        s.add_all(rows)
        s.flush()
        better, unknown = rows[0].id, rows[1].id
    base = _version(ctx, "base-1", "base", None, "retired")
    assert ddpo_doubtful(ctx, Trust(True, 9, 0.72, 300, "")) is None  # no promoted version yet
    ddpo = _version(ctx, "ddpo-2", "ddpo", base, "retired", reward_model_id=better)
    _version(ctx, "dpo-3", "dpo", ddpo, "promoted", reward_model_id=better)
    why = ddpo_doubtful(ctx, Trust(True, 9, 0.72, 300, ""))  # the DDPO ancestor climbed a 0.78 model
    assert "ddpo-2" in why and "0.780" in why and "0.720" in why
    assert ddpo_doubtful(ctx, Trust(True, 9, 0.80, 300, "")) is None  # a better reward model: DDPO again
    with write_session(ctx.engine) as s:  # an ancestor whose reward model has no accuracy: no opinion
        row = s.get(ModelVersion, ddpo)
        row.metrics = {"reward_model_id": unknown}
        s.add(row)
    assert ddpo_doubtful(ctx, Trust(True, 9, 0.72, 300, "")) is None


@pytest.mark.slow
def test_a_doubtful_ddpo_is_skipped_and_said_once(labelled, tiny_clip, monkeypatch):  # noqa: F811 - fixtures
    monkeypatch.setenv("PICKLOOP_PROMOTE_MIN_WIN_RATE", "0")
    from pickloop.context import Context

    ctx = Context()
    rid = register_reward_model(ctx, tiny_clip)
    _set_metrics(ctx, rid, cv_acc=0.9, cv_pairs=300)
    _heldout_prompts(ctx)
    monkeypatch.setattr("finetune.auto.ddpo_doubtful", lambda ctx, trust, audience=None: "it climbed a better one")
    lines: list[str] = []
    out = run_auto(ctx, dpo=DPO, ddpo=DDPO, log=lines.append)
    assert sum("no DDPO this run: it climbed a better one" in x for x in lines) == 1
    assert [(c.name, c.status) for c in out.candidates][1] == ("ddpo", "skipped")
    assert out.candidates[1].reason == "no DDPO: it climbed a better one"
    with read_session(ctx.engine) as s:
        assert {j.kind for j in s.exec(select(Job))} == {"finetune-dpo"}
        (v,) = [v for v in s.exec(select(ModelVersion)) if v.method == "dpo"]
    assert v.metrics["reward_model_id"] == rid  # a run that read the reward model records which

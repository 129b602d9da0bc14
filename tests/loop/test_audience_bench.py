"""``pickloop bench audiences``: two raters in one store, a version for each and the shared one, one last line."""
from __future__ import annotations

import pytest
from sqlmodel import select

from pickloop.context import Context
from pickloop.db import read_session
from pickloop.errors import UserError
from pickloop.loop.audience_bench import FIGURES, check_tastes, run_audience_bench, split_labels
from pickloop.loop.config import LoopConfig
from pickloop.schema import Comparison, Judgement, ModelVersion, Rater, RewardModelRow


def test_each_rater_answers_about_half_and_tastes_are_checked():
    assert split_labels(200, 2) == [100, 100] and split_labels(7, 2) == [4, 3]
    for bad in (["large"], ["large", "large"], ["large", "nope"]):
        with pytest.raises(UserError):
            check_tastes(bad)


@pytest.mark.slow
def test_two_quick_rounds_train_a_version_per_rater_who_then_rates_its_images(ctx):
    ctx = Context(settings=ctx.settings.model_copy(update={"audience_min_labels": 2, "promote_max_follow_drop": 1.0}))
    config = LoopConfig(labels=16, rounds=2, candidates=2, train_prompts=4, eval_prompts=2, eval_seeds=1,
                        gate_seeds=1, dpo_steps=2, ddpo_epochs=1)
    lines: list[str] = []
    result = run_audience_bench(ctx=ctx, config=config, progress=False, log=lines.append)
    last = result.last_line
    assert [part.split("=")[0] for part in last.split()] == list(FIGURES)
    assert all(0.0 <= result.figures[k] <= 1.0 for k in FIGURES[:4])
    with read_session(ctx.engine) as s:
        per_rater = {r.name: [(j, s.get(Comparison, j.comparison_id).model_version_id) for j in
                              s.exec(select(Judgement).where(Judgement.rater_id == r.id).order_by(Judgement.id))]
                     for r in s.exec(select(Rater))}
        audiences = {row.metrics.get("audience", "everyone") for row in s.exec(select(RewardModelRow))}
        versions = s.exec(select(ModelVersion).where(ModelVersion.method != "base").order_by(ModelVersion.id)).all()
        base = s.exec(select(ModelVersion).where(ModelVersion.method == "base")).one()
    assert {k: len(v) for k, v in per_rater.items()} == {"simulated:large": 8, "simulated:small": 8}
    assert audiences == {"everyone", "rater:simulated:large", "rater:simulated:small"}
    # one DPO version per audience and round (an untrusted reward model: DPO only), each for its audience
    first = {v.audience: v.id for v in versions[:3]}
    assert set(first) == {"everyone", "rater:simulated:large", "rater:simulated:small"}
    # round 1: every set drawn by the base; round 2: each rater rates the images of the version serving them
    for name, answers in per_rater.items():
        assert [vid for _, vid in answers] == [base.id] * 4 + [first[f"rater:{name}"]] * 4, name
    assert any(line.startswith("round 1: labels large=4 small=4") for line in lines)

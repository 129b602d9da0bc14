"""``pickloop bench audiences``: two raters in one store, a version for each and the shared one, one last line."""
from __future__ import annotations

import pytest
from sqlmodel import select

from pickloop.context import Context
from pickloop.db import read_session
from pickloop.errors import UserError
from pickloop.loop.audience_bench import FIGURES, check_tastes, run_audience_bench, split_labels
from pickloop.loop.config import LoopConfig
from pickloop.schema import Judgement, ModelVersion, Rater, RewardModelRow


def test_each_rater_answers_about_half_and_tastes_are_checked():
    assert split_labels(200, 2) == [100, 100] and split_labels(7, 2) == [4, 3]
    for bad in (["large"], ["large", "large"], ["large", "nope"]):
        with pytest.raises(UserError):
            check_tastes(bad)


@pytest.mark.slow
def test_one_quick_round_trains_a_version_per_rater_and_prints_the_last_line(ctx):
    ctx = Context(settings=ctx.settings.model_copy(update={"audience_min_labels": 2, "promote_max_follow_drop": 1.0}))
    config = LoopConfig(labels=8, rounds=1, candidates=2, train_prompts=4, eval_prompts=2, eval_seeds=1,
                        gate_seeds=1, dpo_steps=2, ddpo_epochs=1)
    lines: list[str] = []
    result = run_audience_bench(ctx=ctx, config=config, progress=False, log=lines.append)
    last = result.last_line
    assert [part.split("=")[0] for part in last.split()] == list(FIGURES)
    assert all(0.0 <= result.figures[k] <= 1.0 for k in FIGURES[:4])
    with read_session(ctx.engine) as s:
        per_rater = {r.name: s.exec(select(Judgement).where(Judgement.rater_id == r.id)).all()
                     for r in s.exec(select(Rater))}
        audiences = {row.metrics.get("audience", "everyone") for row in s.exec(select(RewardModelRow))}
        versions = s.exec(select(ModelVersion).where(ModelVersion.method != "base")).all()
    assert {k: len(v) for k, v in per_rater.items()} == {"simulated:large": 4, "simulated:small": 4}
    assert audiences == {"everyone", "rater:simulated:large", "rater:simulated:small"}
    # one DPO version per audience (an untrusted reward model: DPO only), each registered for its audience
    assert sorted(v.audience for v in versions) == ["everyone", "rater:simulated:large", "rater:simulated:small"]
    assert any(line.startswith("round 1: labels large=4 small=4") for line in lines)

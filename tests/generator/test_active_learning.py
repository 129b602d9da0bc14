"""Active learning: new sets get the reward model's uncertainty as priority, and the app shows the
highest priority first (sets already handed to a rater still come first)."""
from __future__ import annotations

import math

import pytest
import torch
from sqlmodel import select

from generator.queue import fill_queue, rescore_if_new_reward_model
from pickloop.db import read_session, write_session
from pickloop.schema import Comparison, RewardModelRow
from pickloop.store import add_prompts, ensure_base_version

torch.set_num_threads(1)
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory):
    """A saved reward model (untrained head, seed 0) on a tiny random CLIP of the shapes CLIP's architecture."""
    from reward.model import RewardModel
    from tests.tiny_clip import write_random_shapes_clip

    clip = write_random_shapes_clip(tmp_path_factory.mktemp("clip"))
    out = tmp_path_factory.mktemp("reward") / "rm"
    return RewardModel.create(backbone=str(clip), head_width=0, seed=0).save(out)


def _ctx(home, tiny_sd_dir, **settings):
    from pickloop.context import Context
    from pickloop.settings import get_settings

    ctx = Context(settings=get_settings(home=home, base_model=str(tiny_sd_dir), **settings))
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=PROMPTS)
        ensure_base_version(session=s, base_model=ctx.base_model)
    return ctx


def _register(ctx, path) -> None:
    from reward.registry import weights_sha256

    with write_session(ctx.engine) as s:
        s.add(RewardModelRow(path=str(path), sha256=weights_sha256(path), backbone="tiny", data_snapshot=0))


def _priorities(ctx) -> dict[int, float | None]:
    with read_session(ctx.engine) as s:
        return {c.id: c.priority for c in s.exec(select(Comparison).order_by(Comparison.id))}


def test_sets_get_the_reward_models_uncertainty_as_priority(home, tiny_sd_dir, reward_dir):
    from feedback_app.logic import next_set_for
    from reward.model import RewardModel
    from reward.uncertainty import order_comparisons
    from tests.feedback_app.helpers import make_rater

    ctx = _ctx(home, tiny_sd_dir, active_learning=True)
    _register(ctx, reward_dir)
    assert fill_queue(ctx=ctx, depth=2, n=3, worker_id="w", progress=False) == 6
    prio = _priorities(ctx)
    assert all(p is not None and 0.0 <= p <= 1.0 for p in prio.values()), prio
    # the stored value is the model's uncertainty about the stored images: 1 - |sigmoid(r1 - r2) - 0.5| * 2
    for u in order_comparisons(ctx=ctx, model=RewardModel.load(reward_dir), comparison_ids=list(prio)):
        assert prio[u.key] == pytest.approx(1.0 - abs(1.0 / (1.0 + math.exp(-u.margin)) - 0.5) * 2.0, abs=1e-5)
    # the app hands the least certain sets out first (6 sets: id order matches by chance 1 in 720)
    who, _ = make_rater(ctx, "alice")
    shown: list[int] = []
    with write_session(ctx.engine) as s:
        for _ in prio:
            shown.append(next_set_for(session=s, rater_id=who.rater_id, settings=ctx.settings,
                                      skip=shown).comparison_id)
    assert shown == sorted(prio, key=lambda k: (-prio[k], k))


def test_no_priority_when_the_setting_is_off_or_no_reward_model(home, tiny_sd_dir, reward_dir):
    ctx = _ctx(home, tiny_sd_dir)  # active_learning defaults to off
    assert ctx.settings.active_learning is False
    _register(ctx, reward_dir)
    fill_queue(ctx=ctx, depth=1, n=2, worker_id="w", max_sets=1, progress=False)
    on = _ctx(home.parent / "home2", tiny_sd_dir, active_learning=True)  # on, but nothing registered
    fill_queue(ctx=on, depth=1, n=2, worker_id="w", max_sets=1, progress=False)
    assert list(_priorities(ctx).values()) == [None] and list(_priorities(on).values()) == [None]


def test_next_set_for_orders_by_priority_nulls_last_pending_first(db_url, home):
    """On SQLite and PostgreSQL (where DESC puts NULLs first unless told otherwise)."""
    from feedback_app.logic import next_set_for
    from pickloop.context import Context
    from pickloop.settings import get_settings
    from tests.feedback_app.helpers import make_rater, make_sets

    ctx = Context(settings=get_settings(home=home, database_url=db_url))
    ids = make_sets(ctx, 5, per_set=2)
    wanted = {ids[0]: 0.2, ids[1]: 0.9, ids[2]: None, ids[3]: 0.5, ids[4]: None}
    with write_session(ctx.engine) as s:
        for cid, p in wanted.items():
            s.get(Comparison, cid).priority = p
    alice, _ = make_rater(ctx, "alice")
    bob, _ = make_rater(ctx, "bob")
    with write_session(ctx.engine) as s:
        held = next_set_for(session=s, rater_id=alice.rater_id, settings=ctx.settings).comparison_id
        s.get(Comparison, ids[4]).priority = 1.0  # a set rising above the one alice already holds
    assert held == ids[1]
    with write_session(ctx.engine) as s:
        assert next_set_for(session=s, rater_id=alice.rater_id, settings=ctx.settings).comparison_id == held
    order = []
    with write_session(ctx.engine) as s:
        for _ in range(4):
            order.append(next_set_for(session=s, rater_id=bob.rater_id, settings=ctx.settings,
                                      skip=order).comparison_id)
    assert order == [ids[4], ids[3], ids[0], ids[2]]  # ids[1] is alice's; NULLs last, then oldest


def test_waiting_sets_are_rescored_when_a_new_reward_model_arrives(home, tiny_sd_dir, reward_dir, tmp_path):
    from reward.model import RewardModel
    from reward.uncertainty import order_comparisons
    from tests.tiny_clip import write_random_shapes_clip

    ctx = _ctx(home, tiny_sd_dir, active_learning=True)
    fill_queue(ctx=ctx, depth=1, n=3, worker_id="w", progress=False)  # no reward model yet: no priority
    assert set(_priorities(ctx).values()) == {None}
    assert rescore_if_new_reward_model(ctx, None) is None  # nothing registered: nothing to do
    _register(ctx, reward_dir)
    first = rescore_if_new_reward_model(ctx, None)
    after_first = _priorities(ctx)
    assert first is not None and all(p is not None for p in after_first.values())
    assert rescore_if_new_reward_model(ctx, first) == first  # the same model: nothing re-scored
    # A newer reward model (another random head and backbone) re-scores every waiting set with its own view.
    clip = write_random_shapes_clip(tmp_path / "clip2", seed=7)
    newer_dir = RewardModel.create(backbone=str(clip), head_width=0, seed=3).save(tmp_path / "rm2")
    _register(ctx, newer_dir)
    second = rescore_if_new_reward_model(ctx, first)
    assert second is not None and second > first
    after = _priorities(ctx)
    expected = {u.key: 1.0 - abs(u.p_best - 0.5) * 2.0
                for u in order_comparisons(ctx=ctx, model=RewardModel.load(newer_dir), comparison_ids=list(after))}
    assert after == pytest.approx(expected, abs=1e-6) and after != after_first

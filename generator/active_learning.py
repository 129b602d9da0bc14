"""Active learning for the ready queue: each new set's priority is how little the newest reward model
can tell its two best candidates apart; the sets already waiting are re-scored when a newer reward
model is registered. On only with ``settings.active_learning``.
"""
from __future__ import annotations

import logging

from sqlalchemy import update
from sqlmodel import select

from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Comparison, Prompt

log = logging.getLogger("pickloop.queue")


def load_reward_model_for_queue(ctx):  # noqa: ANN001, ANN201 - RewardModel | None
    """The newest registered reward model when ``settings.active_learning`` is on, else None
    (also None when none is registered or it cannot be loaded: the sets then get no priority)."""
    if not ctx.settings.active_learning:
        return None
    from reward import load_latest  # reward imports torch/transformers: only when wanted

    try:
        return load_latest(ctx=ctx)
    except UserError:
        return None


def set_priority(reward_model, prompt: str, images: list, image_keys: list[str]) -> float:  # noqa: ANN001
    """Uncertainty of a set in [0, 1]: 1 - |P(best beats runner-up) - 0.5| * 2, where P = sigmoid(r1 - r2)
    of the reward model's two best scores (uncertainty sampling, Lewis & Gale 1994). 1 = the model cannot
    tell them apart (a pick teaches it most); 0 = it is sure (or the set has fewer than two images)."""
    from reward import CandidateSet, set_uncertainty

    return _priority(set_uncertainty(reward_model, [CandidateSet(prompt, images, image_keys=image_keys)])[0].p_best)


def _priority(p_best: float) -> float:
    return min(1.0, max(0.0, 1.0 - abs(p_best - 0.5) * 2.0))


def rescore_ready_sets(*, ctx, reward_model, pool: str | None = None, batch: int = 32) -> int:  # noqa: ANN001
    """Set every ready set's priority from ``reward_model`` (what a newer reward model is unsure about
    differs from what the one that drew them was); returns how many sets were scored."""
    from reward import order_comparisons

    q = select(Comparison.id).where(Comparison.status == "ready").order_by(Comparison.id)
    if pool is not None:
        q = q.join(Prompt, Comparison.prompt_id == Prompt.id).where(Prompt.pool == pool)
    with read_session(ctx.engine) as s:
        ids = list(s.exec(q))
    done = 0
    for start in range(0, len(ids), batch):
        scored = order_comparisons(ctx=ctx, model=reward_model, comparison_ids=ids[start:start + batch])
        with write_session(ctx.engine) as s:
            for u in scored:
                s.execute(update(Comparison).where(Comparison.id == u.key, Comparison.status == "ready")
                          .values(priority=_priority(u.p_best)))
        done += len(scored)
    return done


def rescore_if_new_reward_model(ctx, scored_with: int | None, *, pool: str | None = None) -> int | None:  # noqa: ANN001
    """With active learning on, re-score the ready sets once a reward model newer than ``scored_with``
    (a registry id) is registered; returns the id the queue is now scored with."""
    from reward import latest_reward_model_id

    if not ctx.settings.active_learning:
        return scored_with
    with read_session(ctx.engine) as s:
        latest = latest_reward_model_id(session=s)
    if latest is None or latest == scored_with:
        return scored_with
    model = load_reward_model_for_queue(ctx)
    if model is None:
        return scored_with
    n = rescore_ready_sets(ctx=ctx, reward_model=model, pool=pool)
    log.info("re-scored %d ready sets with reward model %d", n, latest)
    return latest

"""Active learning: which candidate sets would a rater's pick teach the reward model most?

For each set, the model scores every candidate; the set's margin is the gap between its two best
scores, |r1 - r2|, and P = sigmoid(r1 - r2) is the model's belief that the best beats the runner-up.
A set with a small margin (P near 0.5) is one the model cannot tell apart, so the queue shows those
first (uncertainty sampling, as in Lewis & Gale 1994).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

from PIL import Image

from reward.model import RewardModel, image_key


@dataclass(frozen=True)
class CandidateSet:
    """A prompt and the images shown together for it; ``key`` names the set for the caller
    (e.g. a comparison id); ``image_keys`` (e.g. sha256s) let the model reuse cached features."""

    prompt: str
    images: Sequence[Image.Image]
    key: Hashable = None
    image_keys: Sequence[str] | None = None


@dataclass(frozen=True)
class SetUncertainty:
    key: Hashable
    index: int  # position in the input list
    margin: float  # |r1 - r2| of the two best candidates, in score units
    p_best: float  # sigmoid(r1 - r2), in [0.5, 1]; 0.5 = cannot tell apart
    best: int  # position of the best-scored candidate within its set


def set_uncertainty(model: RewardModel, sets: Sequence[CandidateSet]) -> list[SetUncertainty]:
    """The margin of every set, in input order (sets with fewer than two images get margin inf)."""
    prompts, images, keys, owner = [], [], [], []
    for i, s in enumerate(sets):
        ks = list(s.image_keys) if s.image_keys is not None else [None] * len(s.images)
        for im, k in zip(s.images, ks):
            prompts.append(s.prompt)
            images.append(im)
            keys.append(k)
            owner.append(i)
    if any(k is None for k in keys):
        keys = [k if k is not None else image_key(im) for k, im in zip(keys, images)]
    scores = model.score(prompts, images, keys).tolist() if images else []
    per_set: list[list[float]] = [[] for _ in sets]
    for i, r in zip(owner, scores):
        per_set[i].append(r)
    out = []
    for i, (s, rs) in enumerate(zip(sets, per_set)):
        if len(rs) < 2:
            out.append(SetUncertainty(s.key, i, math.inf, 1.0, 0))
            continue
        order = sorted(range(len(rs)), key=lambda j: -rs[j])
        margin = rs[order[0]] - rs[order[1]]
        out.append(SetUncertainty(s.key, i, margin, 1.0 / (1.0 + math.exp(-margin)), order[0]))
    return out


def most_uncertain(model: RewardModel, sets: Sequence[CandidateSet], k: int | None = None) -> list[SetUncertainty]:
    """The sets ordered from least to most certain (smallest margin first); the first ``k`` when given.
    Ties in margin keep input order, so the queue's own order breaks them."""
    ranked = sorted(set_uncertainty(model, sets), key=lambda u: (u.margin, u.index))
    return ranked if k is None else ranked[:k]


def order_comparisons(*, ctx, model: RewardModel,  # noqa: ANN001
                      comparison_ids: Sequence[int]) -> list[SetUncertainty]:
    """Stored sets (comparison ids) from least to most certain, images read from the image store.
    The queue calls this to show the sets a pick would teach the model most first."""
    from pickloop.db import read_session
    from pickloop.schema import Comparison, Prompt
    from pickloop.store import candidates_of

    rows = []
    with read_session(ctx.engine) as s:
        for cid in comparison_ids:
            comp = s.get(Comparison, cid)
            if comp is None:
                continue
            prompt = s.get(Prompt, comp.prompt_id).text
            rows.append((cid, prompt, [c.image_sha256 for c in candidates_of(session=s, comparison_id=cid)]))
    sets = [CandidateSet(prompt, [ctx.images.open(sha) for sha in shas], key=cid, image_keys=shas)
            for cid, prompt, shas in rows]
    return most_uncertain(model, sets)

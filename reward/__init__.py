"""The preference reward model (CLIP + head, Bradley-Terry): train, evaluate, score, and the registry of
trained models. Other stages import these names only, never a module of this package:

    from reward import load_latest, train_reward
    model = load_latest(ctx=ctx)
    scores = model.score(prompts, images)

Names are imported lazily so that ``pickloop --help`` does not load torch.
"""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "RewardModel": "reward.model", "RewardConfig": "reward.config",
    "train_reward": "reward.train", "train_on_pairs": "reward.train",
    "find_reward_model": "reward.registry", "latest_reward_model_id": "reward.registry",
    "load_reward_model": "reward.registry", "load_latest": "reward.registry",
    "resolve_reward_model": "reward.registry", "weights_sha256": "reward.registry",
    "CandidateSet": "reward.uncertainty", "set_uncertainty": "reward.uncertainty",
    "order_comparisons": "reward.uncertainty",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

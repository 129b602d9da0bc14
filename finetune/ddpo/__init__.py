"""DDPO (Black et al. 2023) with a LoRA on the U-Net: ``config`` (DDPOConfig), ``sampler`` (stochastic DDIM
with log-probabilities), ``rewards`` (reward functions), ``stats`` (per-prompt normalisation), ``loss``
(PPO), ``guard`` (drift guard), ``train`` (``train_ddpo``), ``job`` (``run_ddpo`` on the data home)."""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "DDPOConfig": "finetune.ddpo.config",
    "make_reward": "finetune.ddpo.rewards", "RewardFn": "finetune.ddpo.rewards",
    "PerPromptStatTracker": "finetune.ddpo.stats", "ppo_loss": "finetune.ddpo.loss",
    "DriftGuard": "finetune.ddpo.guard", "DriftLimits": "finetune.ddpo.guard",
    "DDPOState": "finetune.ddpo.train", "train_ddpo": "finetune.ddpo.train",
    "DDPOResult": "finetune.ddpo.job", "run_ddpo": "finetune.ddpo.job",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

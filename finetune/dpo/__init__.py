"""Diffusion-DPO (Wallace et al. 2023) with a LoRA on the U-Net: ``config`` (DPOConfig, PairSpec),
``loss`` (``dpo_loss`` from the four denoising errors, ``denoising_errors`` from the U-Net), ``train``
(``train_dpo``), ``ai_feedback`` (pairs ranked by the reward model), ``job`` (``run_dpo`` on the store;
``python -m finetune.dpo``)."""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "DPOConfig": "finetune.dpo.config", "PairSpec": "finetune.dpo.config",
    "dpo_loss": "finetune.dpo.loss", "denoising_errors": "finetune.dpo.loss",
    "DPOResult": "finetune.dpo.train", "train_dpo": "finetune.dpo.train",
    "normalised_weights": "finetune.dpo.train", "noise_and_timesteps": "finetune.dpo.train",
    "ai_feedback_pairs": "finetune.dpo.ai_feedback",
    "store_pairs": "finetune.dpo.job", "run_dpo": "finetune.dpo.job",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

"""The PPO clipped objective of DDPO (Schulman et al. 2017; Black et al. 2023)."""
from __future__ import annotations

import torch


def ppo_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
             clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped objective over a batch: (scalar loss, ratio (B,)). All inputs (B,)."""
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped).mean(), ratio

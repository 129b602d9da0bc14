"""The Diffusion-DPO loss (Wallace et al. 2023): ``dpo_loss``, a pure function of the four denoising
errors, and ``denoising_errors``, the U-Net passes that produce them. A step is
``dpo_loss(*denoising_errors(unet, ...), beta, weights)``; see finetune/dpo/train.py for the whole objective.

``beta`` follows the official code (SalesforceAIResearch/DiffusionDPO), which keeps the 1/2 of the paper's
loss; diffusers' research example drops it, so the same number is twice as strong there."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from finetune import lora as lora_io
from finetune import models as fm


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor, beta: float,
             weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Diffusion-DPO loss as a pure function of the four per-pair denoising errors, each (B,): the
    policy's on winner and loser, the reference's on winner and loser (same noise and t for all four).

    d = (err_w - ref_w) - (err_l - ref_l); loss = -log sigmoid(-beta/2 * d) (Wallace et al. 2023,
    with the official code's 1/2). It falls when the policy denoises the winner better, or the loser
    worse, than the reference does. ``weights`` (B,): per-pair loss weights, already divided by the mean
    weight of the whole pair set (see :func:`finetune.dpo.train.normalised_weights`); the batch loss is
    mean(w * loss), so over an epoch it estimates the weighted mean sum(w l) / sum(w) without depending on
    how pairs fall into micro-batches or processes. None = all 1 (the unweighted mean).
    Returns (batch loss, per-pair unweighted tensors loss/implicit_acc/gap_w/gap_l of shape (B,)).
    """
    gap_w, gap_l = err_w - ref_w, err_l - ref_l
    inside = -0.5 * beta * (gap_w - gap_l)
    losses = -F.logsigmoid(inside)
    batch_loss = losses.mean() if weights is None else (losses * weights.to(losses)).mean()
    return batch_loss, {"loss": losses.detach(), "implicit_acc": (inside > 0).float().detach(),
                        "gap_w": gap_w.detach(), "gap_l": gap_l.detach()}


def denoising_errors(unet: torch.nn.Module, noise_scheduler: Any, lat_w: torch.Tensor, lat_l: torch.Tensor,
                     cond: dict[str, Any], noise: torch.Tensor, timesteps: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four per-pair denoising errors of :func:`dpo_loss`, each (B,), for a batch of B pairs (latents
    (B, C, h, w)); winner and loser share noise and t.

    Winners and losers go through the U-Net as one batch of 2B, once under the reference (the frozen parent
    adapter, no autograd) and once under the policy. Returns (err_w, err_l, ref_w, ref_l): the mean squared
    error of the prediction against the scheduler's target (epsilon or v) per image.
    """
    x0 = torch.cat([lat_w, lat_l])
    eps = torch.cat([noise, noise])
    t = torch.cat([timesteps, timesteps])
    noisy = noise_scheduler.add_noise(x0, eps, t)
    target = fm.diffusion_target(noise_scheduler, x0, eps, t).float()
    kwargs = fm.repeat_conditioning(cond, 2)
    with torch.no_grad(), lora_io.reference_model(unet) as reference:  # trainable adapter active again after
        ref = reference(noisy, t, **kwargs).sample.float()
        ref_err = (ref - target).pow(2).mean(dim=(1, 2, 3))
    pred = unet(noisy, t, **kwargs).sample.float()
    err = (pred - target).pow(2).mean(dim=(1, 2, 3))
    err_w, err_l = err.chunk(2)
    ref_w, ref_l = ref_err.chunk(2)
    return err_w, err_l, ref_w, ref_l

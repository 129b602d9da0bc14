"""DDPO: reinforcement learning of a U-Net LoRA against a reward (Black et al. 2023, DDPO-IS / PPO).

Each epoch: draw images with the stochastic DDIM sampler, recording every step's log-probability;
score them with a reward function; normalise each reward by the recent rewards of its prompt;
then a few PPO passes over the stored steps, and a drift check against the base model.

    ratio = exp(log p_theta(x_{t-1} | x_t) - log p_old(x_{t-1} | x_t))
    loss  = mean(max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)))      (PPO, Schulman et al. 2017)

``finetune.ddpo.job.run_ddpo`` fits this loop to the job machinery (``pickloop finetune run --method ddpo``):
prompts and reward from the data home, a checkpoint per epoch (``finetune.checkpoint``), the final LoRA
written atomically.
"""
from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from finetune.ddpo.config import DDPOConfig
from finetune.ddpo.guard import DriftGuard, DriftLimits
from finetune.ddpo.loss import ppo_loss
from finetune.ddpo.rewards import RewardFn
from finetune.ddpo.sampler import (
    Trajectories,
    decode_images,
    encode_prompts,
    make_ddim_scheduler,
    policy_log_prob,
    sample_trajectories,
    step_std,
    to_pil,
)
from finetune.ddpo.stats import PerPromptStatTracker
from finetune.lora import adapters_disabled, add_lora, lora_parameters, lora_tensors, set_lora_tensors
from pickloop.errors import UserError


@dataclass
class DDPOState:
    """What a resumed run needs besides the LoRA weights: optimizer, stat buffers, last good LoRA."""

    epoch: int = 0  # epochs completed
    optimizer: dict | None = None
    tracker: dict[str, list[float]] = field(default_factory=dict)
    last_good_lora: dict[str, torch.Tensor] | None = None
    history: list[dict] = field(default_factory=list)
    stopped: str | None = None
    over_limit: int = 0  # epochs in a row (up to now) past a drift limit, within ``drift_patience``


def _epoch_prompts(pool: Sequence[str], n: int, seed: int, epoch: int, rank: int, per_prompt: int = 1) -> list[str]:
    """An epoch's ``n`` prompts on one process: ``per_prompt`` copies in a row of each drawn prompt.

    Prompts are drawn without replacement (a fresh shuffle of the pool, and another when it runs out), so
    an epoch covers as many distinct prompts as it has groups; the last group may be cut short.
    """
    rng = random.Random(f"ddpo-{seed}-{epoch}-{rank}")
    drawn: list[str] = []
    while len(drawn) < -(-n // per_prompt):
        order = list(pool)
        rng.shuffle(order)
        drawn.extend(order)
    return [p for p in drawn[:-(-n // per_prompt)] for _ in range(per_prompt)][:n]


def sample_epoch(pipe, unet, scheduler, pool, reward_fn: RewardFn, config: DDPOConfig, epoch: int,  # noqa: ANN001
                 accelerator) -> tuple[Trajectories, torch.Tensor]:  # noqa: ANN001
    """Draw this epoch's trajectories and their rewards (B_total,) on this process."""
    unet.eval()
    parts, rewards = [], []
    size = config.sample_batch_size
    epoch_prompts = _epoch_prompts(pool, size * config.sample_batches_per_epoch, config.seed, epoch,
                                   accelerator.process_index, config.images_per_prompt)
    # every prompt of the epoch through the text encoder in one call, once
    embeds, negative = encode_prompts(pipe, epoch_prompts, accelerator.device)
    for b in range(config.sample_batches_per_epoch):
        rows = slice(b * size, (b + 1) * size)
        prompts = epoch_prompts[rows]
        gen = torch.Generator(device=accelerator.device).manual_seed(
            ((config.seed * 100_003 + epoch) * 1_009 + b) * 64 + accelerator.process_index)
        traj = sample_trajectories(pipe, unet, scheduler, prompts, steps=config.steps, guidance=config.guidance,
                                   eta=config.eta, generator=gen, embeds=(embeds[rows], negative[rows]))
        images = to_pil(decode_images(pipe, traj.final_latents))
        rewards.append(torch.as_tensor(reward_fn(prompts, images), dtype=torch.float32).reshape(-1).cpu())
        parts.append(traj)
    return Trajectories.concat(parts), torch.cat(rewards)


def gathered_advantages(prompts: list[str], rewards: torch.Tensor, tracker: PerPromptStatTracker,
                        accelerator) -> torch.Tensor:  # noqa: ANN001
    """Advantages for this process's samples, normalised over the rewards of all processes."""
    from accelerate.utils import gather_object

    all_rewards = accelerator.gather(rewards.to(accelerator.device)).cpu()
    all_prompts = gather_object(list(prompts)) if accelerator.num_processes > 1 else list(prompts)
    adv = tracker.update(all_prompts, all_rewards)
    n = len(prompts)
    return adv[accelerator.process_index * n:(accelerator.process_index + 1) * n]


def trainable_steps(scheduler, timesteps: torch.Tensor, config: DDPOConfig) -> torch.Tensor:  # noqa: ANN001
    """Indices of a trajectory's steps (timesteps (T,)) whose sigma_t reaches ``config.min_step_std``."""
    keep = step_std(scheduler, timesteps.cpu(), config.eta) >= config.min_step_std
    if not keep.any():
        raise UserError(f"no DDIM step has sigma_t >= min_step_std {config.min_step_std}: lower it")
    return torch.nonzero(keep).flatten()


def train_epoch(unet, scheduler, traj: Trajectories, advantages: torch.Tensor, config: DDPOConfig,  # noqa: ANN001
                optimizer, params, accelerator, epoch: int) -> dict[str, float]:  # noqa: ANN001
    """PPO inner epochs over the stored steps; returns loss, approx_kl, clipfrac, first_ratio_dev."""
    unet.train()
    device = accelerator.device
    adv = advantages.clamp(-config.adv_clip, config.adv_clip).to(device)
    n = traj.timesteps.shape[0]
    steps = trainable_steps(scheduler, traj.timesteps[0], config)
    n_t = max(1, math.ceil(config.timestep_fraction * len(steps)))
    g = torch.Generator().manual_seed(config.seed * 7919 + epoch)
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio_dev = None
    for _ in range(config.inner_epochs):
        order = torch.randperm(n, generator=g)
        time_perm = torch.stack([steps[torch.randperm(len(steps), generator=g)] for _ in range(n)])  # per-sample order
        batches = order.split(config.train_batch_size)
        for bi, idx in enumerate(batches):
            rows = torch.arange(len(idx))
            last_of_group = (bi + 1) % config.grad_accum_batches == 0 or bi + 1 == len(batches)
            for j in range(n_t):
                cols = time_perm[idx, j]
                sync = last_of_group and j == n_t - 1
                with (nullcontext() if sync else accelerator.no_sync(unet)):
                    with accelerator.autocast():
                        logp = policy_log_prob(unet, scheduler, traj.latents[idx][rows, cols],
                                               traj.timesteps[idx][rows, cols], traj.next_latents[idx][rows, cols],
                                               traj.embeds[idx], traj.negative_embeds[idx], config.guidance,
                                               config.eta)
                    old = traj.log_probs[idx][rows, cols]
                    loss, ratio = ppo_loss(logp, old, adv[idx], config.clip_range)
                    accelerator.backward(loss / (n_t * config.grad_accum_batches))
                if first_ratio_dev is None:
                    first_ratio_dev = float((ratio.detach() - 1).abs().max())
                stats["loss"].append(float(loss.detach()))
                stats["approx_kl"].append(float(0.5 * ((logp.detach() - old) ** 2).mean()))
                stats["clipfrac"].append(float(((ratio.detach() - 1).abs() > config.clip_range).float().mean()))
            if last_of_group:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out["first_ratio_dev"] = first_ratio_dev
    return out


def make_guard(pipe, unet, scheduler, prompts: Sequence[str], config: DDPOConfig) -> DriftGuard:  # noqa: ANN001
    """A drift guard on ``prompts`` whose base images are drawn now, with the adapters off."""
    limits = DriftLimits(config.drift_max_pixel, config.drift_max_follow_drop)
    guard = DriftGuard(pipe, unet, scheduler, list(prompts), steps=config.steps, guidance=config.guidance,
                       eta=config.eta, seed=config.seed + 10_007, limits=limits)
    with adapters_disabled(unet):
        guard.record_base()
    return guard


def check_drift(guard: DriftGuard, unet, row: dict, state: DDPOState, config: DDPOConfig) -> str | None:  # noqa: ANN001
    """Measure drift into ``row``; past a limit for more than ``config.drift_patience`` epochs in a row, roll back
    (per config) and return the stop reason. An epoch past a limit within the patience is not a good epoch
    (``state.last_good_lora`` stays where it was) but the run goes on: one noisy epoch does not end it."""
    unet.eval()
    row.update(guard.measure())
    reason = guard.crossed(row)
    state.over_limit = state.over_limit + 1 if reason else 0
    row["drift_over"] = reason
    if reason is None or state.over_limit <= config.drift_patience:
        return None
    return _roll_back(unet, state, config, f"epoch {row['epoch']}: {reason}")


def _roll_back(unet, state: DDPOState, config: DDPOConfig, reason: str) -> str:  # noqa: ANN001
    if config.drift_action == "rollback":
        set_lora_tensors(unet, state.last_good_lora)
        reason += "; rolled back to the last good LoRA"
    return reason + "; stopped"


def _progress(iterable, enabled: bool, accelerator):  # noqa: ANN001, ANN202
    if not enabled or not accelerator.is_main_process:
        return iterable

    return tqdm(iterable, desc="ddpo", unit="epoch")


def train_ddpo(pipe, prompts: Sequence[str], reward_fn: RewardFn, config: DDPOConfig,  # noqa: ANN001
               progress: bool = True, *, drift_prompts: Sequence[str] = (), state: DDPOState | None = None,
               on_epoch_end: Callable[[DDPOState, Any, Any], None] | None = None,
               accelerator=None) -> tuple[dict[str, torch.Tensor], list[dict]]:  # noqa: ANN001
    """Train a LoRA on ``pipe.unet`` with DDPO; returns (LoRA tensors by peft name, per-epoch history).

    ``pipe`` is a StableDiffusionPipeline; a LoRA of ``config.lora_rank`` is added to its U-Net unless
    one is there (a resumed run). ``drift_prompts`` are the held-out prompts of the drift guard (none:
    no guard). ``state`` resumes a run; ``on_epoch_end(state, unet, optimizer)`` is called after every
    epoch on every process (for checkpoints). History rows: epoch, reward_mean, reward_std, loss,
    approx_kl, clipfrac, first_ratio_dev (max |ratio - 1| of the first PPO batch: 0 when sampling and
    training agree), drift_pixel, drift_follow, drift_follow_drop, guard (the stop reason or None),
    sample_s (drawing, decoding, scoring), train_s (PPO), epoch_s (both plus the drift guard), seconds,
    and the same three on this process's CPU clock (sample_cpu_s, train_cpu_s, epoch_cpu_s).
    """
    from accelerate import Accelerator

    if not prompts:
        raise ValueError("no prompts to train on")
    accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
    torch.manual_seed(config.seed)
    pipe.to(accelerator.device)
    pipe.vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    if not getattr(pipe.unet, "peft_config", None):
        add_lora(pipe.unet, rank=config.lora_rank)
    params = lora_parameters(pipe.unet)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    scheduler = make_ddim_scheduler(pipe)
    state = state or DDPOState()
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    tracker = PerPromptStatTracker(config.stat_buffer, config.stat_min_count)
    tracker.load_state_dict(state.tracker)
    guard = make_guard(pipe, unet, scheduler, drift_prompts, config) if drift_prompts else None
    if state.last_good_lora is None:
        state.last_good_lora = lora_tensors(unet)
    for epoch in _progress(range(state.epoch, config.epochs), progress, accelerator):
        if state.stopped:
            break
        t0, c0 = time.perf_counter(), time.process_time()
        traj, rewards = sample_epoch(pipe, unet, scheduler, prompts, reward_fn, config, epoch, accelerator)
        t1, c1 = time.perf_counter(), time.process_time()
        adv = gathered_advantages(traj.prompts, rewards, tracker, accelerator)
        train_stats = train_epoch(unet, scheduler, traj, adv, config, optimizer, params, accelerator, epoch)
        t2, c2 = time.perf_counter(), time.process_time()
        row = {"epoch": epoch, "reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
               **train_stats, "guard": None}
        if guard is not None:
            state.stopped = row["guard"] = check_drift(guard, unet, row, state, config)
        if not state.stopped and not state.over_limit:
            state.last_good_lora = lora_tensors(unet)
        row["kept"] = not state.stopped and not state.over_limit  # an epoch within every limit
        row.update(sample_s=t1 - t0, train_s=t2 - t1, epoch_s=time.perf_counter() - t0,
                   sample_cpu_s=c1 - c0, train_cpu_s=c2 - c1, epoch_cpu_s=time.process_time() - c0)
        state.history.append(row)
        state.epoch = epoch + 1
        state.optimizer = optimizer.state_dict()
        state.tracker = tracker.state_dict()
        if on_epoch_end is not None:
            on_epoch_end(state, unet, optimizer)
    if state.over_limit and not state.stopped and state.history:  # the last epochs ended past a limit
        last = state.history[-1]
        state.stopped = last["guard"] = _roll_back(unet, state, config, f"epoch {last['epoch']}: {last['drift_over']} "
                                                                         "at the last epoch")
        state.over_limit = 0
    return lora_tensors(unet), state.history

"""Diffusion-DPO (Wallace et al. 2023, "Diffusion Model Alignment Using Direct Preference Optimization")
with a LoRA on the U-Net, trained on the raters' picks.

For a pair (winner x_w, loser x_l) of one prompt c, one noise eps and one timestep t shared by both:
    err(x)     = mean over latent dims of ||target - unet_theta(x_t, t, c)||^2
    ref_err(x) = the same under the reference model: the parent (see below)
    d          = (err(x_w) - ref_err(x_w)) - (err(x_l) - ref_err(x_l))
    loss       = -log sigmoid(-beta/2 * d), averaged over pairs with weights w (human picks 1,
                 pairs ranked by the reward model ``ai_feedback_weight``; see finetune/dpo/ai_feedback.py)
where target is eps or v as the scheduler predicts. Logged: loss, implicit_acc (share of pairs with
-beta/2 * d > 0), gap_w = err_w - ref_err_w and gap_l = err_l - ref_err_l.

A run continues from its parent, the promoted version (``parent``, a ``finetune.lora.ParentLora``):
the trainable LoRA starts as a copy of the parent's and the reference model is the parent itself, a
second, frozen adapter loaded from the parent's file (``finetune.lora.start_lora``/``reference_model``;
one U-Net in memory, two small adapters). So each version is its parent plus what the newer labels
teach, the KL anchor of the DPO objective is the model the labels were drawn from, and the saved LoRA
is the whole model, loadable alone. By default (``since_parent``) a stacked run trains on the labels
newer than the parent's data snapshot only: the parent has already learned the older ones, and training
on them again would count them once more every round. When the parent is the base (no LoRA), the
LoRA starts at zero and the reference is the base U-Net with the adapters disabled, as in the paper.

Data order is a pure function of (seed, step): global sample p = step * G + slot (G = batch x
accumulation x processes) is pair perm_e[p mod n] of epoch e = p // n, and its noise and timestep come
from a generator seeded by (seed, p). So a resumed run skips exactly the samples already seen, and
N processes give the same update as one process with N times the accumulation.
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from finetune import checkpoint as ckpt
from finetune import lora as lora_io
from finetune import models as fm
from finetune.dpo.config import DPOConfig, PairSpec
from finetune.dpo.loss import denoising_errors, dpo_loss
from pickloop.errors import UserError

STAT_NAMES = ("loss", "implicit_acc", "gap_w", "gap_l")  # per-pair statistics of dpo_loss, logged per step


@dataclass
class DPOResult:
    lora_dir: Path
    lora_sha256: str
    steps: int
    metrics: dict[str, float]


def normalised_weights(pairs: Sequence[PairSpec]) -> list[float] | None:
    """Each pair's weight over the set's mean weight; None when all weights are 1 (the unweighted loss,
    bit for bit as before weights existed)."""
    if all(p.weight == 1.0 for p in pairs):
        return None
    mean = sum(p.weight for p in pairs) / len(pairs)
    return [p.weight / mean for p in pairs]


@functools.lru_cache(maxsize=4)
def _epoch_order(n_pairs: int, seed: int, epoch: int) -> list[int]:
    # drawn once per epoch, not once per step (a randperm of 851k pairs costs milliseconds)
    return torch.randperm(n_pairs, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def sample_slots(n_pairs: int, seed: int, positions: Sequence[int]) -> list[int]:
    """Pair index for each global sample position (a fresh permutation per epoch)."""
    return [_epoch_order(n_pairs, seed, p // n_pairs)[p % n_pairs] for p in positions]


def noise_and_timesteps(positions: Sequence[int], seed: int, shape: tuple[int, ...],
                        num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (B, *shape) and timesteps (B,) for global sample positions; a pure function of (seed, p)."""
    noise, ts = [], []
    for p in positions:
        g = torch.Generator().manual_seed((seed * 1_000_003 + p) % (2**63 - 1))
        ts.append(int(torch.randint(0, num_train_timesteps, (1,), generator=g)))
        noise.append(torch.randn(shape, generator=g))
    return torch.stack(noise), torch.tensor(ts, dtype=torch.long)


@dataclass
class _Run:
    """One training run's moving parts, set up by :func:`_start_run`."""
    acc: Any  # accelerate.Accelerator
    m: fm.TrainModels
    unet: torch.nn.Module  # m.unet as accelerate wraps it (DDP under several processes)
    opt: Any  # AdamW over the LoRA parameters, wrapped by accelerate
    sched: Any  # the LR schedule, stepped once per optimizer step
    params: list[torch.nn.Parameter]  # the trainable LoRA parameters
    parent_sha: str | None  # sha256 of the parent LoRA (None: the base)
    per_step: int  # samples per optimizer step: batch x accumulation x processes
    shape: tuple[int, int, int]  # one latent (C, h, w)


def train_dpo(cfg: DPOConfig, *, base: str, pairs: Sequence[PairSpec], load_image: Callable[[str], Any],
              out_dir: Path | str, work_dir: Path | str | None = None, resume: bool = True,
              on_step: Callable[[int, dict[str, float]], None] | None = None,
              metadata: dict[str, Any] | None = None, parent: lora_io.ParentLora | None = None) -> DPOResult:
    """Train a Diffusion-DPO LoRA on ``pairs`` and write it to ``out_dir``; checkpoints in ``work_dir``.

    ``parent``: the LoRA to continue from and to use as the reference (None: the base; see the module
    docstring). A checkpoint records its parent; resuming it under another parent is a UserError.

    Works as one process or under ``accelerate launch`` (DDP; only the main process writes files).
    ``on_step(step, metrics)`` runs on the main process after each optimizer step (heartbeats).
    """
    pairs, weights = _usable_pairs(pairs)
    run, start = _start_run(cfg, base, parent, pairs, load_image, work_dir if resume else None)
    acc, unet, opt = run.acc, run.unet, run.opt
    rank, B = acc.process_index, cfg.batch_size
    step_stats: list[torch.Tensor] = []  # per step, on the device: read back only to log and at the end
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            first = step * run.per_step + (micro * acc.num_processes + rank) * B
            positions = list(range(first, first + B))
            with acc.accumulate(unet):
                loss, per_pair = _batch_loss(run, cfg, pairs, weights, load_image, positions)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(run.params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            for k, v in per_pair.items():
                sums[k] = sums.get(k, torch.zeros((), device=acc.device)) + v.sum()
        run.sched.step()
        stats = acc.reduce(torch.stack([sums[k] for k in STAT_NAMES]), "sum") / run.per_step
        step_stats.append(stats.detach())
        done = step + 1
        _report(run, cfg, done, stats, on_step, rate=(done - start) / max(time.perf_counter() - t0, 1e-9))
        if work_dir and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _checkpoint(run, cfg, work_dir, done)
    history = [dict(zip(STAT_NAMES, row)) for row in torch.stack(step_stats).tolist()] if step_stats else []
    summary = _summarise(history, cfg.steps - start, time.perf_counter() - t0, len(pairs))
    return _save_result(run, cfg, Path(out_dir), summary, parent, metadata)


def _usable_pairs(pairs: Sequence[PairSpec]) -> tuple[list[PairSpec], list[float] | None]:
    """The pairs with a positive weight and their normalised weights; a UserError for a bad weight or none."""
    if any(not (math.isfinite(p.weight) and p.weight >= 0) for p in pairs):
        raise UserError("pair weights must be finite and >= 0")
    pairs = [p for p in pairs if p.weight > 0]  # no gradient from them: they would only take batch slots
    if not pairs:
        raise UserError("no preference pairs to train on (need picks, not only ties/skips)")
    return pairs, normalised_weights(pairs)


def _start_run(cfg: DPOConfig, base: str, parent: lora_io.ParentLora | None, pairs: Sequence[PairSpec],
               load_image: Callable[[str], Any], work_dir: Path | str | None) -> tuple[_Run, int]:
    """Accelerator, models with the LoRA, optimizer and schedule, restored from the newest checkpoint in
    ``work_dir`` (None: a fresh start); returns the run and the step it starts at."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    # cpu=True without CUDA: under `accelerate launch --multi_gpu` / torchrun that means DDP over gloo.
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision,
                      cpu=not torch.cuda.is_available())
    acc.print(f"dpo: {acc.num_processes} process(es), {acc.distributed_type.value}, device {acc.device}")
    torch.manual_seed(cfg.seed)
    m = fm.load_train_models(base, device=acc.device, resolution=cfg.resolution)
    lora_io.start_lora(m.unet, rank=cfg.rank, alpha=cfg.alpha, targets=cfg.targets, parent=parent, reference=True)
    if cfg.gradient_checkpointing:
        m.unet.enable_gradient_checkpointing()
    m.unet.train()
    params = lora_io.lora_parameters(m.unet)  # found once: walking every parameter is per-step host work
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler("constant_with_warmup", optimizer=opt, num_warmup_steps=cfg.warmup_steps)
    parent_sha = parent.sha256 if parent else None
    start = _resume(acc, m, opt, sched, work_dir, parent_sha)
    if cfg.cache_latents:  # encode every image once, before the loop (the VAE never runs per step)
        keys = list(dict.fromkeys(k for p in pairs for k in (p.winner, p.loser)))
        for i in range(0, len(keys), 16):
            fm.latents_for(m, keys[i:i + 16], load_image, device=acc.device)
        fm.text_conditioning(m, list(dict.fromkeys(p.prompt for p in pairs)), device=acc.device)
    unet, opt = acc.prepare(m.unet, opt)  # the LR scheduler stays ours: accelerate would step it per process
    side = m.resolution // _vae_factor(m)
    return _Run(acc=acc, m=m, unet=unet, opt=opt, sched=sched, params=params, parent_sha=parent_sha,
                per_step=cfg.batch_size * cfg.grad_accum * acc.num_processes,
                shape=(m.unet.config.in_channels, side, side)), start


def _resume(acc: Any, m: fm.TrainModels, opt: torch.optim.Optimizer, sched: Any, work_dir: Path | str | None,
            parent_sha: str | None) -> int:
    """Restore the newest complete checkpoint of ``work_dir`` (LoRA, optimizer, schedule, RNG) and return its
    step; 0 when there is none. A checkpoint of another parent is a UserError."""
    latest = ckpt.latest_complete_checkpoint(work_dir) if work_dir else None
    if latest is None:
        return 0
    was = ckpt.checkpoint_extra(latest).get("parent_sha256")
    if was != parent_sha:
        raise UserError(f"checkpoint {latest} continues from parent LoRA {was or 'none (the base)'}, "
                        f"not {parent_sha or 'none (the base)'}; use a fresh work folder")
    start = ckpt.load_checkpoint(latest, unet=m.unet, optimizer=opt, lr_scheduler=sched).step
    acc.print(f"resuming from {latest.name}: step {start}, skipping {start} steps of data")
    return start


def _batch_loss(run: _Run, cfg: DPOConfig, pairs: Sequence[PairSpec], weights: list[float] | None,
                load_image: Callable[[str], Any], positions: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`dpo_loss` of :func:`denoising_errors` on the pairs at global sample ``positions``: their latents,
    prompts, noise and timesteps, both U-Net passes. Returns (batch loss, per-pair statistics (B,))."""
    acc, m = run.acc, run.m
    slots = sample_slots(len(pairs), cfg.seed, positions)
    batch = [pairs[i] for i in slots]
    w = None if weights is None else torch.tensor([weights[i] for i in slots], device=acc.device)
    lat_w = fm.latents_for(m, [p.winner for p in batch], load_image, cache=cfg.cache_latents, device=acc.device)
    lat_l = fm.latents_for(m, [p.loser for p in batch], load_image, cache=cfg.cache_latents, device=acc.device)
    cond = fm.text_conditioning(m, [p.prompt for p in batch], device=acc.device)
    noise, ts = noise_and_timesteps(positions, cfg.seed, run.shape, m.noise_scheduler.config.num_train_timesteps)
    with acc.autocast():
        errors = denoising_errors(run.unet, m.noise_scheduler, lat_w, lat_l, cond, noise.to(acc.device),
                                  ts.to(acc.device))
        return dpo_loss(*errors, cfg.beta, w)


def _report(run: _Run, cfg: DPOConfig, done: int, stats: torch.Tensor,
            on_step: Callable[[int, dict[str, float]], None] | None, rate: float) -> None:
    """Hand step ``done``'s metrics to ``on_step`` and print them every ``cfg.log_every`` steps (main process)."""
    if not run.acc.is_main_process:
        return
    log = bool(cfg.log_every and done % cfg.log_every == 0)
    metrics = dict(zip(STAT_NAMES, stats.tolist())) if (on_step is not None or log) else {}
    if on_step is not None:
        on_step(done, metrics)
    if log:
        run.acc.print(f"dpo step {done}/{cfg.steps} loss {metrics['loss']:.4f} acc {metrics['implicit_acc']:.2f} "
                      f"gap_w {metrics['gap_w']:+.2e} gap_l {metrics['gap_l']:+.2e} ({rate:.2f} steps/s)")


def _checkpoint(run: _Run, cfg: DPOConfig, work_dir: Path | str, done: int) -> None:
    """Checkpoint step ``done`` (the main process writes; every process waits for it)."""
    if run.acc.is_main_process:
        ckpt.save_checkpoint(work_dir, step=done, unet=run.unet,
                             optimizer=run.opt.optimizer if hasattr(run.opt, "optimizer") else run.opt,
                             lr_scheduler=run.sched, data_position=done * run.per_step, sdxl=run.m.sdxl,
                             keep=cfg.keep_checkpoints,
                             extra={"config_hash": cfg.config_hash(), "parent_sha256": run.parent_sha})
    run.acc.wait_for_everyone()


def _save_result(run: _Run, cfg: DPOConfig, out: Path, summary: dict[str, float],
                 parent: lora_io.ParentLora | None, metadata: dict[str, Any] | None) -> DPOResult:
    """Write the trained LoRA to ``out`` atomically (main process) with the run's config and metrics."""
    sha = ""
    if run.acc.is_main_process:
        sha = lora_io.save_lora_atomic(run.m.unet, out, sdxl=run.m.sdxl, metadata={
            "method": "dpo", "config": asdict(cfg), "config_hash": cfg.config_hash(),
            "parent": parent.describe() if parent else None, "metrics": summary, **(metadata or {})})
    run.acc.wait_for_everyone()
    return DPOResult(lora_dir=out, lora_sha256=sha, steps=cfg.steps, metrics=summary)


def _vae_factor(m: fm.TrainModels) -> int:
    return 2 ** (len(m.vae.config.block_out_channels) - 1)


def _summarise(history: list[dict[str, float]], steps_run: int, elapsed: float, n_pairs: int) -> dict[str, float]:
    tail = history[-max(1, len(history) // 4):] if history else []
    out = {f"final_{k}": sum(h[k] for h in tail) / len(tail) for k in tail[0]} if tail else {}
    out.update(steps_run=float(steps_run), seconds=round(elapsed, 3), pairs=float(n_pairs),
               steps_per_s=steps_run / elapsed if elapsed > 0 else math.nan)
    return out

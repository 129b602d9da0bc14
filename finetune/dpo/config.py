"""Diffusion-DPO settings (no torch import, so that a bad setting is refused before any model loads)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from pickloop.config_base import ConfigBase
from pickloop.errors import UserError

DEFAULT_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")  # U-Net attention projections


@dataclass
class DPOConfig(ConfigBase):
    """Diffusion-DPO settings. Defaults work on the embedded shapes model; for SD 1.5 use beta 5000,
    lr 1e-5, rank 8; for SDXL beta 5000 (see README).

    ``beta`` follows the official Diffusion-DPO code (SalesforceAIResearch/DiffusionDPO, train.py): the
    loss is -log sigmoid(-beta/2 * d), with the 1/2. Its SD 1.5 and SDXL launchers use 5000, which is the
    paper's SD 1.5 strength of 2500 on d. The diffusers research example (train_diffusion_dpo.py) has no
    1/2: its ``--beta_dpo 2500`` equals beta 5000 here, and a beta copied from it must be doubled.
    """

    rank: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float | None = field(default=None, metadata={"help": "LoRA alpha; None = rank (scale 1)"})
    targets: tuple[str, ...] = field(default=DEFAULT_TARGETS, metadata={"help": "attention modules"})
    lr: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    beta: float = field(default=2500.0, metadata={
        "help": "DPO KL strength, official-code convention (loss uses beta/2): 5000 for SD 1.5 and SDXL"})
    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=4, metadata={"help": "pairs per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    warmup_steps: int = field(default=0, metadata={"help": "linear LR warm-up, steps"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (L2); 0 = off"})
    mixed_precision: str = field(default="no", metadata={"help": "no, fp16 or bf16 (accelerate autocast)",
                                                         "choices": ("no", "fp16", "bf16")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute U-Net activations"})
    seed: int = field(default=0, metadata={"help": "seed of init, data order, noise and timesteps"})
    checkpoint_every: int = field(default=50, metadata={"help": "checkpoint every N steps; 0 = never"})
    keep_checkpoints: int = field(default=1, metadata={"help": "complete checkpoints kept"})
    cache_latents: bool = field(default=True, metadata={"help": "encode each image once (False: every step)"})
    resolution: int | None = field(default=None, metadata={"help": "training size, pixels; None = model's"})
    log_every: int = field(default=10, metadata={"help": "print metrics every N steps"})
    ai_feedback_sets: int = field(default=0, metadata={
        "help": "extra candidate sets ranked by the reward model; 0 = off"})
    ai_feedback_candidates: int = field(default=4, metadata={"help": "images per AI-feedback set (2-16)"})
    ai_feedback_weight: float = field(default=0.5, metadata={
        "help": "loss weight of an AI pair relative to a human pair"})
    since_parent: bool = field(default=True, metadata={
        "help": "continuing from a parent LoRA: train on labels newer than its data snapshot only"})

    section = "dpo"
    hash_tag = "dpo"
    # Fields that do not change the trained weights stay out of the hash (a rerun is still a no-op).
    not_hashed = ("checkpoint_every", "keep_checkpoints", "cache_latents", "log_every")
    _AI_FEEDBACK = ("ai_feedback_sets", "ai_feedback_candidates", "ai_feedback_weight")

    def validate(self) -> None:
        if not self.targets:
            raise UserError("dpo setting targets must name at least one module")
        if self.alpha is not None and not self.alpha > 0:
            raise UserError(f"dpo setting alpha must be > 0 or null, not {self.alpha}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UserError("warmup_steps, weight_decay and max_grad_norm must be >= 0")
        if self.rank < 1 or self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise UserError("rank, steps, batch_size and grad_accum must be >= 1")
        if not (self.lr > 0 and self.beta > 0):
            raise UserError("lr and beta must be > 0")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1:
            raise UserError("checkpoint_every must be >= 0 and keep_checkpoints >= 1")
        if self.ai_feedback_sets < 0:
            raise UserError(f"ai_feedback_sets must be >= 0 (0 = off), not {self.ai_feedback_sets}")
        if not 2 <= self.ai_feedback_candidates <= 16:
            raise UserError(f"ai_feedback_candidates must be 2-16, not {self.ai_feedback_candidates}")
        if not (math.isfinite(self.ai_feedback_weight) and self.ai_feedback_weight >= 0):
            raise UserError(f"ai_feedback_weight must be a finite number >= 0, not {self.ai_feedback_weight}")

    def hash_excluded(self) -> tuple[str, ...]:
        # With AI feedback off its settings change nothing, so they stay out and older hashes still hold.
        skip = self.not_hashed + (self._AI_FEEDBACK if self.ai_feedback_sets == 0 else ())
        return skip + (("since_parent",) if self.since_parent else ())  # the default: older hashes still hold


@dataclass(frozen=True)
class PairSpec:
    """One training pair: the prompt, the keys (image sha256) of winner and loser, and its loss weight
    (1.0 for a human pick; ``ai_feedback_weight`` for a pair ranked by the reward model)."""

    prompt: str
    winner: str
    loser: str
    weight: float = 1.0

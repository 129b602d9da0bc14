"""The settings of a DDPO run, in sections (sampling / training / stat tracking / reward / drift guard).

Defaults are for the embedded shapes model on a CPU (10 DDIM steps score as well as 50 there): 32 images
an epoch as 8 prompts x 4, each group normalised by its own prompt's rewards; lr 3e-3, clip_range 0.05 and
2 inner epochs, so that the score of a reward model trained on 200 simulated picks rises within ~12 epochs
(a few CPU minutes, ``pickloop bench ddpo-curve``); the last DDIM step (sigma_t ~0.03) is left out of
training, as its log-probability gradient scales with 1/sigma_t (10-30x the other steps') while its noise
barely changes the image. Recommended for Stable Diffusion 1.5 (Black et al. 2023; see README): steps 50,
guidance 5, sample_batch_size 8 x sample_batches_per_epoch 4 per GPU, images_per_prompt 1, lr 3e-4,
clip_range 1e-4, adv_clip 5, lora_rank 4, inner_epochs 1, timestep_fraction 1.0, min_step_std 0,
stat_buffer 32 / stat_min_count 16; fits in under 10 GB with LoRA.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pickloop.config_base import ConfigBase
from pickloop.errors import UserError

DRIFT_ACTIONS = ("rollback", "stop")


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:  # help: the argparse word
    return field(default=default, metadata={"help": help, **({"choices": choices} if choices else {})})


@dataclass
class DDPOConfig(ConfigBase):
    """DDPO (Black et al. 2023) with LoRA on the U-Net. Counts are per process unless stated."""

    # --- sampling
    epochs: int = _f(12, "sampling+training rounds (epochs)")
    sample_batch_size: int = _f(8, "images drawn per sampling batch, per process")
    sample_batches_per_epoch: int = _f(4, "sampling batches per epoch, per process")
    images_per_prompt: int = _f(4, "images of each drawn prompt in a sampling batch (a group whose rewards the "
                                   "stat tracker compares once stat_min_count is reached); 1 = every image "
                                   "draws its own prompt")
    steps: int = _f(10, "DDIM denoising steps per image (SD 1.5: 50)")
    guidance: float = _f(5.0, "classifier-free guidance scale")
    eta: float = _f(1.0, "DDIM noise weight in (0, 1]; 1 gives each step a full Gaussian policy")
    # --- training
    train_batch_size: int = _f(8, "trajectories per training batch, per process; equal to sample_batch_size, the "
                                  "first PPO ratio is bitwise 1 (other sizes: float rounding, ~1e-6)")
    lr: float = _f(3e-3, "AdamW learning rate of the LoRA weights")
    weight_decay: float = _f(1e-4, "AdamW weight decay")
    clip_range: float = _f(0.05, "PPO ratio clip: ratios outside [1-c, 1+c] give no gradient")
    adv_clip: float = _f(5.0, "advantages are clipped to [-adv_clip, adv_clip]")
    inner_epochs: int = _f(2, "passes of PPO over each epoch's samples")
    grad_accum_batches: int = _f(1, "training batches per optimizer step (gradients always sum over timesteps)")
    timestep_fraction: float = _f(1.0, "share of each trajectory's steps trained on, in (0, 1]")
    min_step_std: float = _f(0.05, "train only on steps whose DDIM noise std sigma_t is at least this (0: all "
                                  "steps); a last step of tiny sigma dominates the gradient with noise")
    max_grad_norm: float = _f(1.0, "gradient norm clip")
    lora_rank: int = _f(4, "LoRA rank on the U-Net attention projections (alpha = rank)")
    seed: int = _f(0, "seed of prompts, noise and LoRA init")
    mixed_precision: str = _f("no", "accelerate mixed precision: no, fp16 or bf16 (GPU)", ("no", "fp16", "bf16"))
    # --- per-prompt stat tracking
    stat_buffer: int = _f(32, "rewards kept per prompt for normalising its advantages (16-32)")
    stat_min_count: int = _f(4, "a prompt uses batch statistics until it has this many rewards (at most "
                                "images_per_prompt: each group is normalised by its own prompt's rewards)")
    # --- reward
    reward: str = _f("reward-model", "reward function: reward-model, judge, taste:NAME, brightness, redness")
    reward_path: str | None = _f(None, "reward model file/folder (reward-model); latest registered when unset")
    # --- drift guard against reward hacking
    # 16 prompts and a 2-image limit: with 8 and 0.25 the guard's noise (one image is 12.5 points) let DDPO run
    # on until the gate refused it (following 0.724 -> 0.355); stopped at the first epoch that loses two
    # images, DDPO's version passed the gate instead and the loop's `small` rose from 0.645 to 0.859
    drift_prompts: int = _f(16, "held-out prompts drawn with fixed seeds each epoch to measure drift; 0 = no guard")
    drift_max_pixel: float | None = _f(0.25, "max mean absolute change of fixed-seed images vs base (0..1); "
                                             "None disables")
    drift_max_follow_drop: float | None = _f(0.125, "max drop of the judge's prompt-following vs base (shapes "
                                                   "prompts only); None disables")
    drift_patience: int = _f(1, "epochs in a row a drift limit may be crossed before the run stops (the LoRA kept "
                                "is the last epoch within every limit): 2 of the guard's 16 images can flip by "
                                "chance in one epoch")
    drift_action: str = _f("rollback", "when drift crosses a limit: rollback (to the last good LoRA) or stop",
                           DRIFT_ACTIONS)

    section = "ddpo"
    hash_tag = "ddpo"

    def hash_excluded(self) -> tuple[str, ...]:
        # No patience is how runs behaved before the setting existed: their hashes still hold.
        return self.not_hashed + (("drift_patience",) if self.drift_patience == 0 else ())

    def validate(self) -> None:
        positive = ("epochs", "sample_batch_size", "sample_batches_per_epoch", "images_per_prompt", "steps",
                    "train_batch_size",
                    "inner_epochs", "grad_accum_batches", "lora_rank", "stat_buffer", "stat_min_count")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"ddpo {name} must be >= 1, not {getattr(self, name)}")
        if self.drift_patience < 0:
            raise UserError(f"ddpo drift_patience must be >= 0, not {self.drift_patience}")
        if self.drift_prompts < 0:
            raise UserError(f"ddpo drift_prompts must be >= 0, not {self.drift_prompts}")
        if not 0 < self.eta <= 1:
            raise UserError(f"ddpo eta must be in (0, 1], not {self.eta}")
        if not 0 < self.timestep_fraction <= 1:
            raise UserError(f"ddpo timestep_fraction must be in (0, 1], not {self.timestep_fraction}")
        for name in ("lr", "clip_range", "adv_clip", "max_grad_norm"):
            if not getattr(self, name) > 0:
                raise UserError(f"ddpo {name} must be > 0, not {getattr(self, name)}")
        if self.min_step_std < 0:
            raise UserError(f"ddpo min_step_std must be >= 0, not {self.min_step_std}")
        if self.guidance < 1:
            raise UserError(f"ddpo guidance must be >= 1, not {self.guidance}")
        if self.stat_min_count > self.stat_buffer:
            raise UserError(f"ddpo stat_min_count ({self.stat_min_count}) cannot exceed stat_buffer "
                            f"({self.stat_buffer})")
        if self.drift_action not in DRIFT_ACTIONS:
            raise UserError(f"ddpo drift_action must be one of {', '.join(DRIFT_ACTIONS)}, not {self.drift_action!r}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise UserError(f"ddpo mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        for name in ("drift_max_pixel", "drift_max_follow_drop"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise UserError(f"ddpo {name} must be > 0 or None, not {v}")

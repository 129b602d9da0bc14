"""The drift guard: DDPO against a learned reward drifts off into reward hacking within tens of epochs
(Black et al. 2023: an aesthetic reward turned every image into a line drawing), so every epoch we redraw
fixed-seed images of held-out prompts and compare them with the base model's:

- ``pixel``: mean absolute change of the fixed-seed images from the base's, in [0, 1];
- ``follow``: the shapes judge's prompt-following ("overall") on those images, a judge that was not
  optimised against; ``follow_drop`` is the base's figure minus the current one (shapes prompts only).

When a figure crosses its limit the run stops, and with ``drift_action = "rollback"`` the LoRA goes
back to the last epoch that stayed within the limits (the zero LoRA, i.e. the base, if none did).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from finetune.ddpo.sampler import decode_images, sample_trajectories, to_pil
from pickloop.shapes.judge import follow_accuracy
from pickloop.shapes.world import parse_prompt


def is_shapes_prompt(prompt: str) -> bool:
    """Whether the shapes judge can read this prompt (it fixes at least one attribute)."""
    fixed = parse_prompt(prompt)
    return "background" in fixed or any(fixed["objects"])


@dataclass
class DriftLimits:
    max_pixel: float | None  # mean absolute image change, 0..1
    max_follow_drop: float | None  # drop of the judge's overall prompt-following, 0..1


class DriftGuard:
    """Fixed-seed drift of the policy from the base model on a few held-out prompts."""

    def __init__(self, pipe, unet, scheduler, prompts: list[str], *, steps: int, guidance: float,  # noqa: ANN001
                 eta: float, seed: int, limits: DriftLimits) -> None:
        self.pipe, self.unet, self.scheduler = pipe, unet, scheduler
        self.prompts = list(prompts)
        self.steps, self.guidance, self.eta, self.seed = steps, guidance, eta, seed
        self.limits = limits
        self.use_judge = bool(self.prompts) and all(is_shapes_prompt(p) for p in self.prompts)
        self.base_images: torch.Tensor | None = None
        self.base_follow: float | None = None

    def draw(self) -> torch.Tensor:
        """Fixed-seed images (P, 3, H, W) in [0, 1] of the guard's prompts under the current U-Net."""
        gen = torch.Generator(device=self.pipe.unet.device).manual_seed(self.seed)
        traj = sample_trajectories(self.pipe, self.unet, self.scheduler, self.prompts, steps=self.steps,
                                   guidance=self.guidance, eta=self.eta, generator=gen)
        return decode_images(self.pipe, traj.final_latents)

    def _follow(self, images: torch.Tensor) -> float | None:
        if not self.use_judge:
            return None

        return follow_accuracy(self.prompts, to_pil(images))["overall"]

    def record_base(self) -> dict[str, float | None]:
        """Draw the base images (call with the LoRA at zero or disabled)."""
        self.base_images = self.draw()
        self.base_follow = self._follow(self.base_images)
        return {"drift_pixel": 0.0, "drift_follow": self.base_follow, "drift_follow_drop": 0.0}

    def measure(self) -> dict[str, float | None]:
        """drift_pixel, drift_follow and drift_follow_drop of the current U-Net."""
        if self.base_images is None:
            raise RuntimeError("record_base() first")
        images = self.draw()
        follow = self._follow(images)
        return {"drift_pixel": float((images - self.base_images).abs().mean()),
                "drift_follow": follow,
                "drift_follow_drop": None if follow is None else float(self.base_follow - follow)}

    def crossed(self, drift: dict[str, float | None]) -> str | None:
        """A one-line reason when a figure crosses its limit, else None."""
        lim = self.limits
        if lim.max_pixel is not None and drift["drift_pixel"] > lim.max_pixel:
            return f"pixel drift {drift['drift_pixel']:.3f} > {lim.max_pixel}"
        drop = drift.get("drift_follow_drop")
        if lim.max_follow_drop is not None and drop is not None and drop > lim.max_follow_drop:
            return f"prompt-following dropped {drop:.3f} > {lim.max_follow_drop}"
        return None

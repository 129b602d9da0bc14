"""Load a diffusers text-to-image pipeline for training and turn prompts/images into U-Net inputs.

Generic for any LoRA trainer. SD 1.x/2.x and SDXL: for SDXL the U-Net also takes
``added_cond_kwargs = {"text_embeds": pooled (B, 1280), "time_ids": (B, 6)}`` where time ids are
(original h, w, crop top, left, target h, w) (Podell et al. 2023, size and crop conditioning).
Text embeddings and VAE latents are computed once and cached (latents: the posterior mean times the
VAE scaling factor, deterministic, so cached and uncached training give the same numbers).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from pickloop.errors import UserError
from pickloop.pipelines import open_pipeline


@dataclass
class TrainModels:
    """The parts of a pipeline a U-Net trainer needs; ``pipe`` keeps the text encoders and tokenizers."""

    pipe: Any
    unet: torch.nn.Module
    vae: torch.nn.Module
    noise_scheduler: Any  # DDPMScheduler with the pipeline's training schedule
    sdxl: bool
    resolution: int  # pixels (square)
    text_cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)
    latent_cache: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def load_train_models(base: str, *, device: str | torch.device = "cpu", resolution: int | None = None) -> TrainModels:
    """Load pipeline ``base`` (a local diffusers folder or hub id); VAE and text encoders frozen, float32."""
    from diffusers import DDPMScheduler

    pipe = open_pipeline(base, safety_checker=False)
    sdxl = hasattr(pipe, "text_encoder_2")
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise UserError(f"base model {base!r} is not a U-Net text-to-image pipeline (SD 1.x/2.x/SDXL)")
    pipe.set_progress_bar_config(disable=True)
    for name in ("vae", "text_encoder", "text_encoder_2"):
        part = getattr(pipe, name, None)
        if part is not None:
            part.requires_grad_(False).eval().to(device)
    pipe.unet.to(device)
    # Training noise schedule: the pipeline's own betas and prediction type (v-prediction for the shapes model).
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    vae_factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    res = resolution or int(pipe.unet.config.sample_size) * vae_factor
    return TrainModels(pipe=pipe, unet=pipe.unet, vae=pipe.vae, noise_scheduler=noise_scheduler,
                       sdxl=sdxl, resolution=res)


def image_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """PIL image -> (3, R, R) float tensor in [-1, 1] (resized with bicubic, RGB)."""
    img = image.convert("RGB")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


@torch.no_grad()
def encode_images(m: TrainModels, images: Sequence[Image.Image], device: str | torch.device = "cpu") -> torch.Tensor:
    """Images -> latents (B, C, h, w): VAE posterior mean times scaling factor (float32)."""
    x = torch.stack([image_tensor(im, m.resolution) for im in images]).to(device, m.vae.dtype)
    latents = m.vae.encode(x).latent_dist.mean
    shift = getattr(m.vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * m.vae.config.scaling_factor).float()


def latents_for(m: TrainModels, keys: Sequence[str], load: Callable[[str], Image.Image], *, cache: bool = True,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Latents for images named by ``keys`` (e.g. sha256); each encoded once when ``cache``."""
    if not cache:
        return encode_images(m, [load(k) for k in keys], device)
    todo = [k for k in dict.fromkeys(keys) if k not in m.latent_cache]
    if todo:
        for k, lat in zip(todo, encode_images(m, [load(k) for k in todo], device)):
            m.latent_cache[k] = lat.cpu()
    return torch.stack([m.latent_cache[k] for k in keys]).to(device)


@torch.no_grad()
def _encode_text(m: TrainModels, prompts: list[str], device: str | torch.device) -> tuple[torch.Tensor, Any]:
    if m.sdxl:
        emb, _, pooled, _ = m.pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                 do_classifier_free_guidance=False)
        return emb.float(), pooled.float()
    emb, _ = m.pipe.encode_prompt(prompts, device, 1, False)
    return emb.float(), None


def text_conditioning(m: TrainModels, prompts: Sequence[str], *, device: str | torch.device = "cpu",
                      original_size: int | None = None) -> dict[str, Any]:
    """U-Net keyword arguments for ``prompts``: ``encoder_hidden_states`` and, for SDXL,
    ``added_cond_kwargs`` (pooled text + size/crop time ids; original size = training size, no crop)."""
    todo = [p for p in dict.fromkeys(prompts) if p not in m.text_cache]
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        emb, pooled = _encode_text(m, chunk, device)
        for i, p in enumerate(chunk):
            m.text_cache[p] = (emb[i].cpu(), pooled[i].cpu() if pooled is not None else None)
    hidden = torch.stack([m.text_cache[p][0] for p in prompts]).to(device)
    kwargs: dict[str, Any] = {"encoder_hidden_states": hidden}
    if m.sdxl:
        pooled = torch.stack([m.text_cache[p][1] for p in prompts]).to(device)
        size = original_size or m.resolution
        ids = torch.tensor([size, size, 0, 0, m.resolution, m.resolution], dtype=torch.float32)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids.repeat(len(prompts), 1).to(device)}
    return kwargs


def repeat_conditioning(cond: dict[str, Any], times: int) -> dict[str, Any]:
    """Conditioning for a batch repeated ``times`` along dim 0 (e.g. winners then losers)."""
    out: dict[str, Any] = {"encoder_hidden_states": cond["encoder_hidden_states"].repeat(times, 1, 1)}
    if "added_cond_kwargs" in cond:
        out["added_cond_kwargs"] = {k: v.repeat(times, 1) for k, v in cond["added_cond_kwargs"].items()}
    return out


def diffusion_target(noise_scheduler: Any, latents: torch.Tensor, noise: torch.Tensor,
                     timesteps: torch.Tensor) -> torch.Tensor:
    """What the U-Net is trained to predict: eps (epsilon) or v = sqrt(a)*eps - sqrt(1-a)*x0 (v_prediction)."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise UserError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")

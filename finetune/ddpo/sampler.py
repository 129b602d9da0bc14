"""A stochastic DDIM sampler (eta > 0) that records the trajectory and each step's log-probability.

DDPO (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning") treats every
denoising step as a Gaussian policy: given x_t, DDIM with eta = 1 draws

    x_{t-1} ~ Normal(mu_theta(x_t, t), sigma_t^2 I)

where mu_theta and sigma_t are exactly what diffusers' ``DDIMScheduler.step`` computes before it
adds ``sigma_t * variance_noise``. The log-probability of the drawn x_{t-1} under the current
U-Net is what the PPO ratio compares between sampling and training.

Shapes: latents (B, C, H, W); a trajectory of T steps stores latents (B, T, C, H, W),
next latents (B, T, C, H, W), timesteps (B, T) and log-probabilities (B, T). Log-probabilities are
the MEAN over the C*H*W latent entries of the per-entry Normal log-density (as ddpo-pytorch does),
so that the PPO clip range (1e-4 for SD 1.5) does not depend on the latent size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def make_ddim_scheduler(pipe) -> DDIMScheduler:  # noqa: ANN001 - a diffusers StableDiffusionPipeline
    """A DDIMScheduler with the pipeline's own schedule (prediction type, zero-SNR betas, spacing)."""
    return DDIMScheduler.from_config(pipe.scheduler.config)


def _alpha_products(scheduler: DDIMScheduler, t: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """alpha_bar at t and at the previous DDIM timestep, shaped (B, 1, 1, 1) for broadcasting."""
    step = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev_t = t - step
    ac = scheduler.alphas_cumprod.to(device)
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=ac.dtype, device=device)
    a_t = ac[t]
    a_prev = torch.where(prev_t >= 0, ac[prev_t.clamp(min=0)], final)
    return a_t.view(-1, 1, 1, 1), a_prev.view(-1, 1, 1, 1)


def step_std(scheduler: DDIMScheduler, t: torch.Tensor, eta: float = 1.0) -> torch.Tensor:
    """sigma_t(eta) of the DDIM step from each timestep in ``t`` (after ``set_timesteps``), shape like ``t``."""
    t = torch.as_tensor(t, dtype=torch.long)
    a_t, a_prev = _alpha_products(scheduler, t.reshape(-1), t.device)
    return (eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5).reshape(t.shape)


def _predicted_x0_and_eps(scheduler: DDIMScheduler, model_output: torch.Tensor, sample: torch.Tensor,
                          a_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from the U-Net output for the scheduler's prediction type (DDIM eq. 12)."""
    b_t = 1 - a_t
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (sample - b_t ** 0.5 * model_output) / a_t ** 0.5, model_output
    if kind == "v_prediction":
        return a_t ** 0.5 * sample - b_t ** 0.5 * model_output, a_t ** 0.5 * model_output + b_t ** 0.5 * sample
    if kind == "sample":
        return model_output, (sample - a_t ** 0.5 * model_output) / b_t ** 0.5
    raise ValueError(f"unsupported prediction_type {kind!r}")


def ddim_step_log_prob(scheduler: DDIMScheduler, model_output: torch.Tensor, t: int | torch.Tensor,
                       sample: torch.Tensor, prev_sample: torch.Tensor | None = None, eta: float = 1.0,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One stochastic DDIM step and the log-probability of its result.

    Args:
        scheduler: a DDIMScheduler after ``set_timesteps`` (its config gives prediction type,
            clipping and the final alpha).
        model_output: the (guided) U-Net output, (B, C, H, W).
        t: the current timestep, an int, a 0-d tensor or a (B,) tensor (one per sample, so that a
            training batch may mix timesteps).
        sample: x_t, (B, C, H, W).
        prev_sample: x_{t-1} to score, (B, C, H, W); drawn from the step's Normal when None.
        eta: DDIM's noise weight, > 0 (1 = DDPM-like, the DDPO setting).
        generator: RNG for drawing prev_sample.

    Returns:
        (prev_sample (B, C, H, W), log_prob (B,)): log_prob is the Normal log-density of
        prev_sample under mean mu and std sigma_t that ``DDIMScheduler.step(eta, variance_noise=z)``
        implies (its output is mu + sigma_t * z), averaged over the C*H*W entries.
    """
    if eta <= 0:
        raise ValueError("eta must be > 0: a deterministic step has no log-probability")
    device = sample.device
    t = torch.as_tensor(t, device=device, dtype=torch.long).reshape(-1).expand(sample.shape[0])
    a_t, a_prev = _alpha_products(scheduler, t, device)
    x0, eps = _predicted_x0_and_eps(scheduler, model_output, sample, a_t)
    if scheduler.config.thresholding:
        x0 = scheduler._threshold_sample(x0)
    elif scheduler.config.clip_sample:
        x0 = x0.clamp(-scheduler.config.clip_sample_range, scheduler.config.clip_sample_range)
    # sigma_t(eta) of DDIM eq. 16, as DDIMScheduler._get_variance computes it.
    variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    std = eta * variance ** 0.5
    # The direction term's variance 1 - a_prev - std^2, written as (1 - a_prev) * (1 - eta^2 (1 - a_t/a_prev) /
    # (1 - a_t)): where alpha_bar_t = 0 (zero terminal SNR) the bracket is exactly 0 in floating point too.
    # The plain difference rounds to +-1e-7 there, whose square root (3e-4) moved the mean by that much, and a
    # hair below 0 (on a GPU, say) turned the whole trajectory into NaN.
    direction_var = (1 - a_prev) * (1 - eta ** 2 * (1 - a_t / a_prev) / (1 - a_t))
    mean = a_prev ** 0.5 * x0 + direction_var.clamp(min=0) ** 0.5 * eps
    if prev_sample is None:
        noise = randn_tensor(model_output.shape, generator=generator, device=device, dtype=model_output.dtype)
        prev_sample = mean + std * noise
    log_density = -((prev_sample.detach() - mean) ** 2) / (2 * std ** 2) - torch.log(std) - LOG_SQRT_2PI
    return prev_sample.type(sample.dtype), log_density.mean(dim=tuple(range(1, sample.ndim)))


def encode_prompts(pipe, prompts: list[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """(prompt_embeds, negative_embeds), each (B, L, D), with the empty prompt as the negative."""
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(prompts, device, 1, True, negative_prompt=[""] * len(prompts))
    return pos, neg


def guided_output(unet, latents: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor,  # noqa: ANN001
                  negative_embeds: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guided U-Net output (B, C, H, W) for latents (B, C, H, W) and timesteps (B,).

    Unconditional and conditional halves run in one batch of 2B, as the pipeline does.
    """
    t = t.reshape(-1).expand(latents.shape[0])
    out = unet(torch.cat([latents, latents]), torch.cat([t, t]),
               encoder_hidden_states=torch.cat([negative_embeds, embeds])).sample
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def policy_log_prob(unet, scheduler: DDIMScheduler, latents: torch.Tensor, t: torch.Tensor,  # noqa: ANN001
                    next_latents: torch.Tensor, embeds: torch.Tensor, negative_embeds: torch.Tensor,
                    guidance: float, eta: float) -> torch.Tensor:
    """Log-probability (B,) of the recorded steps latents -> next_latents under the current U-Net.

    The one function both sampling and PPO training use, so that the first ratio is exactly 1.
    """
    out = guided_output(unet, latents, t, embeds, negative_embeds, guidance)
    return ddim_step_log_prob(scheduler, out, t, latents, prev_sample=next_latents, eta=eta)[1]


@dataclass
class Trajectories:
    """Sampled denoising trajectories of B images over T steps (CPU or device tensors)."""

    prompts: list[str]
    embeds: torch.Tensor  # (B, L, D)
    negative_embeds: torch.Tensor  # (B, L, D)
    latents: torch.Tensor  # (B, T, C, H, W): x_t before each step
    next_latents: torch.Tensor  # (B, T, C, H, W): x_{t-1} drawn at each step
    timesteps: torch.Tensor  # (B, T) long
    log_probs: torch.Tensor  # (B, T): log-prob of each step under the sampling policy
    final_latents: torch.Tensor  # (B, C, H, W)

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, index: torch.Tensor | list[int]) -> "Trajectories":
        """The trajectories at ``index`` along the batch dimension."""
        idx = torch.as_tensor(index, dtype=torch.long)
        return Trajectories([self.prompts[i] for i in idx.tolist()], self.embeds[idx], self.negative_embeds[idx],
                            self.latents[idx], self.next_latents[idx], self.timesteps[idx], self.log_probs[idx],
                            self.final_latents[idx])

    @staticmethod
    def concat(parts: list["Trajectories"]) -> "Trajectories":
        fields = ("embeds", "negative_embeds", "latents", "next_latents", "timesteps", "log_probs", "final_latents")
        return Trajectories([p for part in parts for p in part.prompts],
                            *(torch.cat([getattr(part, f) for part in parts]) for f in fields))


def initial_latents(pipe, batch: int, generator: torch.Generator | None, device, dtype) -> torch.Tensor:  # noqa: ANN001
    """Pure noise x_T, (B, C, H, W), at the U-Net's native latent size."""
    size = pipe.unet.config.sample_size
    shape = (batch, pipe.unet.config.in_channels, size, size)
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)


@torch.no_grad()
def sample_trajectories(pipe, unet, scheduler: DDIMScheduler, prompts: list[str], *, steps: int,  # noqa: ANN001
                        guidance: float, eta: float = 1.0, generator: torch.Generator | None = None,
                        latents: torch.Tensor | None = None,
                        embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> Trajectories:
    """Draw len(prompts) images with a stochastic DDIM sampler, recording every step.

    ``unet`` is the policy (the pipeline's U-Net with its LoRA, possibly wrapped by accelerate);
    ``pipe`` supplies the text encoder and latent size. ``generator`` makes the draw reproducible.
    ``embeds``: the prompts' (prompt_embeds, negative_embeds) from :func:`encode_prompts`, when the caller
    encoded them already (e.g. a whole epoch's prompts in one call).
    """
    device = pipe.unet.device
    embeds, negative = embeds if embeds is not None else encode_prompts(pipe, prompts, device)
    scheduler.set_timesteps(steps, device=device)
    x = latents if latents is not None else initial_latents(pipe, len(prompts), generator, device, embeds.dtype)
    x = x * scheduler.init_noise_sigma
    xs, nexts, ts, lps = [], [], [], []
    for t in scheduler.timesteps:
        tb = t.reshape(1).expand(len(prompts)).to(device)
        # DDIM's scale_model_input is the identity; skipping it keeps this path equal to policy_log_prob's.
        out = guided_output(unet, x, tb, embeds, negative, guidance)
        nxt, lp = ddim_step_log_prob(scheduler, out, tb, x, eta=eta, generator=generator)
        xs.append(x)
        nexts.append(nxt)
        ts.append(tb)
        lps.append(lp)
        x = nxt
    return Trajectories(list(prompts), embeds, negative, torch.stack(xs, 1), torch.stack(nexts, 1),
                        torch.stack(ts, 1), torch.stack(lps, 1), x)


@torch.no_grad()
def decode_images(pipe, latents: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """Latents (B, C, h, w) -> images (B, 3, H, W) in [0, 1], float32 on the CPU."""
    vae = pipe.vae
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return (images.float() / 2 + 0.5).clamp(0, 1).cpu()


def to_pil(images: torch.Tensor) -> list:
    """Images (B, 3, H, W) in [0, 1] -> PIL images."""
    arr = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]

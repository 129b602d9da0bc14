"""``pickloop bench scale``: LoRA fine-tuning step time and peak memory on full-size U-Nets.

The U-Nets are built from the published Stable Diffusion 1.5 and SDXL base configurations with random
weights (nothing is downloaded: time and memory do not depend on the weights), or the embedded shapes
U-Net. Latents, noise and text embeddings are random tensors of the real shapes, so only the U-Net work
is measured, which is what dominates both methods:

- Diffusion-DPO: one optimizer step on ``batch`` pairs (the reference pass without gradients, then the
  policy pass with them; :func:`finetune.dpo.denoising_errors`), LoRA rank ``rank`` on the attention projections.
- DDPO: one sampling step (the U-Net on the conditional and unconditional halves of ``batch`` images,
  no gradients) and one training step on one timestep of ``batch`` trajectories (the same, with
  gradients), as the PPO update runs it once per kept timestep.

Peak memory: ``torch.cuda.max_memory_allocated`` per phase on a GPU, the process's peak RSS on a CPU.
"""
from __future__ import annotations

import time
from typing import Any

from finetune.bench import peak_rss_mb
from pickloop.errors import UserError
from pickloop.typed_config import positive_int

ARCHS: dict[str, dict[str, Any]] = {
    # runwayml/stable-diffusion-v1-5 unet/config.json: 859,520,964 parameters
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                   "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json: 2,567,463,684 parameters
    "sdxl": dict(sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                 cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32),
}
TEXT_TOKENS = 77
SDXL_POOLED = 1280


def build_unet(arch: str, *, device: Any = "cpu", dtype: Any = None) -> Any:
    """A randomly initialised U-Net of ``arch`` (sd15, sdxl, or shapes: the embedded model's)."""
    import torch
    from diffusers import UNet2DConditionModel

    if arch == "shapes":
        from pickloop.shapes.architectures import make_unet

        with torch.device(device):
            unet = make_unet()
    elif arch in ARCHS:
        with torch.device(device):
            unet = UNet2DConditionModel(**ARCHS[arch])
    else:
        raise UserError(f"unknown architecture {arch!r}: sd15, sdxl or shapes")
    return unet.to(dtype=dtype) if dtype not in (None, torch.float32) else unet


def conditioning(unet: Any, batch: int, *, device: Any, dtype: Any) -> dict[str, Any]:
    """Random text conditioning in the tensor shapes ``unet`` expects (SDXL: also pooled embeddings and time ids)."""
    import torch

    cfg = unet.config
    cond: dict[str, Any] = {"encoder_hidden_states": torch.randn(batch, TEXT_TOKENS, cfg.cross_attention_dim,
                                                                 device=device, dtype=dtype)}
    if cfg.addition_embed_type == "text_time":
        side = cfg.sample_size * 8
        cond["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, SDXL_POOLED, device=device, dtype=dtype),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch, device=device, dtype=dtype)}
    return cond


class _Meter:
    """Wall time (synchronised on a GPU) and peak memory of one phase."""

    def __init__(self, device: Any) -> None:
        import torch

        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def sync(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def peak_mb(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else peak_rss_mb()


def _timed(fn: Any, meter: _Meter, steps: int) -> float:
    fn()  # warm-up: allocator, kernels, lazy init
    t0 = meter.sync()
    for _ in range(steps):
        fn()
    return (meter.sync() - t0) / steps


def run_bench(*, arch: str = "sd15", device: str = "cpu", precision: str = "fp32", batch: int = 1,
              latent_size: int | None = None, rank: int = 8, steps: int = 3, beta: float = 2500.0,
              gradient_checkpointing: bool = False, threads: int | None = 1) -> dict[str, Any]:
    import torch
    from diffusers import DDPMScheduler

    from finetune import lora as lora_io
    from finetune.dpo.loss import denoising_errors, dpo_loss

    if batch < 1 or steps < 1 or rank < 1:
        raise UserError("--batch, --steps and --rank must be >= 1")
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise UserError(f"--precision must be one of {', '.join(dtypes)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU")
    if threads:
        torch.set_num_threads(threads)
    dtype = dtypes[precision]
    torch.manual_seed(0)
    unet = build_unet(arch, device=device, dtype=dtype)
    params_m = sum(p.numel() for p in unet.parameters()) / 1e6
    size = latent_size or unet.config.sample_size
    lora_io.add_lora(unet, rank=rank)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    trainable = lora_io.lora_parameters(unet)
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012)
    print(f"bench scale: {arch} U-Net, {params_m:.1f} M parameters ({sum(p.numel() for p in trainable) / 1e6:.2f} M "
          f"LoRA rank {rank}), {precision} on {device}, batch {batch}, latents {unet.config.in_channels}x{size}x{size}"
          + (", gradient checkpointing" if gradient_checkpointing else ""))

    def lat() -> torch.Tensor:
        return torch.randn(batch, unet.config.in_channels, size, size, device=device, dtype=dtype)

    cond = conditioning(unet, batch, device=device, dtype=dtype)
    figures: dict[str, Any] = {"arch": arch, "device": device, "precision": precision, "batch": batch,
                               "params_m": round(params_m, 1)}

    def dpo_step() -> None:
        t = torch.randint(0, 1000, (batch,), device=device)
        loss, _ = dpo_loss(*denoising_errors(unet, sched, lat(), lat(), cond, lat(), t), beta)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    meter = _Meter(device)
    figures["dpo_step_s"] = round(_timed(dpo_step, meter, steps), 4)
    figures["dpo_peak_mb"] = round(meter.peak_mb(), 1)
    print(f"  dpo: {figures['dpo_step_s']:.3f} s/step, peak {figures['dpo_peak_mb']:.0f} MB")

    both = {k: (torch.cat([v, v]) if torch.is_tensor(v) else {kk: torch.cat([vv, vv]) for kk, vv in v.items()})
            for k, v in cond.items()}  # the conditional and unconditional halves of classifier-free guidance

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = unet(torch.cat([x, x]), torch.cat([t, t]), **both).sample
        text, uncond = out.chunk(2)
        return uncond + 5.0 * (text - uncond)

    def sample_step() -> None:
        with torch.no_grad():
            guided(lat(), torch.randint(0, 1000, (batch,), device=device))

    def ddpo_train_step() -> None:
        loss = guided(lat(), torch.randint(0, 1000, (batch,), device=device)).float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    meter = _Meter(device)
    figures["sample_step_s"] = round(_timed(sample_step, meter, steps), 4)
    figures["ddpo_train_step_s"] = round(_timed(ddpo_train_step, meter, steps), 4)
    figures["ddpo_peak_mb"] = round(meter.peak_mb(), 1)
    print(f"  ddpo: sampling {figures['sample_step_s']:.3f} s/denoising step, training "
          f"{figures['ddpo_train_step_s']:.3f} s/timestep, peak {figures['ddpo_peak_mb']:.0f} MB")
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def register(bench_sub: Any) -> None:
    q = bench_sub.add_parser(
        "scale", help="DPO and DDPO step time and peak memory on SD 1.5 / SDXL-shaped U-Nets (random weights)",
        description="Builds the U-Net of the published SD 1.5 or SDXL base configuration with random weights "
                    "(no download) and times LoRA training steps on random latents of the real shapes. "
                    "Last line: arch=.. device=.. precision=.. batch=.. params_m=.. dpo_step_s=.. dpo_peak_mb=.. "
                    "sample_step_s=.. ddpo_train_step_s=.. ddpo_peak_mb=..")
    q.add_argument("--arch", default="sd15", choices=("sd15", "sdxl", "shapes"))
    q.add_argument("--device", default="cpu", help="cpu or cuda")
    q.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="dtype of the U-Net and its LoRA")
    q.add_argument("--batch", type=int, default=1, help="pairs (DPO) / images (DDPO) per step")
    q.add_argument("--latent-size", type=int, default=None,
                   help="latent side (default: the model's, 64 = 512 px for SD 1.5, 128 = 1024 px for SDXL)")
    q.add_argument("--rank", type=int, default=8, help="LoRA rank")
    q.add_argument("--steps", type=int, default=3, help="timed steps of each kind (after one warm-up)")
    q.add_argument("--gradient-checkpointing", action="store_true")
    q.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads")
    q.set_defaults(func=_cmd)


def _cmd(a: Any) -> None:
    run_bench(arch=a.arch, device=a.device, precision=a.precision, batch=a.batch, latent_size=a.latent_size,
              rank=a.rank, steps=a.steps, gradient_checkpointing=a.gradient_checkpointing, threads=a.threads)

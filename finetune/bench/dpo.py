"""``pickloop bench dpo``: Diffusion-DPO training speed and memory, against its floor and, with
``--reference diffusers``, against the diffusers example on the same pairs.

Pairs are synthetic: for each of ``pairs`` shapes prompts, the rendered scene (winner) against a scene with
another colour (loser). A step's time is measured between optimizer steps after ``warmup`` steps, on the
CPU clock when training on the CPU (on a busy machine it counts only this process's work; with one thread
it equals the wall clock of an idle machine) and on the wall clock on a GPU. Both clocks are printed.

- ``floor_ratio``: the bare forward and backward pass of the same LoRA U-Net on a batch of the same size
  (2 x batch: winners and losers), divided by the step time. 1.0 is the limit; Diffusion-DPO's own floor
  is lower, because each step also runs the reference model forward (printed as ``method_floor_ratio``).
- Without a reference: the run with the latent cache (default) and without it (the VAE encodes both
  images of every pair at every step); peak memory is the process's peak RSS over both.
- ``--reference diffusers``: the diffusers example, unchanged, in a child process (``finetune.bench.dpo_diffusers``)
  on the same pairs, U-Net, LoRA rank, batch, learning rate and beta (its convention: beta/2); its peak
  RSS is its own process's. ``ratio`` = its step time / ours.
"""
from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from finetune import lora as lora_io
from finetune import models as fm
from finetune.bench import dpo_diffusers, peak_rss_mb
from finetune.dpo.config import DPOConfig, PairSpec
from finetune.dpo.train import train_dpo
from pickloop.shapes.world import COLORS, Scene, Shape, caption, render, sample_scene


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[PairSpec], dict]:
    rng = random.Random(seed)
    images, pairs = {}, []
    for i in range(n):
        scene = sample_scene(rng, two_share=0.0)
        obj = scene.objects[0]
        wrong = rng.choice([c for c in COLORS if c not in (obj.color, scene.background)])
        loser = Scene(scene.background, (Shape(obj.kind, wrong, obj.size, obj.position),))
        images[f"w{i}"], images[f"l{i}"] = render(scene), render(loser)
        pairs.append(PairSpec(caption(scene), f"w{i}", f"l{i}"))
    return pairs, images


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _per_step(marks: list[tuple[float, float]], warmup: int) -> tuple[float, float]:
    """(wall, cpu) seconds per step from the clocks read after each step, the first ``warmup`` left out."""
    (w0, c0), (w1, c1) = marks[warmup - 1], marks[-1]
    n = len(marks) - warmup
    return (w1 - w0) / n, (c1 - c0) / n


def time_training(cfg: DPOConfig, base: str, pairs: list[PairSpec], images: dict, out: Path,
                  warmup: int) -> tuple[float, float]:
    """(wall, cpu) seconds per DPO step of ``train_dpo``, timed between optimizer steps."""
    marks: list[tuple[float, float]] = []

    def mark(step: int, metrics: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append(_clocks())

    result = train_dpo(cfg, base=base, pairs=pairs, load_image=images.__getitem__, out_dir=out, on_step=mark)
    wall, cpu = _per_step(marks, warmup)
    print(f"  pickloop cache_latents={cfg.cache_latents}: {1 / wall:.2f} steps/s wall, {1 / cpu:.2f} by CPU time, "
          f"final loss {result.metrics.get('final_loss', float('nan')):.4f}", flush=True)
    return wall, cpu


def bare_pass_seconds(base: str, *, n: int, rank: int, resolution: int | None = None, repeats: int = 10,
                      mixed_precision: str = "no", n_fwd: int | None = None) -> dict[str, tuple[float, float]]:
    """Median (wall, cpu) seconds of the LoRA U-Net's forward+backward (``fwd_bwd``) on ``n`` random latents
    and of its forward without autograd (``fwd``) on ``n_fwd`` (default ``n``): the floor of a training step."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())
    m = fm.load_train_models(base, device=acc.device, resolution=resolution)
    lora_io.start_lora(m.unet, rank=rank)
    m.unet.train()
    size = m.resolution // 2 ** (len(m.vae.config.block_out_channels) - 1)

    def inputs(k: int) -> tuple:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(k, m.unet.config.in_channels, size, size, generator=g).to(acc.device)
        t = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (k,), generator=g).to(acc.device)
        return x, t, fm.text_conditioning(m, ["a red circle"] * k, device=acc.device)

    train_in, fwd_in = inputs(n), inputs(n_fwd or n)

    def fwd_bwd() -> None:
        x, t, cond = train_in
        with acc.autocast():
            out = m.unet(x, t, **cond).sample.float()
        out.pow(2).mean().backward()
        m.unet.zero_grad(set_to_none=True)

    def fwd() -> None:
        x, t, cond = fwd_in
        with torch.no_grad(), acc.autocast():
            m.unet(x, t, **cond).sample.float()

    out = {}
    for name, fn in (("fwd_bwd", fwd_bwd), ("fwd", fwd)):
        fn()
        times = []
        for _ in range(repeats):
            a = _clocks()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            b = _clocks()
            times.append((b[0] - a[0], b[1] - a[1]))
        out[name] = (statistics.median(w for w, _ in times), statistics.median(c for _, c in times))
    return out


def run_bench(*, steps: int = 20, pairs: int = 32, batch_size: int = 4, base: str | None = None,
              reference: str = "none", reference_script: str | None = None, warmup: int = 3) -> dict | None:
    from pickloop.context import resolve_model_ref

    if reference == "diffusers":
        hint = dpo_diffusers.missing(reference_script)
        if hint:  # say so before spending minutes on our own run
            print(hint)
            return None
    if steps <= warmup:
        raise ValueError(f"--steps must exceed the {warmup} warm-up steps")
    torch.set_num_threads(1)
    base = resolve_model_ref(base)
    data, images = synthetic_pairs(pairs)
    cuda = torch.cuda.is_available()
    clock = 0 if cuda else 1  # index into (wall, cpu)
    print(f"bench dpo: base {base}, {pairs} pairs, batch {batch_size}, {steps} steps ({warmup} warm-up), "
          f"1 thread, device {'cuda' if cuda else 'cpu'}, step time by the {'wall' if cuda else 'CPU'} clock",
          flush=True)
    common = dict(steps=steps, batch_size=batch_size, checkpoint_every=0, log_every=0, seed=0)
    cfg = DPOConfig(cache_latents=True, **common)
    with tempfile.TemporaryDirectory() as tmp:
        ours = time_training(cfg, base, data, images, Path(tmp) / "a", warmup)
        ours_peak = peak_rss_mb()
        nocache = None
        if reference == "none":
            nocache = time_training(DPOConfig(cache_latents=False, **common), base, data, images, Path(tmp) / "b",
                                    warmup)
            ours_peak = peak_rss_mb()
        bare = bare_pass_seconds(base, n=2 * batch_size, rank=cfg.rank, resolution=cfg.resolution)
        print(f"  bare U-Net, batch {2 * batch_size}: forward+backward {bare['fwd_bwd'][clock] * 1e3:.1f} ms, "
              f"forward without autograd {bare['fwd'][clock] * 1e3:.1f} ms "
              f"(pickloop step {ours[clock] * 1e3:.1f} ms); "
              f"method_floor_ratio={(bare['fwd_bwd'][clock] + bare['fwd'][clock]) / ours[clock]:.3f}", flush=True)
        floor_ratio = bare["fwd_bwd"][clock] / ours[clock]
        if reference == "diffusers":
            folder = dpo_diffusers.write_dataset(data, images, Path(tmp) / "pickapic")
            args = dpo_diffusers.reference_args(base=base, data=folder, out=Path(tmp) / "ref", steps=steps,
                                                batch_size=batch_size, rank=cfg.rank, lr=cfg.lr, beta=cfg.beta,
                                                resolution=_resolution(base, cfg), seed=0)
            ref = dpo_diffusers.run_reference(str(reference_script), args, warmup)
            ref_step = float(ref["cpu_s"] if clock else ref["wall_s"])
            print(f"  diffusers example (unchanged; stand-ins for missing imports: {ref['shims']}): "
                  f"{1 / float(ref['wall_s']):.2f} steps/s wall, {1 / float(ref['cpu_s']):.2f} by CPU time", flush=True)
            figures = {"steps_per_s": round(1 / ours[clock], 3), "ref_steps_per_s": round(1 / ref_step, 3),
                       "ratio": round(ref_step / ours[clock], 3), "floor_ratio": round(floor_ratio, 3),
                       "peak_rss_mb": round(ours_peak, 1), "ref_peak_rss_mb": ref["peak_rss_mb"]}
        else:
            figures = {"steps_per_s": round(1 / ours[clock], 3), "steps_per_s_nocache": round(1 / nocache[clock], 3),
                       "floor_ratio": round(floor_ratio, 3), "peak_rss_mb": round(ours_peak, 1)}
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def _resolution(base: str, cfg: DPOConfig) -> int:
    """The training size in pixels (the model's own unless the config sets one), for the reference."""
    if cfg.resolution:
        return cfg.resolution
    unet = json.loads((Path(base) / "unet" / "config.json").read_text())
    vae = json.loads((Path(base) / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)

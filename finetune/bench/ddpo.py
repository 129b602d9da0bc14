"""``pickloop bench ddpo``: seconds per DDPO epoch (sampling and training apart), its floor, peak memory.

``finetune.commands.register`` adds it, and ``pickloop bench ddpo-curve`` (``finetune.bench.ddpo_curve``), through
``register_bench(bench_sub)``. The configuration is printed first; the last line is
``epoch_s=<..> sample_s=<..> train_s=<..> floor_ratio=<..> peak_rss_mb=<..>``: means over the epochs, in
seconds (sample_s: drawing, decoding and scoring the images; train_s: the PPO passes; epoch_s: both
plus the drift guard's fixed-seed draws), and the process's peak resident memory (ru_maxrss) in MiB.

``floor_ratio``: the epoch's U-Net passes timed bare (each sampling and drift-guard step a forward without
autograd at its batch, each PPO step a forward and backward at its batch; classifier-free guidance doubles
both), summed, over epoch_s. 1.0 is the limit; decoding and scoring the images are the rest.

``--reference trl`` also runs TRL 0.23.1's DDPOTrainer with the same model, prompts, reward and settings in
a child process, prints its figures and reward curve, and ends with
``epoch_s=<..> ref_epoch_s=<..> ratio=<..> floor_ratio=<..> peak_rss_mb=<..> ref_peak_rss_mb=<..>`` where
the epoch times are on the CPU clock when training on the CPU (each process's own work, robust on a busy
machine; one thread, so equal to wall time on an idle one) and ratio = epoch_s / ref_epoch_s (below 1:
pickloop is faster). pickloop's epoch includes its drift guard, TRL has none; the line above gives the
ratio without it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from finetune.bench import peak_rss_mb
from finetune.ddpo.config import DDPOConfig
from pickloop.config_base import add_flags, config_from_args
from pickloop.errors import UserError

EXIT_MISSING_EXTRA = 2
# The bench's own defaults: a few quick epochs at 10 DDIM steps, against the judge, measuring drift but
# never stopping on it (the timing is the point).
BENCH_DEFAULTS = dict(epochs=3, sample_batch_size=8, sample_batches_per_epoch=2, train_batch_size=8, steps=10,
                      reward="judge", drift_prompts=4, drift_max_pixel=None, drift_max_follow_drop=None)


def register_bench(bench_sub) -> None:  # noqa: ANN001 - argparse subparsers of `pickloop bench`
    q = bench_sub.add_parser("ddpo", help="DDPO seconds per epoch (sampling, training) and peak RSS",
                             description=__doc__.split("\n\n")[0])
    q.add_argument("--reference", choices=["none", "trl"], default="none",
                   help="also run TRL 0.23.1's DDPOTrainer (extra: pip install 'pickloop[trl-reference]')")
    q.add_argument("--base", default=None, help="pipeline folder (default: the settings' base model, "
                                                 "else the embedded shapes model)")
    add_flags(q, DDPOConfig, BENCH_DEFAULTS)  # every DDPO setting, the bench's quick defaults, --config FILE.yaml
    q.add_argument("--batches", dest="sample_batches_per_epoch", type=int, default=argparse.SUPPRESS,
                   help="sampling batches per epoch (the same as --sample-batches-per-epoch)")
    q.set_defaults(func=cmd_bench_ddpo)
    from finetune.bench.ddpo_curve import register_curve_bench

    register_curve_bench(bench_sub)


def _base_folder(ref: str | None) -> str:
    from pickloop.context import resolve_model_ref
    from pickloop.settings import get_settings

    folder = resolve_model_ref(ref or get_settings().base_model)
    if Path(folder).exists() and not (Path(folder) / "model_index.json").is_file():
        raise UserError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    if not Path(folder).exists() and folder.startswith(("/", ".")):
        raise UserError(f"no pipeline at {folder}: train the embedded model (`pickloop shapes train`) "
                        "or pass --base FOLDER")
    return folder


def bench_config(args: argparse.Namespace) -> DDPOConfig:
    config = config_from_args(DDPOConfig, args)
    if getattr(args, "reference", "none") == "trl":
        # TRL's DDPOTrainer draws every image's prompt on its own and trains on every step: so do we beside it.
        config = replace(config, images_per_prompt=1, min_step_std=0.0)
    return config


def _run_trl(base: str, prompts: list[str], config) -> dict | None:  # noqa: ANN001
    """TRL's figures from a child process, or None (after one clear line) when TRL is missing."""
    from finetune.bench.ddpo_trl import INSTALL_HINT, trl_available

    if not trl_available():
        print(INSTALL_HINT)
        return None
    spec = json.dumps({"base": base, "prompts": prompts, "config": config.to_dict()})
    proc = subprocess.run([sys.executable, "-m", "finetune.bench.ddpo_trl", spec], capture_output=True, text=True,
                          env=os.environ.copy())
    for line in proc.stdout.splitlines()[:-1]:
        print(line)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the TRL reference run failed: {tail}")
    last = proc.stdout.strip().splitlines()[-1]
    return dict(kv.split("=", 1) for kv in last.split())


def cmd_bench_ddpo(args: argparse.Namespace) -> int:
    config = bench_config(args)  # a bad setting: one line before torch loads
    import torch

    from finetune.ddpo.job import load_pipeline
    from finetune.ddpo.rewards import make_reward
    from finetune.ddpo.train import train_ddpo
    from pickloop.shapes.world import prompt_pool

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.reference == "trl":
        from finetune.bench.ddpo_trl import INSTALL_HINT, trl_available

        if not trl_available():  # say so before spending minutes on our own run
            print(INSTALL_HINT)
            return EXIT_MISSING_EXTRA
    base = _base_folder(args.base)
    prompts = prompt_pool("train", n=64)
    drift = prompt_pool("heldout", n=config.drift_prompts) if config.drift_prompts else []
    print(f"ddpo bench on {base}: {config.epochs} epochs x {config.sample_batches_per_epoch} batches x "
          f"{config.sample_batch_size} images ({config.images_per_prompt} per prompt), {config.steps} DDIM steps, "
          f"guidance {config.guidance}, train batch {config.train_batch_size} x {config.inner_epochs} inner epochs, "
          f"steps with sigma >= {config.min_step_std}, LoRA rank {config.lora_rank}, reward {config.reward}, "
          f"{len(drift)} drift prompts, {torch.get_num_threads()} thread(s), device "
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}", flush=True)
    pipe = load_pipeline(base)
    _, history = train_ddpo(pipe, prompts, make_reward(config.reward, path=config.reward_path), config,
                            progress=False, drift_prompts=drift)
    for h in history:
        print(f"epoch {h['epoch']}: reward {h['reward_mean']:.4f} epoch {h['epoch_s']:.2f} s "
              f"(sample {h['sample_s']:.2f} s, train {h['train_s']:.2f} s) drift {h.get('drift_pixel')}", flush=True)
    mean = lambda key: sum(h[key] for h in history) / len(history)  # noqa: E731
    ours = {"epoch_s": mean("epoch_s"), "sample_s": mean("sample_s"), "train_s": mean("train_s"),
            "peak_rss_mb": peak_rss_mb()}
    cpu = not torch.cuda.is_available()
    epoch = mean("epoch_cpu_s") if cpu else ours["epoch_s"]
    floor = epoch_floor_seconds(base, config, len(drift))[1 if cpu else 0]
    print(f"pickloop epoch {ours['epoch_s']:.3f} s wall, {mean('epoch_cpu_s'):.3f} s CPU "
          f"(without the drift guard {mean('sample_cpu_s') + mean('train_cpu_s'):.3f} s CPU); bare U-Net passes "
          f"of an epoch {floor:.3f} s", flush=True)
    if args.reference == "trl":
        trl = _run_trl(base, prompts, replace(config, drift_prompts=0))
        if trl is None:
            return EXIT_MISSING_EXTRA
        print(f"reference trl==0.23.1: epoch_s={trl['epoch_s']} epoch_cpu_s={trl['epoch_cpu_s']} "
              f"sample_s={trl['sample_s']} train_s={trl['train_s']} peak_rss_mb={trl['peak_rss_mb']} "
              f"rewards={trl['rewards']}")
        curve = ",".join(f"{h['reward_mean']:.4f}" for h in history)
        print(f"pickloop rewards={curve}")
        ref_epoch = float(trl["epoch_cpu_s"] if cpu else trl["epoch_s"])
        unguarded = (mean("sample_cpu_s") + mean("train_cpu_s")) if cpu else (ours["sample_s"] + ours["train_s"])
        print(f"ratio without pickloop's drift guard: {unguarded / ref_epoch:.3f}")
        print(f"epoch_s={epoch:.3f} ref_epoch_s={ref_epoch:.3f} ratio={epoch / ref_epoch:.3f} "
              f"floor_ratio={floor / epoch:.3f} peak_rss_mb={ours['peak_rss_mb']:.1f} "
              f"ref_peak_rss_mb={float(trl['peak_rss_mb']):.1f}")
        return 0
    print(f"epoch_s={ours['epoch_s']:.3f} sample_s={ours['sample_s']:.3f} train_s={ours['train_s']:.3f} "
          f"floor_ratio={floor / epoch:.3f} peak_rss_mb={ours['peak_rss_mb']:.1f}")
    return 0


def epoch_floor_seconds(base: str, config, guard_prompts: int) -> tuple[float, float]:  # noqa: ANN001 - DDPOConfig
    """(wall, cpu) seconds of the U-Net passes one epoch of ``config`` makes, each timed bare (see the
    module docstring). Measured after the run, so it does not count in the run's peak memory."""
    from diffusers import DDIMScheduler

    from finetune.bench.dpo import bare_pass_seconds
    from finetune.ddpo.sampler import step_std

    n = config.sample_batch_size * config.sample_batches_per_epoch
    scheduler = DDIMScheduler.from_pretrained(base, subfolder="scheduler")
    scheduler.set_timesteps(config.steps)
    trainable = int((step_std(scheduler, scheduler.timesteps, config.eta) >= config.min_step_std).sum())
    train_calls = config.inner_epochs * math.ceil(n / config.train_batch_size) * max(
        1, math.ceil(config.timestep_fraction * trainable))
    sample_calls = config.steps * (config.sample_batches_per_epoch + guard_prompts / config.sample_batch_size)
    bare = bare_pass_seconds(base, n=2 * config.train_batch_size, n_fwd=2 * config.sample_batch_size,
                             rank=config.lora_rank, repeats=5, mixed_precision=config.mixed_precision)
    return tuple(train_calls * fb + sample_calls * f for fb, f in zip(bare["fwd_bwd"], bare["fwd"]))

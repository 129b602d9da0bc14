"""TRL 0.23.1's DDPOTrainer on the same model, prompts, reward and settings as ``pickloop bench ddpo``.

TRL deprecated DDPOTrainer and removed it in v0.24.0; this is a reference for speed and reward curves
only, installed by the optional extra ``pip install 'pickloop[trl-reference]'``. It runs in its own
process (``python -m finetune.bench.ddpo_trl SPEC_JSON``) so that its peak memory is its own; its last line
is ``epoch_s=<..> epoch_cpu_s=<..> sample_s=<..> train_s=<..> peak_rss_mb=<..> rewards=<r0,r1,...>``.

Differences that remain: TRL samples through its own pipeline call (one batched text encoding per
batch) and reads the prompt of each sample back from token ids for stat tracking.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

from finetune.bench import peak_rss_mb

INSTALL_HINT = ("TRL's DDPOTrainer is not installed: pip install 'pickloop[trl-reference]' "
                "(pins trl==0.23.1, the last release with DDPO)")


def trl_available() -> bool:
    try:
        from trl import DDPOTrainer  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a trl without DDPO (>= 0.24) raising on the name
        return False
    return True


def _timed(obj: Any, name: str, bucket: list[float], cpu_bucket: list[float] | None = None) -> None:
    """Wrap obj.name so that each call's wall seconds are appended to bucket (and CPU seconds to cpu_bucket)."""
    fn = getattr(obj, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            bucket.append(time.perf_counter() - t0)
            if cpu_bucket is not None:
                cpu_bucket.append(time.process_time() - c0)
    setattr(obj, name, wrapper)


def run_reference(spec: dict[str, Any]) -> dict[str, Any]:
    """Train with TRL per ``spec`` (base, prompts, reward, config fields); per-epoch seconds and rewards."""
    import torch
    from trl import DDPOConfig as TRLConfig
    from trl import DDPOTrainer, DefaultDDPOStableDiffusionPipeline

    from finetune.ddpo.rewards import make_reward
    from finetune.ddpo.sampler import to_pil

    c = spec["config"]
    reward = make_reward(c["reward"], path=c.get("reward_path"))
    rng = random.Random(c["seed"])
    prompts = spec["prompts"]
    epoch_rewards: list[float] = []

    def reward_fn(images: torch.Tensor, batch_prompts: tuple, metadata: tuple) -> tuple[torch.Tensor, dict]:
        r = reward(list(batch_prompts), to_pil(images.float().cpu()))
        epoch_rewards.append(float(r.mean()))
        return r, {}

    cfg = TRLConfig(num_epochs=c["epochs"], seed=c["seed"], mixed_precision=c["mixed_precision"],
                    sample_num_steps=c["steps"], sample_eta=c["eta"], sample_guidance_scale=c["guidance"],
                    sample_batch_size=c["sample_batch_size"],
                    sample_num_batches_per_epoch=c["sample_batches_per_epoch"],
                    train_batch_size=c["train_batch_size"], train_learning_rate=c["lr"],
                    train_adam_weight_decay=c["weight_decay"],
                    train_gradient_accumulation_steps=c["grad_accum_batches"],
                    train_max_grad_norm=c["max_grad_norm"], train_num_inner_epochs=c["inner_epochs"],
                    train_adv_clip_max=c["adv_clip"], train_clip_range=c["clip_range"],
                    train_timestep_fraction=c["timestep_fraction"], per_prompt_stat_tracking=True,
                    per_prompt_stat_tracking_buffer_size=c["stat_buffer"],
                    per_prompt_stat_tracking_min_count=c["stat_min_count"], save_freq=10**9, log_with=None)
    from accelerate import PartialState

    PartialState()  # TRL's pipeline logs through accelerate's logger, which needs the state first
    pipeline = DefaultDDPOStableDiffusionPipeline(spec["base"], use_lora=True)
    pipeline.set_progress_bar_config(disable=True)
    trainer = DDPOTrainer(cfg, reward_fn, lambda: (rng.choice(prompts), {}), pipeline)
    sample_s: list[float] = []
    train_s: list[float] = []
    epoch_s: list[float] = []
    epoch_cpu_s: list[float] = []
    _timed(trainer, "_generate_samples", sample_s)
    _timed(trainer, "_train_batched_samples", train_s)
    _timed(trainer, "step", epoch_s, epoch_cpu_s)
    per_epoch_rewards = []
    for epoch in range(c["epochs"]):
        n_before = len(epoch_rewards)
        trainer.step(epoch, 0)
        per_epoch_rewards.append(sum(epoch_rewards[n_before:]) / max(1, len(epoch_rewards) - n_before))
        print(f"trl epoch {epoch}: reward {per_epoch_rewards[-1]:.4f} {epoch_s[-1]:.2f} s", flush=True)
    n = len(epoch_s)
    return {"epoch_s": sum(epoch_s) / n, "epoch_cpu_s": sum(epoch_cpu_s) / n, "sample_s": sum(sample_s) / n,
            "train_s": sum(train_s) / n, "peak_rss_mb": peak_rss_mb(), "rewards": per_epoch_rewards}


def main(argv: list[str] | None = None) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not trl_available():
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    spec = json.loads((argv or sys.argv[1:])[0])
    out = run_reference(spec)
    print(f"epoch_s={out['epoch_s']:.3f} epoch_cpu_s={out['epoch_cpu_s']:.3f} sample_s={out['sample_s']:.3f} "
          f"train_s={out['train_s']:.3f} "
          f"peak_rss_mb={out['peak_rss_mb']:.1f} rewards={','.join(f'{r:.4f}' for r in out['rewards'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``pickloop bench dpo``: Diffusion-DPO training speed and memory, with and without the latent cache.

Pairs are synthetic: for each of ``pairs`` shapes prompts, the rendered scene (winner) against a
scene with another colour (loser). The cached run encodes each image once with the VAE; the uncached
run encodes both images of every pair at every step. Peak memory is the process's peak RSS
(``resource.getrusage``), so it covers both runs.
"""
from __future__ import annotations

import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from finetune.dpo import DPOConfig, PairSpec, train_dpo


def synthetic_pairs(n: int, seed: int = 0) -> tuple[list[PairSpec], dict]:
    from pickloop.shapes.world import COLORS, Scene, Shape, caption, render, sample_scene

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


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # Linux reports KiB, macOS bytes


def _measure(cfg: DPOConfig, base: str, pairs: list[PairSpec], images: dict, out: Path) -> float:
    t0 = time.perf_counter()
    result = train_dpo(cfg, base=base, pairs=pairs, load_image=images.__getitem__, out_dir=out)
    total = time.perf_counter() - t0
    print(f"  cache_latents={cfg.cache_latents}: {result.metrics['steps_per_s']:.2f} steps/s in the loop "
          f"({total:.1f} s with loading and saving), final loss {result.metrics.get('final_loss', float('nan')):.4f}")
    return float(result.metrics["steps_per_s"])


def run_bench(*, steps: int = 20, pairs: int = 32, batch_size: int = 4, base: str | None = None) -> dict:
    import torch

    from pickloop.context import resolve_model_ref

    torch.set_num_threads(1)
    base = resolve_model_ref(base)
    data, images = synthetic_pairs(pairs)
    print(f"bench dpo: base {base}, {pairs} pairs, batch {batch_size}, {steps} steps per run, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(steps=steps, batch_size=batch_size, checkpoint_every=0, log_every=0, seed=0)
        cached = _measure(DPOConfig(cache_latents=True, **common), base, data, images, Path(tmp) / "a")
        nocache = _measure(DPOConfig(cache_latents=False, **common), base, data, images, Path(tmp) / "b")
    figures = {"steps_per_s": round(cached, 3), "steps_per_s_nocache": round(nocache, 3),
               "peak_rss_mb": round(peak_rss_mb(), 1)}
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return figures

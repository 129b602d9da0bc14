"""`pickloop bench shapes`: how well the shipped models draw and read the shapes world.

Draws the shipped pipeline at its default steps and guidance on held-out prompts, reads
the images with the judge, measures the shipped CLIP's top-1 caption choice among 16,
and times one batched call that draws 4 candidates.
"""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pickloop.pipelines import open_pipeline

from .config import ShapesBenchConfig as BenchConfig
from .judge import follow_accuracy
from .models import default_clip_dir, default_pipeline_dir, default_sampling
from .world import prompt_pool, render, scene_from_prompt


def load_pipeline(folder: Path) -> Any:  # a StableDiffusionPipeline
    from diffusers import StableDiffusionPipeline

    pipe = open_pipeline(str(folder), pipeline_class=StableDiffusionPipeline)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def draw(pipe: Any, prompts: list[str], seeds: list[int], settings: dict) -> list:
    """One batched pipeline call; image i starts from the noise of seeds[i]."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    return pipe(prompts, generator=generators, **settings).images


def clip_top1(clip_dir: Path, prompts: list[str], images: list, candidates: int, seed: int) -> float:
    """Share of images whose own caption the CLIP ranks first among `candidates` captions

    (the true one plus distractors drawn from the other prompts).
    """
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(str(clip_dir), use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(str(clip_dir))
    rng = random.Random(seed)
    hits = 0
    with torch.no_grad():
        for prompt, image in zip(prompts, images):
            others = [p for p in prompts if p != prompt]
            texts = [prompt] + rng.sample(others, min(candidates - 1, len(others)))
            inputs = processor(text=texts, images=[image], return_tensors="pt", padding="max_length",
                               max_length=processor.tokenizer.model_max_length, truncation=True)
            logits = model(**inputs).logits_per_image[0]
            hits += int(logits.argmax()) == 0
    return hits / len(prompts)


def time_four(pipe: Any, settings: dict, prompt: str, repeats: int = 3) -> float:
    """Median seconds for one call drawing 4 candidates (after one warm-up call)."""
    draw(pipe, [prompt] * 4, [0, 1, 2, 3], settings)
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        draw(pipe, [prompt] * 4, [10 * r + k for k in range(4)], settings)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(cfg: BenchConfig) -> dict[str, float]:
    """All figures of the bench, as printed on its last line."""
    pipe_dir = Path(cfg.pipeline_dir or default_pipeline_dir())
    clip_dir = Path(cfg.clip_dir or default_clip_dir())
    pipe = load_pipeline(pipe_dir)
    settings = default_sampling(pipe_dir)
    prompts = prompt_pool("heldout", n=cfg.n)
    images = []
    for i in range(0, len(prompts), cfg.batch):
        chunk = prompts[i:i + cfg.batch]
        images += draw(pipe, chunk, [cfg.seed + i + k for k in range(len(chunk))], settings)
        print(f"drawn {len(images)}/{len(prompts)}", flush=True)
    acc = follow_accuracy(prompts, images)
    # CLIP is scored on the world's own drawings of fully specified held-out prompts, so that
    # its figure measures the CLIP, not the pipeline; on generated images it is printed too.
    full = prompt_pool("heldout", n=cfg.n, open_share=0.0)
    rng = random.Random(cfg.seed)
    drawn = [render(scene_from_prompt(p, rng)) for p in full]
    top1 = clip_top1(clip_dir, full, drawn, cfg.candidates, cfg.seed)
    top1_generated = clip_top1(clip_dir, prompts, images, cfg.candidates, cfg.seed)
    print(f"overall_follow={acc['overall']:.3f} clip_top1_generated={top1_generated:.3f} "
          f"steps={settings['num_inference_steps']} guidance={settings['guidance_scale']}", flush=True)
    return {"bg_acc": acc.get("background", 0.0), "color_acc": acc.get("color", 0.0),
            "shape_acc": acc.get("shape", 0.0), "size_acc": acc.get("size", 0.0),
            "pos_acc": acc.get("position", 0.0), "clip_top1": top1,
            "gen_4_s": time_four(pipe, settings, prompts[0])}


def format_figures(figures: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" if k != "gen_4_s" else f"{k}={v:.2f}" for k, v in figures.items())

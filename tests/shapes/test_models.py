"""The shipped models load offline with plain from_pretrained and work; the recipe trains and resumes."""
from __future__ import annotations

import time

import pytest
import torch

from pickloop.shapes import train as T
from pickloop.shapes.config import StageConfig, UnetConfig
from pickloop.shapes.models import default_clip_dir, default_pipeline_dir, default_sampling
from pickloop.shapes.world import Scene, Shape, render, sample_scene

torch.set_num_threads(1)


def test_shipped_pipeline_loads_offline_and_draws(monkeypatch):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = default_pipeline_dir()
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "safetensors only"
    pipe = StableDiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.rescale_betas_zero_snr and pipe.scheduler.config.timestep_spacing == "trailing"
    settings = default_sampling(folder)
    pipe.set_progress_bar_config(disable=True)
    t0 = time.perf_counter()
    image = pipe("a large red circle on a blue background", generator=torch.Generator().manual_seed(0),
                 **settings).images[0]
    assert time.perf_counter() - t0 < 30
    assert image.size == (settings["width"], settings["height"])


def test_shipped_clip_loads_offline_and_prefers_the_right_caption(monkeypatch):
    from transformers import CLIPModel, CLIPProcessor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CLIPModel.from_pretrained(default_clip_dir(), use_safetensors=True).eval()
    processor = CLIPProcessor.from_pretrained(default_clip_dir())
    image = render(Scene("blue", (Shape("circle", "red", "large", "center"),)))
    texts = ["a large red circle in the center on a blue background",
             "a small green square on the left on a white background"]
    with torch.no_grad():
        logits = model(**processor(text=texts, images=[image], return_tensors="pt", padding=True)).logits_per_image
    assert logits.shape == (1, 2)
    assert logits[0, 0] > logits[0, 1]


@pytest.mark.slow
def test_recipe_trains_ships_and_resumes(tmp_path):
    import random

    from diffusers import StableDiffusionPipeline

    work = tmp_path / "work"
    work.mkdir()
    tiny = dict(minutes=0.01, batch_size=2, checkpoint_every_s=1e9)
    T.train_vae(work, StageConfig(**tiny))
    T.train_clip(work, StageConfig(**tiny))
    T.train_unet(work, UnetConfig(**tiny, pool_size=8))
    first = T.stage_meta(work, "unet")["step"]
    assert first >= 1
    T.train_unet(work, UnetConfig(**{**tiny, "minutes": 0.02}, pool_size=8))  # resume: budget extended
    assert T.stage_meta(work, "unet")["step"] > first
    out = T.build_pipeline(work, tmp_path / "sd")
    T.save_clip(work, tmp_path / "clip")
    pipe = StableDiffusionPipeline.from_pretrained(out, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(["a red circle"], num_inference_steps=2, height=64, width=64).images[0]
    assert image.size == (64, 64)
    assert sample_scene(random.Random(0)) is not None


def test_bench_last_line_format():
    from pickloop.shapes.bench import format_figures

    line = format_figures({"bg_acc": 1.0, "color_acc": 0.9, "shape_acc": 0.8, "size_acc": 0.85, "pos_acc": 0.95,
                           "clip_top1": 0.9, "gen_4_s": 1.234})
    assert line == ("bg_acc=1.000 color_acc=0.900 shape_acc=0.800 size_acc=0.850 pos_acc=0.950 clip_top1=0.900 "
                    "gen_4_s=1.23")

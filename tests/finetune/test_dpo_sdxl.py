"""Diffusion-DPO on a tiny random SDXL pipeline: two text encoders, size/crop conditioning, and a LoRA
that plain diffusers' StableDiffusionXLPipeline loads."""
from __future__ import annotations

import torch
from PIL import Image

from finetune.dpo import DPOConfig, PairSpec, train_dpo
from tests.generator.tiny_models import build_tiny_sdxl


def test_dpo_trains_an_sdxl_lora_that_plain_diffusers_loads(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    base = build_tiny_sdxl(tmp_path / "tiny-sdxl")
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "grey": (128, 128, 128)}
    images = {name: Image.new("RGB", (16, 16), rgb) for name, rgb in colours.items()}
    pairs = [PairSpec(prompt="a red square", winner="red", loser="blue"),
             PairSpec(prompt="a green field", winner="green", loser="grey"),
             PairSpec(prompt="a red square", winner="red", loser="grey")]
    cfg = DPOConfig(steps=6, batch_size=3, lr=5e-2, rank=4, beta=500.0, checkpoint_every=0, log_every=0)
    result = train_dpo(cfg, base=str(base), pairs=pairs, load_image=images.__getitem__, out_dir=tmp_path / "lora")
    assert result.steps == 6
    # The loss starts at log 2 (policy == reference) and falls on pairs it sees again and again.
    assert result.metrics["final_loss"] < 0.69

    kwargs = dict(prompt="a red square", num_inference_steps=3, guidance_scale=1.0, height=16, width=16,
                  output_type="np")
    pipe = StableDiffusionXLPipeline.from_pretrained(str(base))
    before = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(result.lora_dir))
    after = pipe(generator=torch.Generator().manual_seed(0), **kwargs).images
    assert float(abs(after - before).max()) > 1e-4  # the LoRA reached the U-Net

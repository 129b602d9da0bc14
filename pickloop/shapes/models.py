"""Where the shipped tiny models live (package data, loadable offline with from_pretrained)."""
from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"


def default_pipeline_dir() -> Path:
    """Folder of the shipped StableDiffusionPipeline (StableDiffusionPipeline.from_pretrained(it))."""
    return MODELS_DIR / "sd"


def default_clip_dir() -> Path:
    """Folder of the shipped CLIPModel + CLIPProcessor, the reward model's default backbone."""
    return MODELS_DIR / "clip"


def default_sampling(pipeline_dir: Path | None = None) -> dict:
    """Sampling settings the pipeline was tuned for: num_inference_steps, guidance_scale, height, width."""
    path = Path(pipeline_dir or default_pipeline_dir()) / "pickloop_defaults.json"
    settings = json.loads(path.read_text())
    return {k: settings[k] for k in ("num_inference_steps", "guidance_scale", "height", "width")}

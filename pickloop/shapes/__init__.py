"""The embedded default: a procedural shapes world, its judge, simulated raters, and tiny models.

- world: scenes, captions, rendering, prompt pools (`prompt_pool`, `sample_training_pair`).
- judge: what an image shows (`read`, `follows`, `follow_accuracy`).
- tastes: hidden tastes and `SimulatedRater`.
- models: `default_pipeline_dir()`, `default_clip_dir()` (shipped package data).
- recipe / train: `pickloop shapes train`; bench: `pickloop bench shapes`.
"""
from .models import default_clip_dir, default_pipeline_dir, default_sampling

__all__ = ["default_clip_dir", "default_pipeline_dir", "default_sampling"]

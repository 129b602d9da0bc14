"""The generator: load a pipeline with a LoRA version, draw candidate sets, keep the ready queue full.

    from generator import load_pipeline, sample_candidates
    pipe = load_pipeline(lora="latest")
    for image, seed, params in sample_candidates(pipe, "a red circle", 4): ...

Names are imported lazily so that ``pickloop --help`` does not load torch.
"""
from __future__ import annotations

from pickloop.lazy import lazy_exports

_EXPORTS = {
    "load_pipeline": "generator.pipeline", "load_lora": "generator.pipeline",
    "sample_candidates": "generator.sampling", "sample_sets": "generator.sampling", "redraw": "generator.sampling",
    "fill_queue": "generator.queue", "watch_queue": "generator.queue", "draw_first_sets": "generator.queue",
    "noise_memory_stats": "generator.noise_memory",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

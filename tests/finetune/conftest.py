"""Fixtures for fine-tuning tests: a tiny random StableDiffusionPipeline on disk and labelled picks.

The pipeline uses the embedded model's classes and shapes (``pickloop.shapes.architectures``) at
random init, with its v-prediction schedule, so it exists before the trained embedded model does.
"""
from __future__ import annotations

import os
import random
import uuid
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def build_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline

    from pickloop.shapes import architectures as arch

    torch.manual_seed(seed)
    tok = arch.make_tokenizer()
    pipe = StableDiffusionPipeline(vae=arch.make_vae(), text_encoder=arch.make_text_encoder(tok, seed=seed),
                                   tokenizer=tok, unet=arch.make_unet(), scheduler=arch.make_sample_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """Folder of a tiny random SD pipeline (v-prediction, 64x64 images, 16x16 latents)."""
    return build_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "base")


def add_labelled_sets(ctx, *, n_sets: int = 3, per_set: int = 2, choice: str = "pick", seed: int = 0,
                      split: str | None = None, rater: str | None = None) -> list[int]:
    """Add ``n_sets`` judged comparisons of rendered shapes images; returns the judgement ids.

    Each set draws ``per_set`` images of scenes fitting one prompt; the rater (a new one, or the one named
    ``rater``) picks slot 0 (``choice`` "pick") or answers ``choice`` (tie, none, skip).
    """
    from pickloop.db import write_session
    from pickloop.schema import Candidate, Comparison
    from pickloop.shapes.world import Scene, Shape, caption, render, sample_scene
    from pickloop.store import add_prompts, add_rater, candidates_of, ensure_base_version, get_rater, record_judgement

    rng = random.Random(seed)
    ids = []
    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=ctx.base_model)
        rater = get_rater(session=s, name=rater) if rater else add_rater(session=s, name=f"r{uuid.uuid4().hex[:8]}")[0]
        for _ in range(n_sets):
            scene = sample_scene(rng, two_share=0.0)
            prompt = add_prompts(session=s, texts=[caption(scene, ("size", "position"))])[0]
            if split is not None:
                prompt.split = split
                s.add(prompt)
            comp = Comparison(key=uuid.uuid4().hex, prompt_id=prompt.id, model_version_id=version.id,
                              status="ready")
            s.add(comp)
            s.flush()
            for slot in range(per_set):
                obj, other = scene.objects[0], sample_scene(rng, two_share=0.0).objects[0]
                img = render(Scene(scene.background, (Shape(obj.kind, obj.color, other.size, other.position),)))
                s.add(Candidate(comparison_id=comp.id, slot=slot, prompt_id=prompt.id, model_version_id=version.id,
                                seed=rng.randrange(2**31), params={}, image_sha256=ctx.images.put(img)))
            s.flush()
            cands = candidates_of(session=s, comparison_id=comp.id)
            row, _ = record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id, choice=choice,
                                      winner_id=cands[0].id if choice == "pick" else None,
                                      shown_order=[c.id for c in cands], idempotency_key=uuid.uuid4().hex)
            ids.append(row.id)
    return ids


def labelled_home(base, monkeypatch):  # pickloop.context.Context
    """A data home whose base model is ``base``, with 3 picked train sets of 2 (3 pairs)."""
    from pickloop.context import Context

    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(base))
    c = Context()
    add_labelled_sets(c, n_sets=3, split="train")
    return c


@pytest.fixture
def labelled(ctx, tiny_base, monkeypatch):
    """A data home whose base model is the tiny pipeline, with 3 picked sets of 2 (3 pairs)."""
    return labelled_home(tiny_base, monkeypatch)

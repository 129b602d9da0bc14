"""A tiny CLIP backbone saved to a temp folder (the shapes CLIP's architecture, random weights), and
simulated preference pairs in the shapes world whose hidden taste is "larger objects are better"."""
from __future__ import annotations

import random

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def clip_dir():
    """The embedded shapes CLIP folder, shipped with the package (the reward model's default backbone)."""
    from pickloop.shapes.models import default_clip_dir

    return str(default_clip_dir())


def object_area(image) -> float:
    """The hidden taste of the tests: share of pixels that differ from the corner pixel."""
    import numpy as np

    px = np.asarray(image.convert("RGB"), dtype=np.float32)
    return float((np.abs(px - px[0, 0]).sum(-1) > 60).mean())


def simulated_pairs(n_prompts: int, per_prompt: int, seed: int = 0):
    """ImagePairs on shapes prompts that leave size open; the larger-looking object wins (ties 0.5)."""
    from pickloop.shapes.world import render, scene_from_prompt
    from reward.data import ImagePair

    rng = random.Random(seed)
    prompts = [f"a {c} {s} on a {b} background" for c in ("red", "blue", "green", "yellow")
               for s in ("circle", "square", "triangle") for b in ("white", "black", "purple")]
    rng.shuffle(prompts)
    pairs, group = [], 0
    for prompt in prompts[:n_prompts]:
        for _ in range(per_prompt):
            a, b = (render(scene_from_prompt(prompt, rng)) for _ in range(2))
            da, db = object_area(a), object_area(b)
            label = 0.5 if abs(da - db) < 1e-3 else float(da > db)
            group += 1
            pairs.append(ImagePair(prompt, a, b, label, group=group))
    return pairs


def store_labels(ctx, sets, rater_name: str = "sim") -> list[int]:
    """Write labelled sets to the store as the app would: sets = [(prompt, [images], choice)], choice a
    slot index (pick), "tie", "none" or "skip". Returns the judgement ids."""
    import uuid

    from pickloop.db import write_session
    from pickloop.schema import Candidate, Comparison
    from pickloop.store import add_prompts, add_rater, ensure_base_version, record_judgement

    out = []
    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model="embedded:shapes")
        rater, _ = add_rater(session=s, name=rater_name, kind="simulated")
        for prompt, images, choice in sets:
            p = add_prompts(session=s, texts=[prompt])[0]
            comp = Comparison(key=uuid.uuid4().hex, prompt_id=p.id, model_version_id=version.id, status="ready")
            s.add(comp)
            s.flush()
            cands = []
            for slot, im in enumerate(images):
                c = Candidate(comparison_id=comp.id, slot=slot, prompt_id=p.id, model_version_id=version.id,
                              seed=slot, image_sha256=ctx.images.put(im))
                s.add(c)
                cands.append(c)
            s.flush()
            pick = isinstance(choice, int)
            row, _ = record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id,
                                      choice="pick" if pick else choice,
                                      winner_id=cands[choice].id if pick else None,
                                      shown_order=[c.id for c in cands], idempotency_key=uuid.uuid4().hex)
            out.append(row.id)
    return out


def labelled_sets(n_prompts: int, per_prompt: int, seed: int = 0, candidates: int = 2):
    """Sets for store_labels whose pick is the candidate with the largest object (ties when equal)."""
    from pickloop.shapes.world import render, scene_from_prompt

    rng = random.Random(seed)
    prompts = [f"a {c} {s} on a {b} background" for c in ("red", "blue", "green", "yellow")
               for s in ("circle", "square", "triangle") for b in ("white", "black", "purple")]
    rng.shuffle(prompts)
    sets = []
    for prompt in prompts[:n_prompts]:
        for _ in range(per_prompt):
            images = [render(scene_from_prompt(prompt, rng)) for _ in range(candidates)]
            areas = [object_area(im) for im in images]
            best = max(range(candidates), key=lambda i: areas[i])
            tie = sum(abs(a - areas[best]) < 1e-3 for a in areas) > 1
            sets.append((prompt, images, "tie" if tie else best))
    return sets


@pytest.fixture(scope="session")
def make_pairs():
    """simulated_pairs(n_prompts, per_prompt, seed) -> list[ImagePair]."""
    return simulated_pairs


@pytest.fixture(scope="session")
def make_sets():
    """labelled_sets(n_prompts, per_prompt, seed, candidates) -> sets for write_labels."""
    return labelled_sets


@pytest.fixture
def write_labels(ctx):
    """write_labels(sets) stores labelled sets in the test's data home; returns judgement ids."""
    return lambda sets, rater_name="sim": store_labels(ctx, sets, rater_name)

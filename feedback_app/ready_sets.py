"""Ready sets made directly, without the generator: for tests, the browser bench and demos.

The generator (``generator.queue.fill_queue``) is how real sets are drawn; this writes the same
rows (a ready ``Comparison`` and its ``Candidate`` rows, images in the image store) from the
shapes world's exact renderer, so the app can be exercised in seconds with no model loaded.
"""
from __future__ import annotations

import random

from pickloop.context import Context
from pickloop.db import write_session
from pickloop.schema import Judgement
from pickloop.store import add_candidates, add_prompts, add_set, ensure_base_version


def make_ready_sets(*, ctx: Context, n: int, per_set: int | None = None, size: int = 128,
                    raters_wanted: int = 1, seed: int = 0) -> list[str]:
    """Write ``n`` ready sets of ``per_set`` candidates (default: settings.candidates_per_set) on
    shapes-world prompts, images drawn by ``pickloop.shapes.world.render``. Returns the set keys."""
    from pickloop.shapes.world import prompt_pool, render, scene_from_prompt

    per_set = per_set or ctx.settings.candidates_per_set
    rng = random.Random(seed)
    texts = prompt_pool("train", n=max(n, 1), seed=seed)
    keys = []
    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=ctx.base_model)
        prompts = add_prompts(session=s, texts=texts)
        for i in range(n):
            prompt = prompts[i % len(prompts)]
            candidates = []
            for slot in range(per_set):
                img_seed = rng.randrange(2**31)
                sha = ctx.images.put(render(scene_from_prompt(prompt.text, random.Random(img_seed)), size))
                candidates.append(dict(slot=slot, seed=img_seed, params={"renderer": "shapes.world"}, image_sha256=sha))
            comp = add_set(session=s, prompt_id=prompt.id, model_version_id=version.id, status="ready",
                           raters_wanted=raters_wanted, candidates=candidates)
            keys.append(comp.key)
    return keys


def make_answered_sets(*, ctx: Context, rater_id: int, n: int, per_set: int = 4) -> None:
    """``n`` sets the rater has answered (picks), written in bulk, for History at scale (test, bench).
    Their images are the same ``per_set`` shapes-world images, stored once."""
    from pickloop.shapes.world import render, scene_from_prompt

    shas = [ctx.images.put(render(scene_from_prompt("a red circle", random.Random(k)), 64)) for k in range(per_set)]
    with write_session(ctx.engine) as s:
        vid = ensure_base_version(session=s, base_model=ctx.base_model).id
        prompts = add_prompts(session=s, texts=[f"history prompt {i} <b>not bold</b>" for i in range(n)])
        for i, prompt in enumerate(prompts):
            comp = add_set(session=s, prompt_id=prompt.id, model_version_id=vid, status="done")
            cands = add_candidates(session=s, comparison=comp, candidates=[
                dict(slot=k, seed=k, params={}, image_sha256=sha) for k, sha in enumerate(shas)])
            s.add(Judgement(comparison_id=comp.id, rater_id=rater_id, choice="pick",
                            winner_id=cands[i % per_set].id, shown_order=[c.id for c in cands],
                            idempotency_key=f"history:{comp.key}"))

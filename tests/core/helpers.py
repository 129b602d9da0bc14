"""Small builders for store tests: ready sets with real images, without the generator."""
from __future__ import annotations

from PIL import Image

from pickloop.schema import Comparison
from pickloop.store import add_prompts, add_set, ensure_base_version


def make_ready_set(session, images, *, prompt: str = "a red circle", n: int = 2, raters_wanted: int = 1,
                   colors=((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0))) -> Comparison:
    """A ready comparison of ``n`` solid-colour candidates for ``prompt``."""
    p = add_prompts(session=session, texts=[prompt])[0]
    v = ensure_base_version(session=session, base_model="embedded:shapes")
    shas = [images.put(Image.new("RGB", (8, 8), colors[slot % len(colors)])) if images else "0" * 64
            for slot in range(n)]
    return add_set(session=session, prompt_id=p.id, model_version_id=v.id, status="ready", raters_wanted=raters_wanted,
                   candidates=[dict(slot=slot, seed=1000 + slot, params={"steps": 1}, image_sha256=sha)
                               for slot, sha in enumerate(shas)])

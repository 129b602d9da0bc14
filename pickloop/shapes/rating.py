"""A simulated rater in the store: prompts that leave attributes open, the rater's row (it cannot sign in),
and its answers to ready sets. Shared by the measured loop (``pickloop.loop``) and ``pickloop bench ddpo-curve``."""
from __future__ import annotations

import random
from typing import Sequence

from sqlmodel import select

from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.schema import Comparison, Prompt
from pickloop.shapes.tastes import SimulatedRater
from pickloop.shapes.world import caption, is_heldout, sample_scene
from pickloop.store import candidates_of, ensure_rater_without_sign_in, prompt_split, record_judgement

LOOP_POOL = "loop"  # the prompt pool of the simulated rater's sets


def open_prompts(n: int, *, heldout: bool, open_attributes: Sequence[str], seed: int = 0) -> list[str]:
    """``n`` distinct one-object prompts of one split that leave ``open_attributes`` to the model."""
    rng = random.Random(f"loop-prompts-{seed}-{heldout}-{sorted(open_attributes)}")
    out: list[str] = []
    for _ in range(200 * n + 1000):
        text = caption(sample_scene(rng, two_share=0.0), open=open_attributes)
        # held out of the shapes model's training captions, and of the store's training split
        in_split = is_heldout(text) if heldout else (not is_heldout(text) and prompt_split(text) == "train")
        if in_split and text not in out:
            out.append(text)
            if len(out) == n:
                return out
    return out  # the world has fewer such prompts; use them all


def simulated_rater_row(ctx: Context, name: str) -> int:
    """The store's row for the simulated rater (it cannot sign in: no token matches its hash)."""
    with write_session(ctx.engine) as s:
        return ensure_rater_without_sign_in(session=s, name=name, kind="simulated").id


def label_ready_sets(ctx: Context, rater: SimulatedRater, rater_id: int, limit: int,
                     version_id: int | None = None) -> int:
    """The simulated rater answers up to ``limit`` ready sets of the loop's pool (only those drawn by
    ``version_id`` when given, as the Rate page hands a rater only the sets of the version serving them);
    returns labels written."""
    with read_session(ctx.engine) as s:
        q = (select(Comparison, Prompt).join(Prompt, Comparison.prompt_id == Prompt.id)
             .where(Prompt.pool == LOOP_POOL, Comparison.status == "ready"))
        if version_id is not None:
            q = q.where(Comparison.model_version_id == version_id)
        rows = s.exec(q.order_by(Comparison.id).limit(limit)).all()
        sets = [(c, p.text, candidates_of(session=s, comparison_id=c.id)) for c, p in rows]
    written = 0
    for comp, prompt, cands in sets:
        images = [ctx.images.open(c.image_sha256) for c in cands]
        answer = rater.choose(prompt, images)
        ids = [c.id for c in cands]
        with write_session(ctx.engine) as s:
            _, created = record_judgement(
                session=s, comparison_id=comp.id, rater_id=rater_id, choice="tie" if answer == "tie" else "pick",
                winner_id=None if answer == "tie" else ids[answer], shown_order=ids,
                idempotency_key=f"loop:{comp.key}:{rater_id}")
        written += created
    return written

"""Helpers for the rating app tests: ready sets made directly (no generator), raters, row counts."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

from PIL import Image

import feedback_app
from feedback_app.logic import Identity
from pickloop.db import read_session, write_session
from pickloop.schema import Candidate, Comparison, Judgement
from pickloop.store import add_prompts, add_rater, ensure_base_version

APP_DIR = Path(feedback_app.__file__).parent
# Distinct solid colours, so every candidate of a set has its own image (and sha256).
PALETTE = [(220, 40, 40), (40, 170, 60), (40, 70, 220), (245, 220, 40), (140, 50, 180), (250, 140, 30),
           (20, 20, 20), (245, 245, 245), (0, 160, 160), (160, 90, 40), (255, 120, 200), (120, 120, 120)]


def make_sets(ctx, n: int, *, per_set: int = 4, raters_wanted: int = 1, version=None) -> list[int]:
    """``n`` ready sets of ``per_set`` distinct solid-colour images; returns their comparison ids."""
    ids = []
    with write_session(ctx.engine) as s:
        base = ensure_base_version(session=s, base_model=ctx.base_model)
        vid = version or base.id
        prompts = add_prompts(session=s, texts=[f"a test prompt number {i}" for i in range(n)])
        for i, prompt in enumerate(prompts):
            comp = Comparison(key=uuid.uuid4().hex, prompt_id=prompt.id, model_version_id=vid, status="ready",
                              raters_wanted=raters_wanted)
            s.add(comp)
            s.flush()
            for slot in range(per_set):
                colour = PALETTE[(i * per_set + slot) % len(PALETTE)]
                sha = ctx.images.put(Image.new("RGB", (32, 32), (colour[0], colour[1], (colour[2] + i) % 256)))
                s.add(Candidate(comparison_id=comp.id, slot=slot, prompt_id=prompt.id, model_version_id=vid,
                                seed=1000 * i + slot, params={}, image_sha256=sha))
            ids.append(comp.id)
    return ids


def make_rater(ctx, name: str, role: str = "rater", *, guide_seen: bool = True) -> tuple[Identity, str]:
    """A rater and its token; ``guide_seen``: the rating guide was already shown (so it does not cover the page)."""
    from pickloop.schema import utcnow

    with write_session(ctx.engine) as s:
        r, token = add_rater(session=s, name=name, role=role)
        r.guide_seen_at = utcnow() if guide_seen else None
        s.add(r)
        return Identity(rater_id=r.id, name=r.name, role=r.role, kind=r.kind), token


def count(ctx, model, **where) -> int:
    from sqlmodel import func, select

    q = select(func.count()).select_from(model)
    for k, v in where.items():
        q = q.where(getattr(model, k) == v)
    with read_session(ctx.engine) as s:
        return s.exec(q).one()


def judgements(ctx) -> list[Judgement]:
    from sqlmodel import select

    with read_session(ctx.engine) as s:
        rows = list(s.exec(select(Judgement).order_by(Judgement.id)))
        for r in rows:
            s.expunge(r)
        return rows


# ---------------------------------------------------------------- the rating panel, as the browser sees it

def panel_data(at) -> dict | None:
    """The data the rating panel component was given in the last run (None when it is not on the page)."""
    found = [e for e in at.get("bidi_component") if e.proto.component_name == "pickloop.rating_panel"]
    assert len(found) <= 1
    return json.loads(found[0].proto.json) if found else None


def shown_set(at) -> dict:
    """The set the panel puts on screen: the first one the server sent."""
    data = panel_data(at)
    assert data and data["sets"], "no set on screen"
    return data["sets"][0]


def set_key(at) -> str:
    return shown_set(at)["key"]


def answer(at, choice: str, position: int | None = None, *, ms: int = 1500, run: bool = True):
    """Answer the set on screen as the panel's script does: add the answer to the outbox of answers
    not yet acknowledged, and send the whole outbox as the component's state."""
    shown = shown_set(at)
    entry = {"id": uuid.uuid4().hex, "token": shown["token"], "choice": choice, "ms": ms,
             "winner_id": shown["candidates"][position]["id"] if choice == "pick" else None}
    return send_outbox(at, [*pending_outbox(at), entry], run=run)


def pending_outbox(at) -> list[dict]:
    acked = set((panel_data(at) or {}).get("acked", []))
    prev = at.session_state["rating_panel"]["outbox"] if "rating_panel" in at.session_state else []
    return [e for e in prev if e.get("id", e["token"]) not in acked]


def send_outbox(at, outbox: list[dict], *, run: bool = True):
    at.session_state["rating_panel"] = {"outbox": outbox}
    return at.run() if run else at


def send_undo(at, token: str, *, run: bool = True):
    """Undo as the panel's script does: the undone answer leaves the outbox (if the server has not
    acknowledged it yet) and an undo entry for its token takes its place at the end."""
    left = [e for e in pending_outbox(at) if e["token"] != token]
    entry = {"id": uuid.uuid4().hex, "token": token, "choice": "undo", "winner_id": None, "ms": None}
    return send_outbox(at, [*left, entry], run=run)

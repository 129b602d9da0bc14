"""What the Create page does, as plain functions (no Streamlit here): a rater types a prompt, the version
that serves them draws N candidates, and the one they keep is a judgement like any pick.

A Create set is a ``Comparison`` whose source is ``create``: status ``offered`` while it waits for its
rater's answer (so the Rate page's queue, the worker's counts and the pace never see it), ``done`` once
answered, ``offered`` again after an undo. It is handed to its rater alone (an ``Assignment`` row), and
the store refuses any other rater's answer to it. Two idempotency keys keep every write single:

- the set's key comes from the browser's request id (``offer_key``), so a rerun or a double click on
  Create finds the set already drawn instead of drawing and storing a second one;
- the answer's key is ``create:<set key>:<rater id>``, written with ON CONFLICT DO NOTHING as every pick.

The prompt joins the pool (``default``) with ``written_by`` set, so the queue worker draws sets of it
for the Rate page too, unless an admin hides it (``pickloop.store.set_prompt_hidden``), after which
Create refuses it. The kept image is offered as a PNG whose text chunks carry the prompt, the seed, the
sampler settings and the model version (``download_png``).
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Callable

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from feedback_app.logic import CandidateView, Identity, SetView
from generator import load_pipeline, sample_candidates
from pickloop.audiences import audiences_of, serving_version
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import (
    MAX_PROMPT_CHARS, AppText, Assignment, Comparison, Judgement, ModelVersion, Prompt, Rater, utcnow,
)
from pickloop.store import (
    add_prompts, add_set, candidates_of, promoted_version, record_judgement, sha256_text, validate_prompt,
)

SETTINGS_NAME = "create_settings"  # app_texts row holding the admin's Create settings (JSON)
DEFAULT_MAX_PROMPT_CHARS = 300  # CLIP reads 77 tokens: about 300 characters of English
POOL = "default"  # the pool a rater's prompt joins (the one the queue worker fills)
ANSWERS = ("pick", "none")  # keep one, or none good


# ---------------------------------------------------------------- admin settings

@dataclass(frozen=True)
class CreateSettings:
    """What admins set for the Create page (Admin -> Create), kept in the store."""

    enabled: bool = True
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS


def create_settings(*, session: Session) -> CreateSettings:
    """The admin's Create settings, or the defaults."""
    row = session.get(AppText, SETTINGS_NAME)
    try:
        data = json.loads(row.text) if row is not None else {}
        return CreateSettings(enabled=bool(data.get("enabled", True)),
                              max_prompt_chars=int(data.get("max_prompt_chars", DEFAULT_MAX_PROMPT_CHARS)))
    except (ValueError, TypeError, AttributeError):
        return CreateSettings()


def save_create_settings(*, session: Session, enabled: bool, max_prompt_chars: int) -> CreateSettings:
    """Switch Create on or off and cap its prompts' length (1 to the store's own limit)."""
    if isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) \
            or not 1 <= max_prompt_chars <= MAX_PROMPT_CHARS:
        raise UserError(f"the longest prompt must be 1-{MAX_PROMPT_CHARS} characters")
    value = CreateSettings(enabled=bool(enabled), max_prompt_chars=max_prompt_chars)
    row = session.get(AppText, SETTINGS_NAME) or AppText(name=SETTINGS_NAME, text="")
    row.text, row.updated_at = json.dumps(value.__dict__), utcnow()
    session.add(row)
    session.flush()
    return value


def prompt_rows(*, session: Session, limit: int = 500) -> list[dict]:
    """The newest prompts for the admin page: id, text, who wrote it (a rater's name, or "admin" for
    prompts added from the admin page or the command line), hidden, pool."""
    q = (select(Prompt, Rater.name).join(Rater, Prompt.written_by == Rater.id, isouter=True)
         .order_by(Prompt.id.desc()).limit(limit))
    return [{"id": p.id, "prompt": p.text, "written by": name or "admin", "hidden": not p.active, "pool": p.pool}
            for p, name in session.exec(q)]


# ---------------------------------------------------------------- the prompt

def check_prompt(*, session: Session, text: str, settings: CreateSettings) -> str:
    """The prompt as it will be stored (surrounding spaces removed), or a UserError of one line."""
    if not settings.enabled:
        raise UserError("Create is switched off by an admin.")
    text = (text or "").strip() if isinstance(text, str) else text
    if isinstance(text, str) and not "".join(c for c in text if unicodedata.category(c) != "Cf").strip():
        raise UserError("Type a prompt first.")  # nothing but spaces and invisible characters
    if isinstance(text, str) and len(text) > settings.max_prompt_chars:
        raise UserError(f"Your prompt is {len(text)} characters; the limit is {settings.max_prompt_chars}.")
    try:
        validate_prompt(text)
    except UserError as e:
        raise UserError(f"That prompt cannot be used: {e}.") from None
    hidden = session.exec(select(Prompt.id).where(Prompt.text_sha256 == sha256_text(text),
                                                  Prompt.active == False)).first()  # noqa: E712
    if hidden is not None:
        raise UserError("An admin has hidden this prompt; try another.")
    return text


# ---------------------------------------------------------------- the set

@dataclass(frozen=True)
class Offer:
    """A Create set as its rater sees it: the candidates in the order drawn, and what the download carries."""

    view: SetView
    seeds: tuple[int, ...]
    params: tuple[dict, ...]
    version: str  # the model version's name
    created: bool = True  # False: the set was already drawn for this request (a rerun, a double click)


def offer_key(rater_id: int, request_id: str) -> str:
    """The set's key for one Create request of one rater: a replayed request names the same set."""
    return hashlib.sha256(f"create:{rater_id}:{request_id}".encode()).hexdigest()[:32]


def find_offer(*, session: Session, key: str, rater_id: int) -> Offer | None:
    """The Create set ``key`` if it was drawn for ``rater_id``."""
    comp = session.exec(select(Comparison).where(Comparison.key == key)).first()
    if comp is None or comp.source != "create":
        return None
    if session.exec(select(Assignment.id).where(Assignment.comparison_id == comp.id,
                                                Assignment.rater_id == rater_id)).first() is None:
        return None
    cands = candidates_of(session=session, comparison_id=comp.id)
    prompt = session.get(Prompt, comp.prompt_id)
    version = session.get(ModelVersion, comp.model_version_id)
    view = SetView(comparison_id=comp.id, key=comp.key, prompt=prompt.text,
                   candidates=tuple(CandidateView(c.id, c.image_sha256, i) for i, c in enumerate(cands)))
    return Offer(view=view, seeds=tuple(c.seed for c in cands), params=tuple(c.params for c in cands),
                 version=version.name if version else "", created=False)


def record_offer(*, session: Session, identity: Identity, key: str, text: str, version_id: int,
                 candidates: list[dict], settings: CreateSettings) -> Offer:
    """Store a drawn Create set for ``identity`` in one transaction: the prompt (written by this rater,
    unless it was in the pool already), the set (``offered``), its candidates and its hand-out.
    ``candidates``: dicts of slot, seed, params and image_sha256. A key already stored returns that set."""
    found = find_offer(session=session, key=key, rater_id=identity.rater_id)
    if found is not None:
        return found
    text = check_prompt(session=session, text=text, settings=settings)  # again: an admin may have acted meanwhile
    if len(candidates) < 2:
        raise UserError("a Create set needs at least two candidates")
    prompt = add_prompts(session=session, texts=[text], pool=POOL, written_by=identity.rater_id)[0]
    comp = add_set(session=session, prompt_id=prompt.id, model_version_id=version_id, status="offered", key=key,
                   source="create", candidates=candidates)
    session.add(Assignment(comparison_id=comp.id, rater_id=identity.rater_id))
    session.flush()
    offer = find_offer(session=session, key=key, rater_id=identity.rater_id)
    return Offer(offer.view, offer.seeds, offer.params, offer.version, created=True)


Draw = Callable[..., list[dict]]


def draw_candidates(ctx, *, prompt: str, n: int, version_id: int) -> list[dict]:  # noqa: ANN001
    """N candidates of ``prompt`` by model version ``version_id`` in one batched call (the model's own
    steps, guidance and size), images stored; dicts of slot, seed, params and image_sha256."""
    pipe = _pipeline(ctx, version_id)
    drawn = sample_candidates(pipe, prompt, n)
    return [dict(slot=slot, seed=seed, params=params, image_sha256=ctx.images.put(img))
            for slot, (img, seed, params) in enumerate(drawn)]


_threads_set = threading.Lock()


def _pipeline(ctx, version_id: int):  # noqa: ANN001, ANN202
    """The cached pipeline of the version (one per process, shared by every rater; one drawing at a time)."""
    threads = ctx.settings.create_threads
    if threads:
        import torch

        with _threads_set:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
    return load_pipeline(lora=version_id, ctx=ctx)


def warm_up(ctx, rater_id: int) -> None:  # noqa: ANN001
    """Load the model that serves ``rater_id`` in the background, so that their first Create does not
    wait for it (nothing happens when no version is registered yet)."""
    with read_session(ctx.engine) as s:
        found = (promoted_version(session=s, audience=a) for a in audiences_of(session=s, rater_id=rater_id))
        version = next((v for v in found if v is not None), None)
    if version is None:
        return

    def load() -> None:
        try:
            _pipeline(ctx, version.id)
        except Exception:  # noqa: BLE001 - the Create request that needs it will say why
            pass

    # not a daemon: a process that exits meanwhile waits for the load rather than abort inside torch
    threading.Thread(target=load, name=f"pickloop-create-warm-{version.id}").start()


def create_offer(ctx, *, identity: Identity, text: str, request_id: str, n: int | None = None,  # noqa: ANN001
                 draw: Draw | None = None) -> Offer:
    """Draw and store a Create set for the rater's prompt: check it, find the version that serves the
    rater, draw ``n`` (settings.create_candidates) candidates outside any transaction (``draw``, by
    default ``draw_candidates``), then store it all in one. A request already handled returns its set
    without drawing again. Bad input is a UserError of one line, and nothing is written."""
    n = n or ctx.settings.create_candidates
    if not 2 <= n <= 4:
        raise UserError("Create draws 2-4 candidates")
    key = offer_key(identity.rater_id, str(request_id))
    with write_session(ctx.engine) as s:
        found = find_offer(session=s, key=key, rater_id=identity.rater_id)
        if found is not None:
            return found
        settings = create_settings(session=s)
        text = check_prompt(session=s, text=text, settings=settings)
        version_id = serving_version(session=s, rater_id=identity.rater_id, base_model=ctx.base_model).id
    rows = (draw or draw_candidates)(ctx, prompt=text, n=n, version_id=version_id)
    try:
        with write_session(ctx.engine) as s:
            return record_offer(session=s, identity=identity, key=key, text=text, version_id=version_id,
                                candidates=rows, settings=settings)
    except IntegrityError:  # the same request stored meanwhile by another run (its key is unique): that set
        with write_session(ctx.engine) as s:
            found = find_offer(session=s, key=key, rater_id=identity.rater_id)
        if found is None:
            raise
        return found


# ---------------------------------------------------------------- the answer

def idempotency_key(set_key: str, rater_id: int) -> str:
    return f"create:{set_key}:{rater_id}"


def answer_of(*, session: Session, rater_id: int, comparison_id: int) -> Judgement | None:
    """The rater's recorded answer to a set, or None."""
    return session.exec(select(Judgement).where(Judgement.comparison_id == comparison_id,
                                                Judgement.rater_id == rater_id)).first()


def keep(*, session: Session, identity: Identity, view: SetView, choice: str, winner_id: int | None = None,
         time_ms: int | None = None) -> tuple[Judgement, bool]:
    """Record the rater's answer to their Create set: keep one (``pick``, ``winner_id``) or none good.
    Returns (judgement, created); a replay returns the first answer with created=False."""
    if choice not in ANSWERS:
        raise UserError(f"a Create answer is pick or none, not {choice!r}")
    if choice == "pick" and winner_id not in view.shown_order:
        raise UserError("keep one of the candidates shown")
    return record_judgement(session=session, comparison_id=view.comparison_id, rater_id=identity.rater_id,
                            choice=choice, winner_id=winner_id if choice == "pick" else None,
                            shown_order=view.shown_order, idempotency_key=idempotency_key(view.key, identity.rater_id),
                            time_ms=None if time_ms is None else max(0, int(time_ms)))


# ---------------------------------------------------------------- the download

def sampler_settings(params: dict) -> dict[str, Any]:
    """The settings that shaped an image, as recorded when it was drawn."""
    sched = params.get("scheduler") or {}
    return {"scheduler": sched.get("class"), "steps": params.get("num_inference_steps"),
            "guidance_scale": params.get("guidance_scale"), "width": params.get("width"),
            "height": params.get("height"), "negative_prompt": params.get("negative_prompt")}


def png_text(*, prompt: str, seed: int, params: dict, version: str, set_key: str) -> dict[str, str]:
    """The PNG text chunks of a downloaded candidate. ``parameters`` is the line AUTOMATIC1111's
    web UI writes, which many image tools read; ``pickloop`` is enough to draw the image again."""
    s = sampler_settings(params)
    base = params.get("model") or ""
    base = PurePath(base).name if "/" in base or "\\" in base else base  # a folder's name, never a server path
    a1111 = (f"{prompt}\nSteps: {s['steps']}, Sampler: {s['scheduler']}, CFG scale: {s['guidance_scale']}, "
             f"Seed: {seed}, Size: {s['width']}x{s['height']}, Model: {version}")
    return {"prompt": prompt, "seed": str(seed), "sampler": json.dumps(s), "model_version": version,
            "base_model": base, "lora_sha256": params.get("lora_sha256") or "", "parameters": a1111,
            "pickloop": json.dumps({"set": set_key, "slot": params.get("slot"), "seed": seed,
                                    "batch_seeds": params.get("batch_seeds"),
                                    "model_version_id": params.get("model_version_id")}),
            "Software": "pickloop"}


def download_png(image: bytes, *, prompt: str, seed: int, params: dict, version: str, set_key: str) -> bytes:
    """The stored image again as a PNG that carries ``png_text`` in its text chunks (PIL ``PngInfo``)."""
    from PIL import PngImagePlugin

    from pickloop.images import decode_image

    img = decode_image(image, what=f"candidate of set {set_key[:8]}")
    info = PngImagePlugin.PngInfo()
    for k, v in png_text(prompt=prompt, seed=seed, params=params, version=version, set_key=set_key).items():
        info.add_text(k, v)  # iTXt when the text is not Latin-1 (a prompt in any script)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def download_name(set_key: str, seed: int) -> str:
    """The file name offered: no user text in it (prompts can hold anything)."""
    return f"pickloop-{set_key[:8]}-{seed}.png"


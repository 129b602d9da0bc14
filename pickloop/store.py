"""The store's data functions: keyword-only, each taking the caller's session (one transaction per write).

A replayed write is a no-op because a unique constraint says so, not because of luck: judgements
are inserted with ON CONFLICT DO NOTHING on their idempotency key and on (set, rater).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Collection, Iterable, Sequence

from sqlalchemy import func, insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from pickloop.errors import UserError
from pickloop.schema import (
    CHOICES, MAX_PROMPT_CHARS, Assignment, Candidate, Comparison, Judgement, ModelVersion, Prompt, Rater, utcnow,
)

HELDOUT_SHARE = 0.1  # share of prompts held out from every training set, fixed by a hash of the text


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_split(text: str, heldout_share: float = HELDOUT_SHARE) -> str:
    """``heldout`` or ``train``, from a hash of the text: stable as the pool grows."""
    h = int(sha256_text("split:" + text)[:8], 16) / 0xFFFFFFFF
    return "heldout" if h < heldout_share else "train"


# ---------------------------------------------------------------- prompts

def validate_prompt(text: str) -> str:
    """The prompt, exactly as given, or a UserError saying why it is refused."""
    if not isinstance(text, str):
        raise UserError("a prompt must be text")
    if "\x00" in text:
        raise UserError("prompt contains a NUL character; remove it")
    if any(unicodedata.category(c) == "Cs" for c in text):  # how Python holds a byte that is not UTF-8
        raise UserError("prompt is not valid UTF-8 text")
    bad = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\t"]
    if bad:
        raise UserError(f"prompt contains control character {bad[0]!r}; remove it")
    if not "".join(c for c in text if unicodedata.category(c) != "Cf").strip():
        raise UserError("prompt is empty (only spaces or invisible characters)")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserError(f"prompt is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    return text


def add_prompts(*, session: Session, texts: Iterable[str], pool: str = "default",
                written_by: int | None = None) -> list[Prompt]:
    """Add prompts (validated first, all or none); ones already stored are returned, not duplicated.

    ``written_by``: the rater who typed them (the Create page); a prompt already stored keeps its author.
    """
    texts = [validate_prompt(t) for t in texts]
    out: list[Prompt] = []
    for text in dict.fromkeys(texts):
        sha = sha256_text(text)
        row = session.exec(select(Prompt).where(Prompt.text_sha256 == sha)).first()
        if row is None:
            row = Prompt(text=text, text_sha256=sha, pool=pool, split=prompt_split(text), written_by=written_by)
            session.add(row)
            session.flush()
        out.append(row)
    return out


def list_prompts(*, session: Session, pool: str | None = None, split: str | None = None,
                 active: bool | None = True) -> list[Prompt]:
    q = select(Prompt).order_by(Prompt.id)
    if pool is not None:
        q = q.where(Prompt.pool == pool)
    if split is not None:
        q = q.where(Prompt.split == split)
    if active is not None:
        q = q.where(Prompt.active == active)
    return list(session.exec(q))


def set_prompt_hidden(*, session: Session, prompt_id: int, hidden: bool = True) -> Prompt:
    """Hide a prompt (admins): it is never drawn again, its waiting sets are not handed out, and the
    Create page refuses it. ``hidden=False`` serves it again."""
    row = session.get(Prompt, prompt_id)
    if row is None:
        raise UserError(f"no prompt with id {prompt_id}")
    row.active = not hidden
    session.add(row)
    session.flush()
    return row


# ---------------------------------------------------------------- raters

def hash_token(token: str) -> str:
    # Tokens are 192 random bits, so a plain hash is enough (no dictionary to guess from).
    return hashlib.sha256(("pickloop-token:" + token).encode()).hexdigest()


def add_rater(*, session: Session, name: str, role: str = "rater", kind: str = "human") -> tuple[Rater, str]:
    """Create a rater; returns the row and its token, which is shown once and stored only hashed."""
    name = name.strip()
    if not name or len(name) > 64 or any(unicodedata.category(c).startswith("C") for c in name):
        raise UserError("rater name must be 1-64 printable characters")
    if role not in ("rater", "admin"):
        raise UserError(f"role must be rater or admin, not {role!r}")
    if session.exec(select(Rater).where(Rater.name == name)).first() is not None:
        raise UserError(f"rater {name!r} already exists")
    token = secrets.token_urlsafe(24)
    rater = Rater(name=name, token_hash=hash_token(token), role=role, kind=kind)
    session.add(rater)
    session.flush()
    return rater, token


def ensure_rater_without_sign_in(*, session: Session, name: str, kind: str) -> Rater:
    """The rater ``name``, created on first use for answers that come from elsewhere (``kind``: simulated,
    imported). It cannot sign in: its token hash ``!<kind>`` is no sha256 of any token."""
    rater = session.exec(select(Rater).where(Rater.name == name)).first()
    if rater is None:
        rater = Rater(name=name, token_hash=f"!{kind}", role="rater", kind=kind)
        session.add(rater)
        session.flush()
    return rater


def get_rater(*, session: Session, name: str) -> Rater:
    rater = session.exec(select(Rater).where(Rater.name == name)).first()
    if rater is None or not rater.active:
        raise UserError(f"unknown rater: {name!r}")
    return rater


def authenticate(*, session: Session, name: str, token: str) -> Rater | None:
    """The active rater with this name and token, or None (constant-time comparison)."""
    rater = session.exec(select(Rater).where(Rater.name == (name or "").strip())).first()
    expected = rater.token_hash if rater is not None else hash_token(secrets.token_urlsafe(24))
    ok = hmac.compare_digest(expected, hash_token(token or ""))
    return rater if (ok and rater is not None and rater.active) else None


def list_raters(*, session: Session) -> list[Rater]:
    return list(session.exec(select(Rater).order_by(Rater.id)))


# ---------------------------------------------------------------- model versions

EVERYONE = "everyone"  # the audience of a version that serves every rater (the shared model)


def parse_audience(text: str | None) -> str:
    """``everyone`` (also for None or ""), ``group:NAME`` or ``rater:NAME``; anything else is a UserError."""
    text = (text or EVERYONE).strip()
    kind, _, name = text.partition(":")
    if text == EVERYONE or (kind in ("group", "rater") and name.strip() and len(text) <= 80
                            and not any(unicodedata.category(c).startswith("C") for c in name)):
        return text if text == EVERYONE else f"{kind}:{name.strip()}"
    raise UserError(f"audience must be everyone, group:NAME or rater:NAME, not {text[:80]!r}")


def promoted_version(*, session: Session, audience: str = EVERYONE) -> ModelVersion | None:
    """The version promoted for ``audience`` (by default the shared one), or None."""
    return session.exec(select(ModelVersion).where(ModelVersion.status == "promoted",
                                                   ModelVersion.audience == audience)
                        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())).first()


def ensure_base_version(*, session: Session, base_model: str) -> ModelVersion:
    """The version that stands for ``base_model`` without a LoRA; made and promoted if none is promoted."""
    row = session.exec(select(ModelVersion).where(ModelVersion.base_model == base_model,
                                                  ModelVersion.method == "base")).first()
    if row is None:
        n = session.exec(select(func.count()).select_from(ModelVersion)).one()
        row = ModelVersion(name=f"base-{n + 1}", base_model=base_model, method="base")
        session.add(row)
        session.flush()
    if promoted_version(session=session) is None:
        promote(session=session, version=row)
    return row


def promote(*, session: Session, version: ModelVersion) -> None:
    """Make ``version`` the one promoted version of its audience (that audience's previous one is retired)."""
    for old in session.exec(select(ModelVersion).where(ModelVersion.status == "promoted",
                                                       ModelVersion.audience == version.audience)):
        if old.id != version.id:
            old.status = "retired"
            session.add(old)
    version.status = "promoted"
    version.promoted_at = utcnow()
    version.reason = None
    session.add(version)
    session.flush()


def find_version(*, session: Session, ref: str | int, audience: str | None = None) -> ModelVersion:
    """A version by id, name or ``latest``: the one promoted for ``audience`` (``group:NAME``,
    ``rater:NAME``), else the shared one."""
    if ref == "latest":
        aud = parse_audience(audience)
        row = promoted_version(session=session, audience=aud) or promoted_version(session=session)
    elif isinstance(ref, int) or str(ref).isdigit():
        row = session.get(ModelVersion, int(ref))
    else:
        row = session.exec(select(ModelVersion).where(ModelVersion.name == ref)).first()
    if row is None:
        raise UserError(f"no model version {ref!r} in the registry")
    return row


# ---------------------------------------------------------------- candidate sets

def add_set(*, session: Session, prompt_id: int, model_version_id: int, status: str = "ready",
            key: str | None = None, raters_wanted: int = 1, source: str = "queue", claimed_by: str | None = None,
            candidates: Sequence[dict] = ()) -> Comparison:
    """A candidate set (``Comparison``) of one prompt, with ``candidates`` (see :func:`add_candidates`).

    ``key``: the set's id in idempotency keys (None: a fresh random one). ``status``: ``drawing`` for a set
    a worker (``claimed_by``) is still drawing, ``ready`` to be shown, ``done`` once answered.
    """
    comp = Comparison(key=key or uuid.uuid4().hex, prompt_id=prompt_id, model_version_id=model_version_id,
                      status=status, raters_wanted=raters_wanted, source=source, claimed_by=claimed_by,
                      claimed_at=utcnow() if claimed_by is not None else None)
    session.add(comp)
    session.flush()
    if candidates:
        add_candidates(session=session, comparison=comp, candidates=candidates)
    return comp


def add_candidates(*, session: Session, comparison: Comparison, candidates: Sequence[dict]) -> list[Candidate]:
    """The candidate rows of ``comparison``, one per dict of ``slot``, ``seed``, ``params`` and
    ``image_sha256`` (the image already in the image store), optionally ``from_noise_memory`` and
    ``model_version_id`` (default: the set's; an imported set may mix models)."""
    rows = [Candidate(comparison_id=comparison.id, prompt_id=comparison.prompt_id,
                      **{"model_version_id": comparison.model_version_id, **c}) for c in candidates]
    session.add_all(rows)
    session.flush()
    return rows


# ---------------------------------------------------------------- judgements

def candidates_of(*, session: Session, comparison_id: int) -> list[Candidate]:
    return list(session.exec(select(Candidate).where(Candidate.comparison_id == comparison_id)
                             .order_by(Candidate.slot)))


def _insert_ignore(session: Session, model, values: dict) -> bool:  # noqa: ANN001
    """INSERT ... ON CONFLICT DO NOTHING; True when a row was written."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as insert_or_ignore
    elif dialect == "sqlite":
        insert_or_ignore = sqlite_insert
    else:  # pragma: no cover - other databases: the unique constraints raise instead
        return session.execute(insert(model).values(**values).returning(model.id)).first() is not None
    # RETURNING, not rowcount: an ORM-enabled insert reports rowcount -1 on some drivers
    stmt = insert_or_ignore(model).values(**values).on_conflict_do_nothing().returning(model.id)
    return session.execute(stmt).first() is not None


def _lock_comparison(session: Session, comparison_id: int) -> Comparison | None:
    """The set's row, locked until the transaction ends (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's
    BEGIN IMMEDIATE already serialises writers). Two raters answering one overlap set at once thus count
    answers one after the other, and the second count sees the first answer."""
    return session.exec(select(Comparison).where(Comparison.id == comparison_id).with_for_update()
                        .execution_options(populate_existing=True)).first()


def _handed_to(session: Session, comparison_id: int, rater_id: int) -> bool:
    return session.exec(select(Assignment.id).where(Assignment.comparison_id == comparison_id,
                                                    Assignment.rater_id == rater_id)).first() is not None


def record_judgement(*, session: Session, comparison_id: int, rater_id: int, choice: str,
                     winner_id: int | None, shown_order: Sequence[int], idempotency_key: str,
                     time_ms: int | None = None) -> tuple[Judgement, bool]:
    """Record a rater's answer to a set. Returns (row, created); a replay returns the first row.

    ``choice`` is pick (``winner_id`` one of the set's candidates), tie, none (none good) or skip.
    ``shown_order`` lists the set's candidate ids in the order the rater saw them. The same key, or
    the same rater answering the same set again (a second tab), leaves the first answer standing.
    """
    if choice not in CHOICES:
        raise UserError(f"choice must be one of {', '.join(CHOICES)}, not {choice!r}")
    if not idempotency_key or len(idempotency_key) > 128:
        raise UserError("an idempotency key of 1-128 characters is required")
    rater = session.get(Rater, rater_id)
    if rater is None or not rater.active:
        raise UserError(f"unknown rater id {rater_id}")
    comp = _lock_comparison(session, comparison_id)
    if comp is None or comp.status not in ("ready", "offered", "done"):
        raise UserError(f"set {comparison_id} is not ready to be judged")
    if comp.source == "create" and not _handed_to(session, comparison_id, rater_id):
        raise UserError(f"set {comparison_id} was drawn for another rater")
    ids = [c.id for c in candidates_of(session=session, comparison_id=comparison_id)]
    if sorted(shown_order) != sorted(ids):
        raise UserError("shown order must list each candidate of the set once")
    if choice == "pick" and winner_id not in ids:
        raise UserError("a pick must name one of the set's candidates")
    if choice != "pick":
        winner_id = None
    created = _insert_ignore(session, Judgement, dict(
        comparison_id=comparison_id, rater_id=rater_id, choice=choice, winner_id=winner_id,
        shown_order=list(shown_order), time_ms=time_ms, idempotency_key=idempotency_key,
        created_at=utcnow()))
    row = session.exec(select(Judgement).where(Judgement.comparison_id == comparison_id,
                                               Judgement.rater_id == rater_id)).first()
    if row is None:
        raise UserError("idempotency key already used for another answer")
    if created:
        n = session.exec(select(func.count()).select_from(Judgement)
                         .where(Judgement.comparison_id == comparison_id)).one()
        if n >= comp.raters_wanted and comp.status != "done":
            comp.status = "done"
            session.add(comp)
        session.flush()
    return row, created


def undo_judgement(*, session: Session, judgement_id: int, rater_id: int, within_s: float) -> bool:
    """Delete a rater's own judgement if it is younger than ``within_s`` seconds; the set is shown again."""
    row = session.get(Judgement, judgement_id)
    if row is None or row.rater_id != rater_id:
        return False
    if row.created_at < utcnow() - timedelta(seconds=within_s):
        return False
    comp = _lock_comparison(session, row.comparison_id)
    session.delete(row)
    if comp is not None and comp.status == "done":
        comp.status = "offered" if comp.source == "create" else "ready"  # a Create set is its rater's again
        session.add(comp)
    session.flush()
    return True


def data_snapshot(*, session: Session) -> int:
    """The highest judgement id: names the labels a model was trained on."""
    return session.exec(select(func.coalesce(func.max(Judgement.id), 0))).one()


@dataclass(frozen=True)
class Pair:
    """One preference pair from a judgement. ``label`` is P(a preferred over b): 1.0, or 0.5 for a tie."""

    judgement_id: int
    prompt_id: int
    prompt: str
    a: Candidate
    b: Candidate
    label: float
    rater_id: int


def preference_pairs(*, session: Session, upto_id: int | None = None, include_ties: bool = True,
                     split: str | None = None, rater_ids: Collection[int] | None = None) -> list[Pair]:
    """Pairs from judgements: the winner against every other candidate shown (label 1.0); for a tie,
    every pair of the set (label 0.5) when ``include_ties``. none good and skip give no pair.
    ``rater_ids``: only these raters' judgements (an audience's, ``pickloop.audiences.audience_rater_ids``)."""
    q = (select(Judgement, Comparison, Prompt).join(Comparison, Judgement.comparison_id == Comparison.id)
         .join(Prompt, Comparison.prompt_id == Prompt.id).order_by(Judgement.id))
    if upto_id is not None:
        q = q.where(Judgement.id <= upto_id)
    if split is not None:
        q = q.where(Prompt.split == split)
    if rater_ids is not None:
        q = q.where(Judgement.rater_id.in_(sorted(rater_ids)))
    pairs: list[Pair] = []
    for j, comp, prompt in session.exec(q):
        if j.choice not in ("pick", "tie") or (j.choice == "tie" and not include_ties):
            continue
        cands = {c.id: c for c in candidates_of(session=session, comparison_id=comp.id)}
        if j.choice == "pick":
            for cid, c in cands.items():
                if cid != j.winner_id:
                    pairs.append(Pair(j.id, prompt.id, prompt.text, cands[j.winner_id], c, 1.0, j.rater_id))
        else:
            ordered = sorted(cands.values(), key=lambda c: c.slot)
            for i in range(len(ordered)):
                for k in range(i + 1, len(ordered)):
                    pairs.append(Pair(j.id, prompt.id, prompt.text, ordered[i], ordered[k], 0.5, j.rater_id))
    return pairs

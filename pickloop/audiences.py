"""Audiences: whom a model version serves. Every version serves ``everyone`` unless it was promoted for a
group of raters (``group:NAME``) or one rater (``rater:NAME``); each audience has at most one promoted
version (``pickloop.store.promote``), and a rater is served by the first promoted version among their own,
their groups' (by group name) and everyone's.

Training for an audience (``pickloop finetune run --audience``) reads the labels through a ``LabelScope``:
the audience's own raters' labels at weight 1, everyone else's at ``others_weight`` (0: left out).

Keyword-only functions over the caller's session, as in ``pickloop.store``.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func
from sqlmodel import Session, select

from pickloop.errors import UserError
from pickloop.schema import GroupMember, Judgement, ModelVersion, Rater, RaterGroup
from pickloop.store import EVERYONE, ensure_base_version, find_version, get_rater, parse_audience, promote, \
    promoted_version


def _group(session: Session, name: str) -> RaterGroup:
    row = session.exec(select(RaterGroup).where(RaterGroup.name == name.strip())).first()
    if row is None:
        raise UserError(f"no group {name!r}")
    return row


def add_group(*, session: Session, name: str) -> RaterGroup:
    """A new group of raters (1-64 printable characters, no colon)."""
    name = (name or "").strip()
    if not name or len(name) > 64 or ":" in name or any(unicodedata.category(c).startswith("C") for c in name):
        raise UserError("a group name is 1-64 printable characters without a colon")
    if session.exec(select(RaterGroup).where(RaterGroup.name == name)).first() is not None:
        raise UserError(f"group {name!r} already exists")
    row = RaterGroup(name=name)
    session.add(row)
    session.flush()
    return row


def set_membership(*, session: Session, group: str, raters: list[str], member: bool = True) -> int:
    """Put raters in a group (or take them out); returns how many changed."""
    g = _group(session, group)
    changed = 0
    for name in raters:
        rater = get_rater(session=session, name=name)
        row = session.exec(select(GroupMember).where(GroupMember.group_id == g.id,
                                                     GroupMember.rater_id == rater.id)).first()
        if member and row is None:
            session.add(GroupMember(group_id=g.id, rater_id=rater.id))
            changed += 1
        elif not member and row is not None:
            session.delete(row)
            changed += 1
    session.flush()
    return changed


def groups(*, session: Session) -> dict[str, list[str]]:
    """Every group and its raters' names, by name."""
    out: dict[str, list[str]] = {g.name: [] for g in session.exec(select(RaterGroup).order_by(RaterGroup.name))}
    q = (select(RaterGroup.name, Rater.name).join(GroupMember, GroupMember.group_id == RaterGroup.id)
         .join(Rater, Rater.id == GroupMember.rater_id).order_by(RaterGroup.name, Rater.name))
    for g, r in session.exec(q):
        out[g].append(r)
    return out


def audiences_of(*, session: Session, rater_id: int) -> list[str]:
    """The audiences a rater belongs to, first served first: their own, their groups' (by name), everyone."""
    rater = session.get(Rater, rater_id)
    if rater is None:
        return [EVERYONE]
    q = (select(RaterGroup.name).join(GroupMember, GroupMember.group_id == RaterGroup.id)
         .where(GroupMember.rater_id == rater_id).order_by(RaterGroup.name))
    return [f"rater:{rater.name}", *(f"group:{g}" for g in session.exec(q)), EVERYONE]


def serving_version(*, session: Session, rater_id: int, base_model: str) -> ModelVersion:
    """The version that draws for ``rater_id``: the one promoted for the first of their audiences that has
    one, else the shared one (the base model's own version, made and promoted when none is). Call inside a
    write session: it may register the base version."""
    for audience in audiences_of(session=session, rater_id=rater_id):
        row = promoted_version(session=session, audience=audience)
        if row is not None:
            return row
    return ensure_base_version(session=session, base_model=base_model)


def serve(*, session: Session, ref: str | int, audience: str) -> ModelVersion:
    """Make version ``ref`` the one that serves ``audience`` (promoted for it; that audience's previous
    version is retired). A version serves one audience at a time; the shared version cannot be moved."""
    audience = parse_audience(audience)
    version = find_version(session=session, ref=ref)
    kind, _, name = audience.partition(":")
    if kind == "group":
        _group(session, name)
    elif kind == "rater":
        get_rater(session=session, name=name)
    if version.status == "promoted" and version.audience != audience:
        raise UserError(f"version {version.name} already serves {version.audience}; promote another there first")
    version.audience = audience
    promote(session=session, version=version)
    return version


@dataclass(frozen=True)
class Serving:
    audience: str
    version: str
    method: str


def serving_table(*, session: Session) -> list[Serving]:
    """Which version serves whom: one row per audience with a promoted version, everyone first."""
    rows = session.exec(select(ModelVersion).where(ModelVersion.status == "promoted")
                        .order_by(ModelVersion.audience != EVERYONE, ModelVersion.audience)).all()
    return [Serving(v.audience, v.name, v.method) for v in rows]


# ---------------------------------------------------------------- training for an audience

@dataclass(frozen=True)
class LabelScope:
    """Whose labels a fine-tuning run learns from: ``audience``'s raters at weight 1, everyone else's at
    ``others_weight`` (0: left out). ``everyone`` is every label at weight 1, as before audiences."""

    audience: str = EVERYONE
    others_weight: float = 0.0

    @property
    def shared(self) -> bool:
        return self.audience == EVERYONE

    def audience_key(self) -> str:
        """The audience's part of ``key``: every run for the audience has it, whatever the weight."""
        return "" if self.shared else "for-" + hashlib.sha256(self.audience.encode()).hexdigest()[:12]

    def key(self) -> str:
        """What a run key adds for this scope ("" for everyone, so older keys still hold)."""
        if self.shared:
            return ""
        return self.audience_key() + (f"-w{self.others_weight!r}" if self.others_weight else "")

    def label(self) -> str:
        """A readable suffix for a version name: ``for-rater-alice`` (``-w0.25`` with others' labels)."""
        if self.shared:
            return ""
        name = "".join(c if c.isalnum() or c in "_." else "-" for c in self.audience.replace(":", "-"))[:40]
        return f"for-{name}" + (f"-w{self.others_weight:g}" if self.others_weight else "")

    def describe(self) -> dict[str, object]:
        return {"audience": self.audience, "others_weight": self.others_weight}


def label_scope(audience: str | None = None, others_weight: float | str | None = None) -> LabelScope:
    """A checked LabelScope: a well-formed audience and 0 <= others_weight <= 1 (one UserError line
    otherwise, before anything loads). Whether the group or rater exists is ``audience_rater_ids``'s check."""
    audience = parse_audience(audience)
    try:
        w = 0.0 if others_weight is None else float(others_weight)
    except (TypeError, ValueError):
        w = float("nan")
    if not 0.0 <= w <= 1.0:  # also refuses nan and what is not a number
        raise UserError(f"--others-weight must be between 0 and 1, not {others_weight}")
    if audience == EVERYONE and w:
        raise UserError("--others-weight weighs the labels of raters outside --audience group:NAME or rater:NAME; "
                        "everyone has no others")
    return LabelScope(audience, w)


def audience_rater_ids(*, session: Session, audience: str) -> set[int] | None:
    """The ids of the raters whose labels are ``audience``'s own: the rater, or the group's members;
    None for everyone (every rater). An unknown group or rater is one UserError line."""
    kind, _, name = parse_audience(audience).partition(":")
    if kind == "rater":
        return {get_rater(session=session, name=name).id}
    if kind == "group":
        g = _group(session, name)
        return set(session.exec(select(GroupMember.rater_id).where(GroupMember.group_id == g.id)))
    return None


def label_weight(*, session: Session, scope: LabelScope) -> Callable[[int], float]:
    """rater id -> the weight of their labels under ``scope`` (1 for the audience, ``others_weight`` else)."""
    ids = audience_rater_ids(session=session, audience=scope.audience)
    if ids is None:
        return lambda rater_id: 1.0
    return lambda rater_id: 1.0 if rater_id in ids else scope.others_weight


def audience_labels(*, session: Session, audience: str, after: int = 0, upto: int | None = None) -> int:
    """How many labels (picks and ties) the audience's raters gave with ``after`` < id <= ``upto``."""
    q = select(func.count()).select_from(Judgement).where(Judgement.choice.in_(("pick", "tie")),
                                                          Judgement.id > after)
    if upto is not None:
        q = q.where(Judgement.id <= upto)
    ids = audience_rater_ids(session=session, audience=audience)
    if ids is not None:
        q = q.where(Judgement.rater_id.in_(sorted(ids)))
    return int(session.exec(q).one())


def require_audience_labels(*, session: Session, audience: str, minimum: int, upto: int | None = None) -> int:
    """The audience's label count; one UserError line when it has fewer than ``minimum`` (everyone: no check)."""
    n = audience_labels(session=session, audience=audience, upto=upto)
    if audience != EVERYONE and n < minimum:
        raise UserError(f"{audience} has {n} label{'' if n == 1 else 's'} of its own (picks and ties); training "
                        f"for an audience needs at least {minimum} (settings.audience_min_labels)")
    return n


def parent_for(*, session: Session, audience: str, base_model: str) -> ModelVersion:
    """The version a run for ``audience`` continues from: the audience's promoted version, else the shared
    one (the base model's own version when none is promoted). Call inside a write session."""
    if audience != EVERYONE:
        row = promoted_version(session=session, audience=audience)
        if row is not None:
            return row
    return promoted_version(session=session) or ensure_base_version(session=session, base_model=base_model)

"""Audiences: whom a model version serves. Every version serves ``everyone`` unless it was promoted for a
group of raters (``group:NAME``) or one rater (``rater:NAME``); each audience has at most one promoted
version (``pickloop.store.promote``), and a rater is served by the first promoted version among their own,
their groups' (by group name) and everyone's.

Keyword-only functions over the caller's session, as in ``pickloop.store``.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from sqlmodel import Session, select

from pickloop.errors import UserError
from pickloop.schema import GroupMember, ModelVersion, Rater, RaterGroup
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

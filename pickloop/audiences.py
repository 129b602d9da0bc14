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
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import func
from sqlmodel import Session, select

from pickloop.errors import UserError
from pickloop.schema import Candidate, Comparison, GroupMember, Judgement, ModelVersion, Rater, RaterGroup
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


def _audience_list(name: str, group_names: list[str]) -> list[str]:
    return [f"rater:{name}", *(f"group:{g}" for g in group_names), EVERYONE]


def audiences_of(*, session: Session, rater_id: int) -> list[str]:
    """The audiences a rater belongs to, first served first: their own, their groups' (by name), everyone."""
    rater = session.get(Rater, rater_id)
    if rater is None:
        return [EVERYONE]
    q = (select(RaterGroup.name).join(GroupMember, GroupMember.group_id == RaterGroup.id)
         .where(GroupMember.rater_id == rater_id).order_by(RaterGroup.name))
    return _audience_list(rater.name, list(session.exec(q)))


def _promoted_ids(session: Session) -> dict[str, int]:
    """audience -> id of its promoted version (the newest promoted, as ``promoted_version`` chooses)."""
    rows = session.exec(select(ModelVersion).where(ModelVersion.status == "promoted")).all()
    newest: dict[str, ModelVersion] = {}
    for v in rows:
        old = newest.get(v.audience)
        if old is None or (v.promoted_at or v.created_at, v.id) > (old.promoted_at or old.created_at, old.id):
            newest[v.audience] = v
    return {a: v.id for a, v in newest.items()}


def _first_promoted(audiences: list[str], promoted: dict[str, int]) -> int | None:
    return next((promoted[a] for a in audiences if a in promoted), None)


def serving_version_id(*, session: Session, rater_id: int) -> int | None:
    """The id of the version that serves ``rater_id`` (their own, their groups', else the shared one), read
    only; None while no version is promoted at all (``serving_version`` then registers the base one)."""
    return _first_promoted(audiences_of(session=session, rater_id=rater_id), _promoted_ids(session))


def serving_version(*, session: Session, rater_id: int, base_model: str) -> ModelVersion:
    """The version that draws for ``rater_id``: the one promoted for the first of their audiences that has
    one, else the shared one (the base model's own version, made and promoted when none is). Call inside a
    write session: it may register the base version."""
    vid = serving_version_id(session=session, rater_id=rater_id)
    return session.get(ModelVersion, vid) if vid is not None else ensure_base_version(session=session,
                                                                                        base_model=base_model)


def raters_served(*, session: Session) -> dict[int, set[int]]:
    """Version id -> the ids of the active raters it serves now (each rater under exactly one version;
    none while no version is promoted)."""
    promoted = _promoted_ids(session)
    groups_of: dict[int, list[str]] = defaultdict(list)
    for rater_id, g in session.exec(select(GroupMember.rater_id, RaterGroup.name)
                                    .join(RaterGroup, RaterGroup.id == GroupMember.group_id).order_by(RaterGroup.name)):
        groups_of[rater_id].append(g)
    out: dict[int, set[int]] = defaultdict(set)
    for rater_id, name in session.exec(select(Rater.id, Rater.name).where(Rater.active == True)):  # noqa: E712
        vid = _first_promoted(_audience_list(name, groups_of[rater_id]), promoted)
        if vid is not None:
            out[vid].add(rater_id)
    return dict(out)


def drawing_versions(*, session: Session, base_model: str) -> list[ModelVersion]:
    """The versions the Rate page's queue draws with: the shared one first (the base model's own version,
    made and promoted when none is), then each other audience's promoted version, by audience. Call
    inside a write session."""
    shared = promoted_version(session=session) or ensure_base_version(session=session, base_model=base_model)
    promoted = _promoted_ids(session)
    return [shared, *(session.get(ModelVersion, promoted[a]) for a in sorted(promoted) if a != EVERYONE)]


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


# ---------------------------------------------------------------- win rates against the parent

class WinTally:
    """Wins, losses and ties of a version's candidates against its parent's (a mixin of frozen dataclasses)."""

    wins: int
    losses: int
    ties: int

    @property
    def pairs(self) -> int:
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        return (self.wins + 0.5 * self.ties) / self.pairs if self.pairs else None


def parent_tally(*, session: Session, rater_ids: set[int] | None = None) -> dict[int, Counter]:
    """Version id -> Counter of wins, losses and ties against its parent, per pair of candidates (one of the
    version's, one of its parent's) shown together in a set answered with a pick or a tie (only answers of
    ``rater_ids`` when given): the picked one wins, a tie is a tie, a pick of a third says nothing."""
    parents = dict(session.exec(select(ModelVersion.id, ModelVersion.parent_id)).all())
    q = select(Judgement).where(Judgement.choice.in_(("pick", "tie")))
    if rater_ids is not None:
        q = q.where(Judgement.rater_id.in_(sorted(rater_ids) or [-1]))
    judged = list(session.exec(q))
    cands_by_set: dict[int, list[Candidate]] = defaultdict(list)
    set_ids = sorted({j.comparison_id for j in judged})
    for start in range(0, len(set_ids), 500):  # bounded IN lists
        for c in session.exec(select(Candidate).where(Candidate.comparison_id.in_(set_ids[start:start + 500]))):
            cands_by_set[c.comparison_id].append(c)
    tally: dict[int, Counter] = defaultdict(Counter)
    for j in judged:
        cands = cands_by_set[j.comparison_id]
        for x in cands:
            parent_id = parents.get(x.model_version_id)
            for y in (c for c in cands if parent_id is not None and c.model_version_id == parent_id):
                if j.choice == "tie":
                    tally[x.model_version_id]["ties"] += 1
                elif j.winner_id == x.id:
                    tally[x.model_version_id]["wins"] += 1
                elif j.winner_id == y.id:
                    tally[x.model_version_id]["losses"] += 1
    return tally


@dataclass(frozen=True)
class AudienceWinRate(WinTally):
    """An audience's version against its parent, from the answers of the raters it serves.

    ``labels``: their answers (skips left out) to sets the version drew; ``wins``/``losses``/``ties``:
    pairs of candidates, one the version's and one its parent's, shown together in a set they answered
    (as ``win_rates_by_version`` counts them; a set drawn by one version alone gives labels, no pair).
    ``gate_win_rate``: the promotion gate's paired win rate of the version against its parent on held-out
    prompts (for an audience's own version: with that audience's reward model); None for a version
    promoted without a gate (the base, ``models serve``).
    """

    audience: str
    version: str
    parent: str | None
    raters: int
    labels: int
    wins: int
    losses: int
    ties: int
    gate_win_rate: float | None = None


def audience_win_rates(*, session: Session) -> list[AudienceWinRate]:
    """One row per audience with a promoted version (everyone first), as ``serving_table`` lists them."""
    served = raters_served(session=session)
    out = []
    for row in serving_table(session=session):
        v = session.exec(select(ModelVersion).where(ModelVersion.name == row.version)).one()
        raters = served.get(v.id, set())
        t = parent_tally(session=session, rater_ids=raters)[v.id]
        labels = session.exec(select(func.count()).select_from(Judgement)
                              .join(Comparison, Comparison.id == Judgement.comparison_id)
                              .where(Comparison.model_version_id == v.id, Judgement.choice != "skip",
                                     Judgement.rater_id.in_(sorted(raters) or [-1]))).one()
        parent = session.get(ModelVersion, v.parent_id) if v.parent_id is not None else None
        out.append(AudienceWinRate(row.audience, v.name, parent.name if parent else None, len(raters), int(labels),
                                   t["wins"], t["losses"], t["ties"], (v.metrics or {}).get("gate_win_rate")))
    return out


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

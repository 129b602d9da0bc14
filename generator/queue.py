"""The ready queue: keep K unanswered candidate sets per active prompt, drawn by the promoted model version.

Per audience (``fill_queue(per_audience=True)``: the Rate page's worker, ``pickloop generate``): the shared
version and every audience's own promoted version (``pickloop.audiences.drawing_versions``) each keep
their own sets, drawn in turns of one batch, and the watching worker sizes each by the raters that
version serves (``pickloop.audiences.raters_served``). A set records the version that drew it
(``Comparison.model_version_id``); the Rate page hands a rater only the sets of the version that serves
them. Without ``per_audience`` (the measured loop, benches) only the shared version draws, as before.

A worker makes one set in three steps, so that no transaction is held while the model draws:

1. claim (one short write transaction): pick the prompt with the fewest open sets for the promoted
   version and insert a ``drawing`` Comparison placeholder. On PostgreSQL the prompt row is locked with
   ``SELECT ... FOR UPDATE SKIP LOCKED`` and its open sets are counted again after the lock, so two
   workers never claim the same missing set; on SQLite the whole claim runs inside ``BEGIN IMMEDIATE``
   (one writer at a time), which gives the same guarantee.
2. draw (no transaction): sample the candidates, store the images (content-addressed, so a retry is
   harmless).
3. finish (one write transaction): insert the candidates and flip the set to ``ready``, only if this
   worker still holds the claim. A failed draw flips it to ``failed``; a half-made set is never ready.

A ``drawing`` claim older than ``stale_after_s`` (a worker that died) is taken over by the next worker.
While a worker draws, a heartbeat thread renews its claim every third of ``stale_after_s``
(``keep_claim``), so a slow draw (SDXL on a CPU) is never mistaken for a dead worker.

Active learning (``settings.active_learning``): when a reward model is registered, each new set gets a
``priority`` = how little the model can tell its two best candidates apart (see ``set_priority``); the
rating app hands out the highest priority first. Without a reward model sets keep priority None. The
watching worker re-scores the sets already waiting when it starts and whenever a newer reward model is
registered (``rescore_if_new_reward_model``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import and_, exists, func, or_, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from generator.active_learning import (  # set_priority is re-exported
    load_reward_model_for_queue, rescore_if_new_reward_model, set_priority)
from generator.noise_memory import choose_seeds
from generator.pipeline import load_pipeline
from generator.sampling import sample_sets
from pickloop.audiences import drawing_versions, raters_served
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.pace import open_sets_wanted, pace, ready_unanswered, sets_wanted
from pickloop.schema import Comparison, Judgement, ModelVersion, Prompt, utcnow
from pickloop.store import add_candidates, add_set, ensure_base_version, promoted_version

log = logging.getLogger("pickloop.queue")

STALE_AFTER_S = 900.0  # a claim this old, seconds, belongs to a dead worker


@dataclass(frozen=True)
class Claim:
    comparison_id: int
    prompt_id: int
    prompt: str
    model_version_id: int


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def overlap_wanted(key: str, overlap_share: float) -> int:
    """Raters wanted for a set: 2 for an ``overlap_share`` of sets (agreement figures), fixed by its key."""
    return 2 if int(key[:8], 16) / 0xFFFFFFFF < overlap_share else 1


def _open_count(prompt_id, version_id: int):  # noqa: ANN001, ANN202
    """Sets of a prompt that count toward the queue depth: being drawn, or ready and not answered by anyone.
    An overlap set answered once waits for its second rater without holding a place, so a lone rater is
    never starved by sets only someone else can answer."""
    answered = exists().where(Judgement.comparison_id == Comparison.id)
    return (select(func.count()).select_from(Comparison)
            .where(Comparison.prompt_id == prompt_id, Comparison.model_version_id == version_id,
                   or_(Comparison.status == "drawing", and_(Comparison.status == "ready", ~answered))))


def current_version(*, session: Session, base_model: str) -> ModelVersion:
    """The promoted version (the base model's own version, made and promoted when none is)."""
    return promoted_version(session=session) or ensure_base_version(session=session, base_model=base_model)


def _take_over_stale(session: Session, *, pool: str, version_id: int, worker_id: str,
                     stale_after_s: float) -> Comparison | None:
    """Reclaim the oldest dead ``drawing`` set of ``version_id``; dead claims of versions no longer promoted
    fail; those of another audience's promoted version are left to the batches that draw for it."""
    cutoff = utcnow() - timedelta(seconds=stale_after_s)
    while True:
        comp = session.exec(
            select(Comparison).join(Prompt, Comparison.prompt_id == Prompt.id)
            .join(ModelVersion, ModelVersion.id == Comparison.model_version_id)
            .where(Prompt.pool == pool, Comparison.status == "drawing", Comparison.claimed_at < cutoff,
                   or_(Comparison.model_version_id == version_id, ModelVersion.status != "promoted"))
            .order_by(Comparison.id).limit(1).with_for_update(skip_locked=True, of=Comparison)).first()
        if comp is None:
            return None
        if comp.model_version_id != version_id:
            comp.status = "failed"  # that version is no longer promoted: its set is not wanted
        else:
            comp.claimed_by, comp.claimed_at = worker_id, utcnow()
        session.add(comp)
        session.flush()
        if comp.status == "drawing":
            return comp


def claim_set(*, session: Session, pool: str, depth: int, version_id: int, worker_id: str,
              overlap_share: float = 0.0, stale_after_s: float = STALE_AFTER_S,
              exclude_prompts: list[int] | None = None) -> Claim | None:
    """Claim the next missing set of ``pool`` (a ``drawing`` placeholder), or None when the queue is full.

    Run inside one write transaction (``write_session``); prompts with the fewest open sets come first,
    never one of ``exclude_prompts`` (the prompts already in a batch being claimed).
    """
    comp = None if exclude_prompts else _take_over_stale(session, pool=pool, version_id=version_id,
                                                         worker_id=worker_id, stale_after_s=stale_after_s)
    if comp is None:
        tried: list[int] = list(exclude_prompts or [])
        while comp is None:
            n_open = _open_count(Prompt.id, version_id).scalar_subquery()
            q = (select(Prompt).where(Prompt.pool == pool, Prompt.active == True, n_open < depth)  # noqa: E712
                 .order_by(n_open, Prompt.id).limit(1).with_for_update(skip_locked=True))
            if tried:
                q = q.where(Prompt.id.notin_(tried))
            prompt = session.exec(q).first()
            if prompt is None:
                return None
            # Count again now that the row is locked: the first count may predate another worker's commit.
            if session.exec(_open_count(prompt.id, version_id)).one() >= depth:
                tried.append(prompt.id)
                continue
            key = uuid.uuid4().hex
            comp = add_set(session=session, key=key, prompt_id=prompt.id, model_version_id=version_id,
                           status="drawing", claimed_by=worker_id, raters_wanted=overlap_wanted(key, overlap_share))
    prompt = session.get(Prompt, comp.prompt_id)
    return Claim(comp.id, prompt.id, prompt.text, comp.model_version_id)


def finish_set(*, session: Session, claim: Claim, worker_id: str, candidates: list[dict],
               priority: float | None = None) -> bool:
    """Insert the drawn candidates and mark the set ready (with ``priority``, higher shown first);
    False when the claim was lost meanwhile."""
    comp = session.exec(select(Comparison).where(Comparison.id == claim.comparison_id).with_for_update()).one()
    if comp.status != "drawing" or comp.claimed_by != worker_id:
        return False
    add_candidates(session=session, comparison=comp, candidates=candidates)
    comp.status = "ready"
    comp.priority = priority
    session.add(comp)
    session.flush()
    return True


def fail_set(*, session: Session, claim: Claim, worker_id: str) -> None:
    session.execute(update(Comparison).where(Comparison.id == claim.comparison_id,
                                             Comparison.claimed_by == worker_id, Comparison.status == "drawing")
                    .values(status="failed"))


def missing_sets(*, session: Session, pool: str, depth: int, version_id: int) -> int:
    """How many sets the pool lacks to hold ``depth`` open sets per active prompt."""
    rows = session.exec(select(Prompt.id, _open_count(Prompt.id, version_id).scalar_subquery())
                        .where(Prompt.pool == pool, Prompt.active == True)).all()  # noqa: E712
    return sum(max(0, depth - int(k)) for _, k in rows)


def _prepare_versions(ctx, per_audience: bool = False) -> list[int]:  # noqa: ANN001
    """The ids of the versions to draw with: the shared one, then (``per_audience``) every other audience's
    promoted version (``pickloop.audiences.drawing_versions``)."""
    def ids(s: Session) -> list[int]:
        if per_audience:
            return [v.id for v in drawing_versions(session=s, base_model=ctx.base_model)]
        return [current_version(session=s, base_model=ctx.base_model).id]

    with read_session(ctx.engine) as s:  # read after every turn: no write lock while nothing is to be made
        if promoted_version(session=s) is not None:
            return ids(s)
    for attempt in range(3):  # two workers may both create the base version: one wins, the other retries
        try:
            with write_session(ctx.engine) as s:
                return ids(s)
        except IntegrityError:
            if attempt == 2:
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def renew_claim(*, session: Session, claim: Claim, worker_id: str) -> bool:
    """Mark the claim as alive now; False when this worker no longer holds it."""
    res = session.execute(update(Comparison).where(Comparison.id == claim.comparison_id,
                                                   Comparison.claimed_by == worker_id,
                                                   Comparison.status == "drawing").values(claimed_at=utcnow()))
    return res.rowcount == 1


@contextlib.contextmanager
def keep_claim(ctx, claim: Claim, *, worker_id: str, every_s: float):  # noqa: ANN001, ANN201
    """Renew ``claim`` every ``every_s`` seconds from a background thread while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                with write_session(ctx.engine) as s:
                    if not renew_claim(session=s, claim=claim, worker_id=worker_id):
                        return  # lost or finished: nothing left to keep
            except Exception as e:  # noqa: BLE001 - a missed beat is retried; the draw goes on
                log.warning("could not renew the claim on set %s: %s", claim.comparison_id, e)

    thread = threading.Thread(target=beat, name=f"pickloop-claim-{claim.comparison_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextlib.contextmanager
def keep_claims(ctx, claims: list[Claim], *, worker_id: str, every_s: float):  # noqa: ANN001, ANN201
    with contextlib.ExitStack() as stack:
        for c in claims:
            stack.enter_context(keep_claim(ctx, c, worker_id=worker_id, every_s=every_s))
        yield


def draw_sets(ctx, claims: list[Claim], n: int, *, worker_id: str, reward_model=None,  # noqa: ANN001
              stale_after_s: float = STALE_AFTER_S) -> int:
    """Draw the candidates of several claimed sets of one version in ONE batched pipeline call and store
    them; returns how many sets became ready. With ``reward_model`` each set's priority is its
    uncertainty (``set_priority``), else None. The claims are renewed every ``stale_after_s / 3``."""
    if len({c.model_version_id for c in claims}) > 1:
        raise ValueError("one batch draws sets of one model version")
    try:
        with keep_claims(ctx, claims, worker_id=worker_id, every_s=stale_after_s / 3):
            pipe = load_pipeline(lora=claims[0].model_version_id, ctx=ctx)
            with read_session(ctx.engine) as s:
                chosen = [choose_seeds(pipe, session=s, prompt=c.prompt, n=n, settings=ctx.settings) for c in claims]
            drawn = sample_sets(pipe, [c.prompt for c in claims], [seeds for seeds, _ in chosen])
            done = []
            for claim, (_, remembered), images in zip(claims, chosen, drawn):
                rows = [dict(slot=slot, seed=seed, params=params, image_sha256=ctx.images.put(img),
                             from_noise_memory=remembered[slot]) for slot, (img, seed, params) in enumerate(images)]
                priority = None
                if reward_model is not None:
                    priority = set_priority(reward_model, claim.prompt, [img for img, _, _ in images],
                                            [r["image_sha256"] for r in rows])
                done.append((claim, rows, priority))
        made = 0
        with write_session(ctx.engine) as s:
            for claim, rows, priority in done:
                made += finish_set(session=s, claim=claim, worker_id=worker_id, candidates=rows, priority=priority)
        return made
    except BaseException:
        with write_session(ctx.engine) as s:
            for claim in claims:
                fail_set(session=s, claim=claim, worker_id=worker_id)
        raise


def draw_set(ctx, claim: Claim, n: int, *, worker_id: str, reward_model=None,  # noqa: ANN001
             stale_after_s: float = STALE_AFTER_S) -> bool:
    """Draw one claimed set (``draw_sets`` of one); True when the set became ready."""
    return draw_sets(ctx, [claim], n, worker_id=worker_id, reward_model=reward_model,
                     stale_after_s=stale_after_s) == 1


def claim_batch(ctx, *, pool: str, depth: int, worker_id: str, k: int,  # noqa: ANN001
                stale_after_s: float = STALE_AFTER_S, version_id: int | None = None) -> list[Claim]:
    """Claim up to ``k`` missing sets on distinct prompts in one write transaction (one batch), for
    ``version_id`` (None: the shared promoted version); none when that version is no longer promoted."""
    claims: list[Claim] = []
    with write_session(ctx.engine) as s:
        # read the promoted version per batch: a promotion mid-run takes effect at the next batch
        if version_id is None:
            version = current_version(session=s, base_model=ctx.base_model)
        else:
            version = s.get(ModelVersion, version_id)
            if version is None or version.status != "promoted":
                return []
        while len(claims) < k:
            claim = claim_set(session=s, pool=pool, depth=depth, version_id=version.id, worker_id=worker_id,
                              overlap_share=ctx.settings.overlap_share, stale_after_s=stale_after_s,
                              exclude_prompts=[c.prompt_id for c in claims])
            if claim is None:
                break
            if claim.model_version_id != version.id:  # a dead claim of an older version: draw it alone
                claims = claims or [claim]
                break
            claims.append(claim)
    return claims


def fill_queue(*, ctx, pool: str = "default", depth: int | None = None, worker_id: str | None = None,  # noqa: ANN001
               max_sets: int | None = None, progress: bool = True, n: int | None = None,
               stale_after_s: float = STALE_AFTER_S, batch_sets: int | None = None,
               target: Callable[[int], int] | None = None, desc: str | None = None,
               per_audience: bool = False) -> int:
    """Fill ``pool`` up to ``depth`` ready sets per active prompt for the promoted version; returns sets made.

    Safe to run in several processes on one database at once. ``n``: candidates per set
    (settings.candidates_per_set by default); ``depth``: settings.queue_depth by default; ``batch_sets``:
    sets drawn per pipeline call (settings.generator_batch_sets); ``target``: when given, a function
    giving how many more sets of a version (its argument, a version id) are wanted now
    (``pickloop.pace``), read before each batch; that version's fill stops when it says 0, and a batch
    is never larger than it says. ``per_audience``: fill for every audience with a promoted version of
    its own as well as the shared one (the Rate page's worker), each to its own depth and target, in
    turns of one batch; the list is read again after every turn, so a promotion takes effect at once.
    An audience's version that cannot draw (a UserError: its LoRA is missing) is said and skipped for
    this call, so the other audiences' raters keep rating; the shared version's raises, as ever.
    """
    from tqdm.auto import tqdm

    depth = depth or ctx.settings.queue_depth
    n = n or ctx.settings.candidates_per_set
    batch_sets = batch_sets or ctx.settings.generator_batch_sets
    if not 1 <= n <= 16:
        raise UserError("candidates per set must be 1-16")
    worker_id = worker_id or default_worker_id()
    versions = _prepare_versions(ctx, per_audience)
    with read_session(ctx.engine) as s:
        todo = sum(missing_sets(session=s, pool=pool, depth=depth, version_id=v) for v in versions)
    total = min(todo, max_sets) if max_sets is not None else todo
    made = 0
    full: set[int] = set()  # versions with nothing more to draw in this call
    reward_model, reward_loaded = None, False
    with tqdm(total=total, desc=desc or f"sets for pool {pool}", unit="set", disable=not progress) as bar:
        while any(v not in full for v in versions):
            for vid in [v for v in versions if v not in full]:
                if max_sets is not None and made >= max_sets:
                    return made
                k = min(batch_sets, max_sets - made) if max_sets is not None else batch_sets
                if target is not None:
                    wanted = target(vid)
                    if wanted <= 0:
                        full.add(vid)
                        continue
                    k = min(k, wanted)
                claims = claim_batch(ctx, pool=pool, depth=depth, worker_id=worker_id, k=k,
                                     stale_after_s=stale_after_s, version_id=vid if per_audience else None)
                if not claims:
                    full.add(vid)
                    continue
                if not reward_loaded:  # once per call, and only when there is a set to draw
                    try:
                        reward_model = load_reward_model_for_queue(ctx)
                    except BaseException:
                        with write_session(ctx.engine) as s:
                            for claim in claims:
                                fail_set(session=s, claim=claim, worker_id=worker_id)
                        raise
                    reward_loaded = True
                try:
                    got = draw_sets(ctx, claims, n, worker_id=worker_id, reward_model=reward_model,
                                    stale_after_s=stale_after_s)
                except UserError as e:  # e.g. its LoRA is missing: its sets failed, the others still draw
                    if vid == versions[0]:
                        raise
                    print(f"pickloop generate: version {vid} cannot draw, skipped: {e}", flush=True)
                    full.add(vid)
                    continue
                made += got
                bar.update(got)
            if per_audience:
                versions = _prepare_versions(ctx, per_audience)
    return made


def watch_queue(*, ctx, pool: str = "default", depth: int | None = None, n: int | None = None,  # noqa: ANN001
                interval_s: float = 5.0, worker_id: str | None = None, progress: bool = False,
                sized: bool = True) -> None:
    """Keep the queue full forever: fill, then sleep ``interval_s`` seconds while it is full
    (``QueueWatch.step`` is one round)."""
    watch = QueueWatch(ctx, pool=pool, depth=depth, n=n, worker_id=worker_id, progress=progress, sized=sized)
    while True:
        if watch.step() == 0:
            time.sleep(interval_s)


class QueueWatch:
    """The rounds of ``watch_queue``.

    Every audience with a promoted version of its own keeps its own sets beside the shared version's
    (``fill_queue(per_audience=True)``). ``sized``: the number of open sets of each version follows the
    raters it serves that are online and their answer rate (``pickloop.pace.sets_wanted``, read at
    ``clock()``), within the per-prompt ``depth``; otherwise every prompt is filled to ``depth`` for
    each version. A new promoted version is picked up on the next batch; with active learning,
    the sets already waiting are re-scored at start and by each newly registered reward model.

    The model is loaded before the first rater needs a set from it: at once when sets are wanted, else
    (a home whose first sets ``pickloop init`` drew) as soon as a rater is online. So on a new home its
    load (seconds of a core: torch, diffusers, the pipeline) does not compete with the app's start
    and the first rater's sign-in, and it is done while that rater answers the first sets.
    """

    def __init__(self, ctx, *, pool: str = "default", depth: int | None = None, n: int | None = None,  # noqa: ANN001
                 worker_id: str | None = None, progress: bool = False, sized: bool = True,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.ctx, self.pool, self.depth, self.n, self.progress, self.sized = ctx, pool, depth, n, progress, sized
        self.clock = clock  # the time the pace is read at (tests set it)
        self.worker_id = worker_id or default_worker_id()
        self.scored_with = None  # the sets waiting were scored by some earlier model, or none: score them first
        self.loaded = False  # the model load was tried (a model that cannot load says so at each fill)

    def wanted(self, version_id: int) -> int:
        """More sets of ``version_id`` wanted now: sized by the raters it serves (online, answer rate) and its
        own open sets. A version of a group or rater that serves nobody now (every member has a version
        of their own, or the group is empty) wants none."""
        with read_session(self.ctx.engine) as s:
            raters = raters_served(session=s).get(version_id, set())
            shared = promoted_version(session=s)
            if not raters and (shared is None or shared.id != version_id):
                return 0
            want = sets_wanted(session=s, settings=self.ctx.settings, pool=self.pool, now=self.clock(),
                               version_id=version_id, rater_ids=raters)
            # While no set of it is ready a batch is one set: the first appears as soon as it can.
            return min(want, 1) if ready_unanswered(session=s, pool=self.pool, version_id=version_id) == 0 else want

    def model_needed(self) -> bool:
        if not self.sized:
            return True
        with read_session(self.ctx.engine) as s:
            p = pace(session=s, pool=self.pool)
        return p.raters_online > 0 or open_sets_wanted(p, self.ctx.settings) > p.open_sets

    def step(self) -> int:
        """One round: load the model if a rater needs it soon, re-score for a new reward model, fill the
        queue; returns the sets made (0: the queue is full, or nothing can be drawn now)."""
        if not self.loaded and self.model_needed():
            self.loaded = True
            try:
                load_pipeline(lora=_prepare_versions(self.ctx)[0], ctx=self.ctx)
            except UserError as e:
                print(f"pickloop generate: {e}", flush=True)
        try:
            self.scored_with = rescore_if_new_reward_model(self.ctx, self.scored_with, pool=self.pool)
            return fill_queue(ctx=self.ctx, pool=self.pool, depth=self.depth, worker_id=self.worker_id,
                              progress=self.progress, n=self.n, target=self.wanted if self.sized else None,
                              per_audience=True)
        except UserError as e:  # e.g. the model is not trained yet: say so and try again later
            print(f"pickloop generate: {e}", flush=True)
            return 0


def queue_counts(*, session: Session, pool: str | None = None) -> dict[str, int]:
    """Sets by status (drawing, ready, done, failed), optionally for one pool."""
    q = select(Comparison.status, func.count()).join(Prompt, Comparison.prompt_id == Prompt.id)
    if pool is not None:
        q = q.where(Prompt.pool == pool)
    out = {s: 0 for s in ("drawing", "ready", "done", "failed")}
    out.update({status: int(k) for status, k in session.exec(q.group_by(Comparison.status))})
    return out


def draw_first_sets(ctx, n: int, *, progress: bool = False) -> int:  # noqa: ANN001
    """Draw ``n`` sets (batched as the worker batches them) when the home has no ready set yet, so that
    the first rater of a new home rates while the app's worker starts: its model loads in some seconds
    (more on a busy machine), and a rater answering once a second would otherwise be waiting for it."""
    with read_session(ctx.engine) as s:
        if ready_unanswered(session=s) > 0:
            return 0
    made = fill_queue(ctx=ctx, max_sets=n, progress=progress, desc="drawing the first sets")
    if made:
        print(f"{made} first candidate sets drawn")
    return made

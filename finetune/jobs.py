"""The scheduled fine-tuning job: safe to call from cron or a systemd timer.

``pickloop finetune run [--method dpo|ddpo] [--min-new-labels N]``:

1. takes an OS lock (``fcntl.flock`` on ``<home>/locks/finetune.lock``, non-blocking); a second
   concurrent call prints one line and exits ``EXIT_BUSY`` (75, EX_TEMPFAIL) at once;
2. counts judgements newer than the last finished run of this method; fewer than N: exit 0, no-op;
3. keys the run by method + data snapshot (highest judgement id) + config hash + the parent LoRA's
   sha256 (``Job.run_key`` is unique): a run already done is a no-op; a running row with a fresh heartbeat (another
   machine on the same PostgreSQL) is busy; a running row with a stale heartbeat (``settings.finetune_stale_seconds``)
   or a failed one is taken over and resumes from its checkpoints;
4. trains with a heartbeat thread, registers a candidate ModelVersion and marks the job done in one
   transaction; an exception marks it failed with the error. The LoRA lands by rename
   (``pickloop.atomic.replacing_folder``); temporary folders a killed run left in ``loras/`` go first.

Each run continues from its parent, the version promoted when the run is keyed: the trainer starts from
the parent's LoRA (``finetune.lora.start_lora``; from a fresh LoRA when the parent is the base) and the
new version is registered as that parent's child, even if another version was promoted meanwhile.

``--audience group:NAME|rater:NAME`` (a ``pickloop.audiences.LabelScope``) makes the same run one for that
audience: its own labels (everyone else's at ``--others-weight``, 0 leaving them out), its reward model,
its promoted version as the parent (the shared one when it has none), its own run key and version name,
and the version registered for it (``ModelVersion.audience``), so promoting it leaves the shared one be.

Trainer contract for every method in ``METHOD_TABLE`` (``finetune.dpo.job.run_dpo``,
``finetune.ddpo.job.run_ddpo``): ``run_x(ctx, config, *, out_dir, work_dir, upto, on_step, parent, scope) -> result``
with ``result.lora_sha256`` and ``result.metrics``; ``config.config_hash()``.
"""
from __future__ import annotations

import fcntl
import os
import re
import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from finetune import ddpo, dpo
from finetune.ddpo.config import DDPOConfig
from finetune.dpo.config import DPOConfig
from finetune.registry import register_version, verify_version_lora
from pickloop.atomic import remove_stale_temporaries
from pickloop.audiences import LabelScope, audience_labels, label_scope, parent_for, require_audience_labels
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Job, Judgement, utcnow
from pickloop.store import data_snapshot, promoted_version

EXIT_BUSY = 75  # EX_TEMPFAIL: "try again later"; distinct from 0 (done / nothing to do) and 2 (user error)

# method -> (typed config, trainer). The configs import no torch, so a bad setting is refused before any
# model loads; each trainer is reached through its package's lazy surface when a run starts.
METHOD_TABLE: dict[str, tuple[type, Callable[[], Callable[..., Any]]]] = {
    "dpo": (DPOConfig, lambda: dpo.run_dpo),
    "ddpo": (DDPOConfig, lambda: ddpo.run_ddpo),
}
METHODS = tuple(METHOD_TABLE)


@dataclass
class JobOutcome:
    status: str  # done, no-change (DDPO rolled back to its start), nothing-new, already-done, busy
    message: str
    exit_code: int = 0
    version: str | None = None
    job_id: int | None = None


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive, non-blocking ``flock`` on ``path``; yields False when another process holds it.

    The OS drops the lock when the process dies (even by SIGKILL), so a crash never leaves it stuck.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, owner_id().encode())
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def method_config(method: str, overrides: dict[str, Any] | None = None) -> Any:
    """The typed config of ``method`` with ``overrides`` (a dict of fields)."""
    if method not in METHOD_TABLE:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return METHOD_TABLE[method][0].from_dict(overrides or {})


def _trainer(method: str) -> Callable[..., Any]:
    return METHOD_TABLE[method][1]()


def labels_since_last_run(session: Any, kind: str, scope: LabelScope | None = None) -> tuple[int, int]:
    """(judgements newer than the last finished ``kind`` run, that run's snapshot); with an audience's
    ``scope``, its raters' labels (picks and ties) newer than the last finished run for that audience."""
    scope = scope or LabelScope()
    theirs = ~Job.run_key.contains(":for-") if scope.shared else Job.run_key.contains(f":{scope.audience_key()}")
    last = int(session.exec(select(func.coalesce(func.max(Job.data_snapshot), 0))
                            .where(Job.kind == kind, Job.status == "done", theirs)).one())
    if scope.shared:
        return int(session.exec(select(func.count()).select_from(Judgement).where(Judgement.id > last)).one()), last
    return audience_labels(session=session, audience=scope.audience, after=int(last)), int(last)


def check_scope(ctx: Any, scope: LabelScope) -> None:
    """Before a run for an audience loads anything: the group or rater exists and has enough labels of its
    own (``settings.audience_min_labels``); one UserError line otherwise."""
    if scope.shared:
        return

    with read_session(ctx.engine) as s:
        require_audience_labels(session=s, audience=scope.audience, minimum=ctx.settings.audience_min_labels)


def claim_job(ctx: Any, *, kind: str, run_key: str, snapshot: int, config_hash: str,
              owner: str) -> tuple[str, Any]:
    """Insert or take over the Job row for ``run_key``. Returns (state, job): state is ``claimed``,
    ``taken-over``, ``already-done`` or ``busy``."""
    stale = timedelta(seconds=ctx.settings.finetune_stale_seconds)
    try:
        with write_session(ctx.engine) as s:
            job = s.exec(select(Job).where(Job.run_key == run_key)).first()
            if job is None:
                job = Job(kind=kind, run_key=run_key, status="running", data_snapshot=snapshot,
                          config_hash=config_hash, owner=owner)
                s.add(job)
                s.flush()
                return "claimed", job
            if job.status == "done":
                return "already-done", job
            heartbeat = job.heartbeat_at
            if not heartbeat.tzinfo:
                heartbeat = heartbeat.replace(tzinfo=utcnow().tzinfo)
            if job.status == "running" and utcnow() - heartbeat < stale:
                return "busy", job
            previous = job.owner
            job.status, job.owner, job.heartbeat_at, job.error = "running", owner, utcnow(), None
            job.output = {**(job.output or {}), "taken_over_from": previous}
            s.add(job)
            s.flush()
            return "taken-over", job
    except IntegrityError:  # another worker inserted the same run key between our read and insert
        return "busy", None


class Heartbeat:
    """Updates ``Job.heartbeat_at`` every ``interval`` seconds from a daemon thread while training runs."""

    def __init__(self, ctx: Any, job_id: int, interval: float):
        self.ctx, self.job_id, self.interval = ctx, job_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pickloop-heartbeat", daemon=True)

    def beat(self) -> None:
        with write_session(self.ctx.engine) as s:
            job = s.get(Job, self.job_id)
            if job is not None:
                job.heartbeat_at = utcnow()
                s.add(job)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a busy database must not kill training; the next beat retries
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def run_finetune_job(ctx: Any, *, method: str = "dpo", min_new_labels: int = 1,
                     overrides: dict[str, Any] | None = None, audience: str = "everyone",
                     others_weight: float = 0.0) -> JobOutcome:
    """One scheduled run (see module docstring). Never raises for "busy" or "nothing to do".
    ``audience``/``others_weight``: train for that audience (``pickloop.audiences.label_scope``)."""
    if min_new_labels < 0:
        raise UserError("--min-new-labels must be >= 0")
    config = method_config(method, overrides)
    scope = label_scope(audience, others_weight)
    check_scope(ctx, scope)
    kind = f"finetune-{method}"
    with file_lock(lock_path(ctx)) as held:
        if not held:
            return busy_outcome(ctx)
        return _run_locked(ctx, method, kind, config, min_new_labels, scope)


def lock_path(ctx: Any) -> Path:
    return ctx.home / "locks" / "finetune.lock"


def busy_outcome(ctx: Any) -> JobOutcome:
    return JobOutcome("busy", f"another fine-tuning run holds {lock_path(ctx)}; exiting", EXIT_BUSY)


def lock_taken(ctx: Any) -> bool:
    """Whether another run holds the lock now: lets a caller that would read the database and import torch
    before its first ``run_finetune_job`` exit at once instead (that call still takes the lock itself)."""
    with file_lock(lock_path(ctx)) as held:
        return not held


def prepare_home(ctx: Any, audience: str = "everyone") -> None:
    """Before a run: remove the temporary folders a run killed mid-write left in ``loras/``, and check
    that the promoted version's LoRA (the next run's parent: ``audience``'s, else the shared one) is the
    file the registry recorded (one line, before any model loads)."""
    remove_stale_temporaries(ctx.settings.lora_dir)
    with read_session(ctx.engine) as s:
        parent = promoted_version(session=s, audience=audience) or promoted_version(session=s)
    if parent is not None:
        verify_version_lora(parent)


def _reward_model_used(ctx: Any, method: str, config: Any, audience: str = "everyone") -> int | None:
    """The registry id of the reward model a run will read (``audience``'s newest), or None when it reads none:
    DPO with AI-feedback pairs, DDPO rewarded by the registry's newest reward model."""
    uses = (getattr(config, "ai_feedback_sets", 0) > 0 if method == "dpo" else
            getattr(config, "reward", None) == "reward-model" and not getattr(config, "reward_path", None))
    if not uses:
        return None
    from reward import latest_reward_model_id

    with read_session(ctx.engine) as s:
        return latest_reward_model_id(session=s, audience=audience)


def _run_locked(ctx: Any, method: str, kind: str, config: Any, min_new_labels: int,
                scope: LabelScope) -> JobOutcome:
    from finetune.lora import parent_lora

    prepare_home(ctx, scope.audience)
    with write_session(ctx.engine) as s:
        parent_row = parent_for(session=s, audience=scope.audience, base_model=ctx.base_model)
        parent_id, parent = parent_row.id, parent_lora(parent_row)
    with read_session(ctx.engine) as s:
        snapshot = data_snapshot(session=s)
        new, last = labels_since_last_run(s, kind, scope)
    if new < min_new_labels:
        whose = "" if scope.shared else f" of {scope.audience}"
        return JobOutcome("nothing-new", f"{new} new labels{whose} since the last {method} run (snapshot {last}); "
                                         f"need {min_new_labels}: nothing to do")
    chash = config.config_hash()
    run_key = f"{kind}:{snapshot}:{chash}" + (f":from-{parent.sha256[:16]}" if parent else "")
    if not scope.shared:  # a run for an audience is another run than the shared one on the same snapshot
        run_key += f":{scope.key()}"
    reward_id = _reward_model_used(ctx, method, config, scope.audience)
    if reward_id is not None:  # a newer reward model makes it a different run
        run_key += f":rm-{reward_id}"
    state, job = claim_job(ctx, kind=kind, run_key=run_key, snapshot=snapshot, config_hash=chash, owner=owner_id())
    if state == "already-done":
        done = job.output or {}
        return JobOutcome("already-done", f"run {run_key} already done ({done.get('version') or done.get('reason')}); "
                                          "nothing to do", 0, done.get("version"), job.id)
    if state == "busy":
        return JobOutcome("busy", f"run {run_key} is held by {job.owner if job else 'another worker'}; exiting",
                          EXIT_BUSY)
    if state == "taken-over":
        print(f"taking over stale run {run_key} from {job.output.get('taken_over_from')}")
    return _train_and_register(ctx, method, config, job, snapshot, parent_id, parent, reward_id, scope)


def _finish_unchanged(ctx: Any, job: Any, method: str, metrics: dict[str, Any]) -> JobOutcome:
    why = f"{method} changed nothing: {metrics.get('guard')}; no version registered"
    with write_session(ctx.engine) as s:
        row = s.get(Job, job.id)
        row.status, row.finished_at, row.heartbeat_at = "done", utcnow(), utcnow()
        row.output = {**(row.output or {}), "version": None, "reason": why, "metrics": dict(metrics)}
        s.add(row)
    return JobOutcome("no-change", why, 0, None, job.id)


def _train_and_register(ctx: Any, method: str, config: Any, job: Any, snapshot: int, parent_id: int,
                        parent: Any, reward_id: int | None = None, scope: LabelScope | None = None) -> JobOutcome:
    scope = scope or LabelScope()
    name = _safe_name(f"{method}-s{snapshot}-{job.config_hash[:8]}" + (f"-p{parent_id}" if parent else "")
                      + (f"-rm{reward_id}" if reward_id is not None else "")
                      + ("" if scope.shared else f"-{scope.label()}"))
    out_dir = ctx.settings.lora_dir / name
    work_dir = ctx.home / "runs" / _safe_name(job.run_key)
    interval = max(1.0, min(30.0, ctx.settings.finetune_stale_seconds / 5))
    try:
        with Heartbeat(ctx, job.id, interval) as hb:
            result = _trainer(method)(ctx, config, out_dir=out_dir, work_dir=work_dir, upto=snapshot,
                                      on_step=lambda step, metrics: None, parent=parent, scope=scope)
            hb.beat()
        if getattr(result, "unchanged", False):  # DDPO rolled back to its start: no version, the run is done
            return _finish_unchanged(ctx, job, method, result.metrics)
        with write_session(ctx.engine) as s:
            metrics = dict(result.metrics)
            if reward_id is not None:  # which reward model it learned from (``finetune.auto`` reads it back)
                metrics["reward_model_id"] = reward_id
            if not scope.shared:
                metrics["others_weight"] = scope.others_weight
            version = register_version(session=s, base_model=ctx.base_model, parent_id=parent_id, method=method,
                                       lora_dir=out_dir, lora_sha256=result.lora_sha256, data_snapshot=snapshot,
                                       config_hash=job.config_hash, metrics=metrics, name=name,
                                       audience=scope.audience)
            row = s.get(Job, job.id)
            row.status, row.finished_at, row.heartbeat_at = "done", utcnow(), utcnow()
            row.output = {**(row.output or {}), "version": version.name, "metrics": dict(result.metrics),
                          **({} if scope.shared else scope.describe())}
            s.add(row)
    except BaseException as e:
        with write_session(ctx.engine) as s:
            row = s.get(Job, job.id)
            row.status, row.finished_at = "failed", utcnow()
            row.error = f"{type(e).__name__}: {e}"[:4000]
            s.add(row)
        raise
    whose = "" if scope.shared else f" of {scope.audience}" + (
        f" (others' at weight {scope.others_weight:g})" if scope.others_weight else "")
    return JobOutcome("done", f"trained {name} on labels{whose} up to {snapshot}; registered as a candidate "
                              f"(promote with `pickloop models promote {name}`)", 0, name, job.id)

"""``pickloop finetune run --method auto`` (the default): each run decides from its own data what to train.

An operator cannot know their raters' taste, so no setting may depend on it. A run looks at what it can
measure and trains a few candidate versions in stages; the promotion gate judges each against the stage's
parent and the best that passes is promoted before the next stage starts from it:

1. **Can the reward model be trusted?** The newest reward model's cross-validated accuracy on the human
   labels (``reward.train.cross_validated_accuracy``: every label scored once by a head that did not see
   its prompt) must reach ``settings.reward_trust_min_acc`` on at least ``settings.reward_trust_min_pairs``
   pairs. When it does not, the run says so in one line: no DDPO, and the gate's win rate (which the
   reward model scores) is recorded but does not decide; the judge's prompt following does (shapes
   world), and elsewhere the version stays a candidate for a person. Its rankings are still used for
   AI-ranked pairs when it is right where it is sure: its accuracy on the quarter of pairs it separates
   most, less one standard error, reaches ``settings.reward_rank_min_top_acc`` (best against worst of 8
   images is such a pair); otherwise it ranks nothing either.
2. **Stage 1, Diffusion-DPO** on the human picks since the parent; with a trusted reward model, also on
   the best-vs-worst pairs of ``AI_SETS`` sets of ``AI_CANDIDATES`` images drawn by the parent and ranked
   by the reward model, at full weight (sharper pairs than 4-image sets at half weight: in the loop those
   lifted ``contrast`` from 0.71 to 0.81). With ``settings.auto_dpo_variants`` naming both ``dpo`` and
   ``dpo+ai`` (default: ``dpo+ai`` alone, to keep a round short) both are trained and the gate picks the
   one with the higher win rate.
3. **Stage 2, DDPO** against the same (trusted) reward model, starting from stage 1's winner (or the
   parent when stage 1 was refused): in the loop it lifted ``large`` from 0.72 to 0.85 where DPO alone
   could not, and where it hacks the reward model (off-prompt images) the gate's follow check refuses it.
   It is skipped (one line in the log) when the promoted line already holds a DDPO version trained
   against a reward model more accurate than this one (``ddpo_doubtful``): that version already climbed
   a better reward model, and climbing a worse one adds its errors. In the loop such a second DDPO was
   refused by the gate (win rate 0.447, cross-validated accuracy 0.721 after 0.778); skipping it saves
   its training and its gate's images. A DDPO run whose every epoch crossed a drift limit is rolled back to
   where it started and registers no version (status ``no-change``), so no copy of the parent is gated or promoted.

Every candidate is an ordinary keyed, resumable ``run_finetune_job``; a rerun with no new labels is a
no-op. The outcome lists every candidate with its gate figures and why it won or lost.

``audience`` (``group:NAME``, ``rater:NAME``) runs all of this for one audience: its labels (everyone
else's at ``others_weight``), the reward model trained on its labels (trust, AI-ranked pairs, DDPO, the
gate), its promoted version as the parent (else the shared one), and its promotions (the shared version
stays as it is). Its newest reward model missing, the gate's win rate is not scored (prompt following decides).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from finetune.registry import DEFAULT_GATE_SEEDS, gate_and_promote, is_shapes_world, promote_version
from pickloop.errors import DamagedFileError, UserError

# AI-ranked sets per DPO run when the reward model ranks (in the loop 300 drew twice the images for no higher win rate)
AI_SETS = 150
AI_CANDIDATES = 8  # images per AI-ranked set: best vs worst of 8 is a sharper pair than of 4
AI_WEIGHT = 1.0


@dataclass
class Trust:
    trusted: bool  # its scores may train (DDPO) and judge (the gate's win rate)
    reward_model_id: int | None
    cv_acc: float | None
    cv_pairs: int
    reason: str
    ranks: bool | None = None  # its best-against-worst rankings may make AI pairs; None: as ``trusted``

    def __post_init__(self) -> None:
        if self.ranks is None:
            self.ranks = self.trusted

    def as_dict(self) -> dict[str, Any]:
        return {"trusted": self.trusted, "ranks": self.ranks, "reward_model_id": self.reward_model_id,
                "cv_acc": self.cv_acc, "cv_pairs": self.cv_pairs, "reason": self.reason}


@dataclass
class Candidate:
    stage: str
    name: str  # dpo, dpo+ai, ddpo
    method: str
    overrides: dict[str, Any]
    status: str = "pending"  # promoted, passed (not the best), refused, skipped, <job status>
    version: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "candidate": self.name, "method": self.method, "status": self.status,
                "version": self.version, "gate": self.gate, "reason": self.reason}


@dataclass
class AutoOutcome:
    trust: Trust
    candidates: list[Candidate]
    promoted: list[str]
    exit_code: int = 0

    @property
    def message(self) -> str:
        lines = [f"{c.stage} {c.name}: {c.status}" + (f" ({c.version})" if c.version else "")
                 + (f": {c.reason}" if c.reason else "") for c in self.candidates]
        last = f"promoted {', then '.join(self.promoted)}" if self.promoted else "nothing promoted"
        return "\n".join(lines + [last])


def reward_trust(ctx: Any, audience: str = "everyone") -> Trust:
    """Whether the newest reward model (of ``audience``) may rank images for this run (see the module docstring)."""
    from pickloop.db import read_session
    from reward import find_reward_model

    st = ctx.settings
    with read_session(ctx.engine) as s:
        try:
            row = find_reward_model(session=s, audience=audience)
        except UserError:
            return Trust(False, None, None, 0, "no reward model trained yet" + (
                "" if audience == "everyone" else f" for {audience} (`pickloop reward train --audience {audience}`)"))
        rid, m = int(row.id), dict(row.metrics)
    acc, pairs = m.get("cv_acc"), int(m.get("cv_pairs") or 0)
    if acc is None:
        return Trust(False, rid, None, 0, f"reward model {rid} has no cross-validated accuracy (train it again)")
    if pairs < st.reward_trust_min_pairs:
        return Trust(False, rid, acc, pairs, f"reward model {rid} was validated on {pairs} pairs only "
                                             f"(needs {st.reward_trust_min_pairs})")
    if acc < st.reward_trust_min_acc:
        top, top_se = m.get("cv_acc_top"), m.get("cv_acc_top_se") or 0.0
        why = f"reward model {rid}: cross-validated accuracy {acc:.3f} on {pairs} pairs is below " \
              f"{st.reward_trust_min_acc:.2f}"
        if top is not None and top - top_se >= st.reward_rank_min_top_acc:
            return Trust(False, rid, acc, pairs, why + f", but {top:.3f} +- {top_se:.3f} on the quarter it separates "
                                                       "most, so its best-against-worst rankings are used", ranks=True)
        return Trust(False, rid, acc, pairs, why)
    return Trust(True, rid, acc, pairs, f"reward model {rid}: cross-validated accuracy {acc:.3f} on {pairs} pairs")


def ddpo_ancestor(ctx: Any, audience: str = "everyone") -> tuple[str, int, float] | None:
    """The nearest DDPO version in the line of the run's parent (``audience``'s promoted version, else the
    shared one; itself included): (its name, the reward model it was trained against, that model's
    cross-validated accuracy); None when there is none or the reward model or its accuracy is not recorded."""
    from pickloop.db import read_session
    from pickloop.schema import ModelVersion, RewardModelRow
    from pickloop.store import promoted_version

    with read_session(ctx.engine) as s:
        v, seen = promoted_version(session=s, audience=audience) or promoted_version(session=s), set()
        while v is not None and v.id not in seen:
            seen.add(v.id)
            if v.method == "ddpo":
                rid = (v.metrics or {}).get("reward_model_id")
                row = s.get(RewardModelRow, rid) if rid is not None else None
                acc = (row.metrics or {}).get("cv_acc") if row is not None else None
                return None if acc is None else (v.name, int(rid), float(acc))
            v = s.get(ModelVersion, v.parent_id) if v.parent_id else None
    return None


def ddpo_doubtful(ctx: Any, trust: Trust, audience: str = "everyone") -> str | None:
    """Why DDPO is not worth its cost this run (see the module docstring), or None."""
    found = ddpo_ancestor(ctx, audience)
    if found is None or trust.cv_acc is None:
        return None
    name, rid, acc = found
    if trust.cv_acc < acc:
        return (f"{name} was already trained by DDPO against reward model {rid} (cross-validated accuracy "
                f"{acc:.3f}); reward model {trust.reward_model_id} is less accurate ({trust.cv_acc:.3f})")
    return None


def plan_candidates(trust: Trust, *, dpo: dict[str, Any] | None = None, ddpo: dict[str, Any] | None = None,
                    variants: Sequence[str] = ("dpo+ai",)) -> list[list[Candidate]]:
    """The stages of candidates a run trains: a list of stages, each a list of alternatives.

    ``dpo`` / ``ddpo``: the operator's overrides of each method's config (they win over the plan's)."""
    dpo, ddpo = dict(dpo or {}), dict(ddpo or {})
    if not trust.ranks:
        return [[Candidate("dpo", "dpo", "dpo", {**dpo, "ai_feedback_sets": 0})]]
    ai = {"ai_feedback_sets": AI_SETS, "ai_feedback_candidates": AI_CANDIDATES, "ai_feedback_weight": AI_WEIGHT}
    if dpo.get("ai_feedback_sets") == 0:  # the operator turned AI-ranked pairs off: dpo+ai would be dpo again
        variants = ("dpo",)
    elif not trust.trusted:  # its rankings only: without a judge of taste, no choosing among variants
        variants = ("dpo+ai",)
    first = [Candidate("dpo", v, "dpo", {**dpo, "ai_feedback_sets": 0} if v == "dpo" else {**ai, **dpo})
             for v in variants]
    return [first, [Candidate("ddpo", "ddpo", "ddpo", ddpo)]] if trust.trusted else [first]


def _rank(c: Candidate, judged_win: bool) -> tuple[float, float]:
    g = c.gate
    win, follow = g.get("gate_win_rate") or 0.0, g.get("gate_follow_new") or 0.0
    return (win, follow) if judged_win else (follow, win)


def run_auto(ctx: Any, *, min_new_labels: int = 1, dpo: dict[str, Any] | None = None,
             ddpo: dict[str, Any] | None = None, gate_prompts: Sequence[str] | None = None,
             gate_seeds: Sequence[int] | None = None, log: Callable[[str], None] = print,
             audience: str = "everyone", others_weight: float = 0.0) -> AutoOutcome:
    """One ``--method auto`` run: trust check, then each stage's candidates trained, gated, the best promoted;
    ``audience``/``others_weight``: for that audience (see the module docstring)."""
    from finetune.jobs import busy_outcome, check_scope, lock_taken, method_config, prepare_home, run_finetune_job

    from pickloop.audiences import label_scope
    from pickloop.db import read_session
    from finetune.jobs import labels_since_last_run

    method_config("dpo", dpo or {})  # a bad override is one line before any model loads
    method_config("ddpo", ddpo or {})
    scope = label_scope(audience, others_weight)  # so is a bad audience or weight, or too few labels
    check_scope(ctx, scope)
    if lock_taken(ctx):  # another run is training: say so before torch loads
        busy = busy_outcome(ctx)
        log(busy.message)
        return AutoOutcome(Trust(False, None, None, 0, "not checked: another run holds the lock"), [], [],
                           busy.exit_code)
    prepare_home(ctx, scope.audience)  # stale temporary folders go; a damaged parent LoRA is one line
    with read_session(ctx.engine) as s:
        new, last = labels_since_last_run(s, "finetune-dpo", scope)
    trust = reward_trust(ctx, scope.audience)
    if new < min_new_labels:
        whose = "" if scope.shared else f" of {scope.audience}"
        log(f"{new} new labels{whose} since the last run (snapshot {last}); need {min_new_labels}: nothing to do")
        return AutoOutcome(trust, [], [])
    if trust.ranks and not trust.trusted:
        log(f"trusting the reward model's rankings only: {trust.reason}; no DDPO, and its win rate does not "
            "decide promotion")
    elif not trust.trusted:
        log(f"not trusting the reward model: {trust.reason}; no AI-ranked pairs, no DDPO, and its win rate "
            "does not decide promotion")
    else:
        log(f"trusting the reward model: {trust.reason}")
    stages = plan_candidates(trust, dpo=dpo, ddpo=ddpo, variants=ctx.settings.auto_dpo_variants)
    doubtful = ddpo_doubtful(ctx, trust, scope.audience) if len(stages) > 1 else None
    if doubtful:
        log(f"no DDPO this run: {doubtful}")
        for c in stages[1]:
            c.status, c.reason = "skipped", f"no DDPO: {doubtful}"
    seeds = list(gate_seeds or DEFAULT_GATE_SEEDS)
    # without a reward model of its own an audience's gate scores no win rate (it would not decide anyway)
    scorer = None if trust.reward_model_id is not None else (lambda prompts, images: [0.0] * len(prompts))
    done: list[Candidate] = []
    promoted: list[str] = []
    for stage in stages:
        passed: list[Candidate] = []
        for c in stage:
            done.append(c)
            if c.status == "skipped":
                continue
            try:
                # every candidate of the run trains on the same snapshot, so none waits for newer labels
                outcome = run_finetune_job(ctx, method=c.method, min_new_labels=0, overrides=c.overrides,
                                           audience=scope.audience, others_weight=scope.others_weight)
            except DamagedFileError:  # a damaged file in the data home stops the run: its one line, exit 2
                raise
            except UserError as e:  # e.g. no usable pairs: the next candidate may still have some
                c.status, c.reason = "skipped", str(e)
                continue
            if outcome.exit_code not in (0,) or outcome.version is None:
                c.status, c.reason = outcome.status, outcome.message
                if outcome.exit_code:
                    return AutoOutcome(trust, done, promoted, outcome.exit_code)
                continue
            c.version = outcome.version
            gate = gate_and_promote(ctx, c.version, scorer=scorer, prompts=gate_prompts, seeds=seeds,
                                    judge_win=trust.trusted, promote_if_passed=False)
            c.gate = gate.as_metrics()
            if gate.passed and not trust.trusted and not is_shapes_world(ctx.base_model):
                c.status, c.reason = "candidate", "no trusted judge (reward model untrusted, no prompt-following " \
                                                  "judge for this model): left for `pickloop models promote`"
            elif gate.passed:
                passed.append(c)
                c.status = "passed"
            else:
                c.status, c.reason = "refused", gate.reason
        if passed:
            best = max(passed, key=lambda c: _rank(c, trust.trusted))
            promote_version(ctx, best.version)
            promoted.append(best.version)
            best.status = "promoted"
            why = (f"win rate {best.gate.get('gate_win_rate', 0):.3f} against its parent" if trust.trusted
                   else f"prompt following {best.gate.get('gate_follow_new') or 0:.3f}")
            best.reason = why + (" (the best of those that passed)" if len(passed) > 1 else "")
            for c in passed:
                if c is not best:
                    c.reason = f"passed, but {best.name} did better"
    return AutoOutcome(trust, done, promoted)

"""The closed loop, end to end, through the same store, registry and job code that users run.

Each round: a simulated rater with a hidden taste labels candidate sets drawn from the promoted version
(on-policy) -> the reward model is trained on every label so far -> a LoRA is fine-tuned (DPO and/or DDPO)
by the scheduled-job entry point -> the promotion gate decides -> the promoted version is measured against
the base on held-out prompts at fixed seeds by the rater's oracle and by the judge.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import ceil
from typing import Any

from finetune import gate_and_promote, run_auto, run_finetune_job
from generator import fill_queue, load_pipeline
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.loop.config import LoopConfig
from pickloop.loop.evaluate import (FixedSeedImages, draw_fixed, follow_detail, follow_rate, label_ceiling, mean_taste,
                                    oracle_win_rate, taste_agreement)
from pickloop.shapes.rating import LOOP_POOL, label_ready_sets, open_prompts, simulated_rater_row
from pickloop.shapes.tastes import SimulatedRater, load_taste
from pickloop.store import EVERYONE, add_prompts, ensure_base_version, preference_pairs, promoted_version


@dataclass
class LoopResult:
    config: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    base: FixedSeedImages | None = None
    final: FixedSeedImages | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time (all its threads): on a loaded machine wall time says little

    @property
    def summary(self) -> dict[str, Any]:
        last = self.rounds[-1] if self.rounds else {}
        return {"win_rate": last.get("win_rate", 0.5), "follow_base": last.get("follow_base"),
                "follow_final": last.get("follow_final"), "reward_acc": last.get("reward_acc"),
                "reward_taste_acc": last.get("reward_taste_acc"), "label_ceiling": last.get("label_ceiling"),
                "labels": last.get("labels", 0), "wall_s": round(self.wall_s, 1), "cpu_s": round(self.cpu_s, 1)}


def finetune_auto(ctx: Context, cfg: LoopConfig, gate_prompts: list[str], log,  # noqa: ANN001
                  audience: str = EVERYONE) -> tuple[list[dict], dict]:
    """The production default (``finetune run --method auto``, for ``audience``): the run decides what to
    train from its data."""
    dpo = {"steps": cfg.dpo_steps, "lr": cfg.dpo_lr, "beta": cfg.dpo_beta, "ai_feedback_sets": cfg.dpo_ai_feedback_sets,
           "ai_feedback_candidates": cfg.dpo_ai_feedback_candidates, "ai_feedback_weight": cfg.dpo_ai_feedback_weight}
    outcome = run_auto(ctx, min_new_labels=1, dpo=dpo,
                       ddpo={"epochs": cfg.ddpo_epochs}, gate_prompts=gate_prompts, gate_seeds=_gate_seeds(cfg),
                       log=lambda line: log(f"  {line}"), audience=audience)
    steps = [{"method": c.name, "stage": c.stage, "status": c.status, "version": c.version, "gate": c.gate,
              "reason": c.reason} for c in outcome.candidates]
    return steps or [{"method": "auto", "status": "skipped", "reason": "no new labels"}], outcome.trust.as_dict()


def _gate_seeds(cfg: LoopConfig) -> list[int]:
    # The gate draws the held-out prompts at seeds of its own, never the ones the final figures use.
    return [7919 * (cfg.seed + 1) + k for k in range(cfg.gate_seeds)]


def _finetune(ctx: Context, method: str, cfg: LoopConfig, gate_prompts: list[str]) -> dict[str, Any]:
    """Train one version through the job entry point, then let the promotion gate decide."""
    overrides = ({"steps": cfg.dpo_steps, "lr": cfg.dpo_lr, "beta": cfg.dpo_beta,
                  "ai_feedback_sets": cfg.dpo_ai_feedback_sets,
                  "ai_feedback_candidates": cfg.dpo_ai_feedback_candidates,
                  "ai_feedback_weight": cfg.dpo_ai_feedback_weight} if method == "dpo"
                 else {"epochs": cfg.ddpo_epochs})
    try:
        outcome = run_finetune_job(ctx, method=method, min_new_labels=1, overrides=overrides)
    except UserError as e:  # e.g. no usable pairs yet: the round goes on without a new version
        return {"method": method, "status": "skipped", "reason": str(e)}
    if outcome.status != "done":
        return {"method": method, "status": outcome.status, "message": outcome.message}
    gate = gate_and_promote(ctx, outcome.version, prompts=gate_prompts, seeds=_gate_seeds(cfg))
    return {"method": method, "status": "promoted" if gate.passed else "refused", "version": outcome.version,
            "gate": gate.as_metrics(), "reason": None if gate.passed else gate.reason}


def draw_version(ctx: Context, cfg: LoopConfig, eval_prompts: list[str], version) -> FixedSeedImages:  # noqa: ANN001
    """A model version's images of the held-out prompts at the loop's fixed seeds."""
    pipe = load_pipeline(model=ctx.base_model, lora=version.id if version.lora_path else None, ctx=ctx)
    return draw_fixed(pipe, eval_prompts, cfg.eval_seeds, seed=cfg.seed)


def _measure(ctx: Context, cfg: LoopConfig, taste, eval_prompts: list[str], base: FixedSeedImages) -> dict:  # noqa: ANN001
    with read_session(ctx.engine) as s:
        current = promoted_version(session=s)
    now = draw_version(ctx, cfg, eval_prompts, current)
    return {"version": current.name, "win_rate": oracle_win_rate(taste, now, base),
            "follow_base": follow_rate(base), "follow_final": follow_rate(now),
            "taste_base": mean_taste(taste, base), "taste_final": mean_taste(taste, now),
            "detail": follow_detail(taste, now, base), "_images": now}


@dataclass
class LoopSetup:
    """What every simulated loop starts from: its data home (with the loop's settings), its training and
    held-out prompts (in the store's loop pool) and the base model's fixed-seed images of the held-out ones."""

    ctx: Context
    train_prompts: list[str]
    eval_prompts: list[str]
    base: FixedSeedImages


def setup_loop(ctx: Context, config: LoopConfig) -> LoopSetup:
    """The loop's data home and prompts, the base version registered, the base's held-out images drawn."""
    # Simulated raters: no overlap sets (they would wait for a second rater); the loop's own gate threshold;
    # candidate seeds from the loop's seed (unless the settings name one), so a run's labels repeat.
    seed = ctx.settings.sampling_seed if ctx.settings.sampling_seed is not None else config.seed
    ctx = Context(settings=ctx.settings.model_copy(update={"overlap_share": 0.0, "sampling_seed": seed,
                                                           "promote_min_win_rate": config.gate_win_rate}))
    train_prompts = open_prompts(config.train_prompts, heldout=False, open_attributes=config.open_attributes,
                                 seed=config.seed)
    eval_prompts = open_prompts(config.eval_prompts, heldout=True, open_attributes=config.open_attributes,
                                seed=config.seed)
    if len(eval_prompts) < 2 or len(train_prompts) < 4:
        raise UserError("the shapes world has too few prompts leaving those attributes open")
    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
        add_prompts(session=s, texts=train_prompts, pool=LOOP_POOL)
    base = draw_fixed(load_pipeline(model=ctx.base_model, ctx=ctx), eval_prompts, config.eval_seeds, seed=config.seed)
    return LoopSetup(ctx, train_prompts, eval_prompts, base)


def draw_round_sets(setup: LoopSetup, config: LoopConfig, want: int, progress: bool) -> None:
    """A round's candidate sets for the raters to label, drawn as the queue worker draws them (the shared
    promoted version, ``settings.generator_batch_sets`` sets per pipeline call)."""
    fill_queue(ctx=setup.ctx, pool=LOOP_POOL, depth=ceil(want / len(setup.train_prompts)), max_sets=want,
               n=config.candidates, progress=progress)


def run_loop(*, ctx: Context, config: LoopConfig, progress: bool = True, log=print) -> LoopResult:  # noqa: ANN001
    """Run ``config.rounds`` rounds; returns per-round figures and the fixed-seed images of base and final."""
    from reward import train_reward

    t0, c0 = time.perf_counter(), time.process_time()
    setup = setup_loop(ctx, config)
    ctx, eval_prompts, base = setup.ctx, setup.eval_prompts, setup.base
    taste = load_taste(config.taste)
    rater = SimulatedRater(config.taste, temperature=config.rater_temperature, tie_margin=config.rater_tie_margin,
                           seed=config.seed)
    rater_id = simulated_rater_row(ctx, f"simulated:{rater.name}")
    result = LoopResult(config=config.to_dict(), base=base, final=base)
    methods = ["dpo", "ddpo"] if config.method == "both" else [config.method]
    labels = 0
    for r in range(1, config.rounds + 1):
        tr, cr = time.perf_counter(), time.process_time()
        want = config.labels_per_round
        draw_round_sets(setup, config, want, progress)
        labels += label_ready_sets(ctx, rater, rater_id, want)
        stage_s = {"label": time.perf_counter() - tr}
        stage_cpu = {"label": time.process_time() - cr}
        trust = None
        try:
            t, c = time.perf_counter(), time.process_time()
            rm, rmetrics = train_reward(ctx=ctx, progress=progress)
            knows = _reward_knows(ctx, rm, taste, base, margin=config.rater_tie_margin)
            stage_s["reward"], stage_cpu["reward"] = time.perf_counter() - t, time.process_time() - c
        except UserError as e:  # e.g. every answer so far was a tie: nothing to learn from yet
            rmetrics, steps = {}, [{"method": "reward", "status": "skipped", "reason": str(e)}]
            knows = {"reward_taste_acc": None, "label_ceiling": None}
        else:
            t, c = time.perf_counter(), time.process_time()
            if config.method == "auto":
                steps, trust = finetune_auto(ctx, config, eval_prompts, log)
            else:
                steps = [_finetune(ctx, m, config, eval_prompts) for m in methods]
            stage_s["finetune"], stage_cpu["finetune"] = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        m = _measure(ctx, config, taste, eval_prompts, base)
        stage_s["measure"], stage_cpu["measure"] = time.perf_counter() - t, time.process_time() - c
        result.final = m.pop("_images")
        row = {"round": r, "labels": labels, "reward_acc": rmetrics.get("cv_acc", rmetrics.get("heldout_acc")),
               "reward_heldout_acc": rmetrics.get("heldout_acc"), **knows, "trust": trust, "finetune": steps,
               **m, "round_s": round(time.perf_counter() - tr, 1), "round_cpu_s": round(time.process_time() - cr, 1),
               "stage_s": {k: round(v, 1) for k, v in stage_s.items()},
               "stage_cpu_s": {k: round(v, 1) for k, v in stage_cpu.items()}}
        result.rounds.append(row)
        log(f"round {r}: labels={labels} reward_acc={_fmt(row['reward_acc'])} "
            f"reward_taste_acc={_fmt(row['reward_taste_acc'])} label_ceiling={_fmt(row['label_ceiling'])} "
            f"promoted={m['version']} "
            f"win_rate={m['win_rate']:.3f} follow_base={m['follow_base']:.3f} "
            f"follow_final={m['follow_final']:.3f} ({'; '.join(_step_line(x) for x in steps)}) "
            f"{row['round_s']}s ({row['round_cpu_s']}s cpu) ["
            + " ".join(f"{k} {v}s/{row['stage_cpu_s'][k]}s cpu" for k, v in row["stage_s"].items()) + "]")
    result.wall_s = time.perf_counter() - t0
    result.cpu_s = time.process_time() - c0
    return result


def _reward_knows(ctx: Context, rm, taste, base: FixedSeedImages, *, margin: float) -> dict:  # noqa: ANN001
    """What the simulation alone can tell about the reward model: how it orders the base's held-out images
    against the taste itself, and the taste's own accuracy on the labels (their noise ceiling)."""
    with read_session(ctx.engine) as s:
        pairs = [(p.prompt, p.a.image_sha256, p.b.image_sha256)
                 for p in preference_pairs(session=s, include_ties=False)]
    scores = rm.score(base.prompts, base.images).tolist()
    return {"reward_taste_acc": taste_agreement(taste, scores, base, margin=margin),
            "label_ceiling": label_ceiling(taste, [(p, ctx.images.open(a), ctx.images.open(b)) for p, a, b in pairs])}


def _fmt(x) -> str:  # noqa: ANN001
    return "n/a" if x is None else f"{x:.3f}"


def _step_line(step: dict) -> str:
    return f"{step['method']} {step['status']}" + (f": {step['reason']}" if step.get("reason") else "")

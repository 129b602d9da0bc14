"""``pickloop bench audiences``: one store, two simulated raters of opposite tastes, a version for each.

Each round the queue worker's code draws ``labels / rounds`` candidate sets as the Rate page's worker does
(``fill_queue(per_audience=True)``): each rater's half from the version that serves them (their own once one
is promoted, else the shared one), and each rater answers only the sets of that version, as the Rate page
hands them out; so each gives about ``labels / 2`` labels in all, and from the second round on labels the
images of their own version. Then, for each rater's audience
(``rater:simulated:TASTE``) and last for everyone, the reward model is trained on that audience's labels
(``train_reward(audience=...)``) and ``finetune run`` runs with its defaults (``--method auto``) for that
audience (``run_auto(audience=...)``): the production code, the audience its only parameter. The raters'
versions come first in a round, so the first round's start from the base rather than from the shared
version just trained on both tastes.

Each version is measured as ``bench loop`` measures one: the rater's oracle win rate against the base on the
held-out prompts at fixed seeds (``pickloop.loop.evaluate``) and the judge's prompt following. A rater is
measured with the version that serves them (``pickloop.audiences.serving_version``: their own when one was
promoted, else the shared one) and with the shared version. Last line: ``win_a_own= win_b_own=
win_a_shared= win_b_shared= max_follow_drop= wall_s= cpu_s=`` (a: the first taste, b: the second;
``max_follow_drop``: the largest fall in prompt following from the base among the versions measured).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from math import ceil
from typing import Any, Callable, Sequence

from generator import fill_queue
from pickloop.audiences import serving_version
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.loop.config import LoopConfig
from pickloop.loop.evaluate import FixedSeedImages, follow_rate, oracle_win_rate
from pickloop.loop.run import LoopSetup, _fmt, _step_line, draw_version, finetune_auto, setup_loop
from pickloop.pace import ready_unanswered
from pickloop.shapes.rating import LOOP_POOL, label_ready_sets, simulated_rater_row
from pickloop.shapes.tastes import SimulatedRater, load_taste
from pickloop.store import EVERYONE, promoted_version

TASTES = ("large", "small")
FIGURES = ("win_a_own", "win_b_own", "win_a_shared", "win_b_shared", "max_follow_drop", "wall_s", "cpu_s")


@dataclass
class AudienceBenchResult:
    tastes: tuple[str, str]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def last_line(self) -> str:
        return " ".join(f"{k}={self.figures[k]:.1f}" if k.endswith("_s") else f"{k}={self.figures[k]:.3f}"
                        for k in FIGURES)


def split_labels(total: int, raters: int) -> list[int]:
    """How many of a round's ``total`` sets each rater answers: as even as can be, the first ones one more."""
    return [total // raters + (1 if i < total % raters else 0) for i in range(raters)]


def check_tastes(tastes: Sequence[str]) -> list[str]:
    """Two different tastes that load (``--tastes``); one UserError line otherwise."""
    tastes = list(tastes)
    if len(tastes) != 2 or tastes[0] == tastes[1]:
        raise UserError(f"--tastes names two different tastes, not {','.join(tastes)!r}")
    for t in tastes:
        try:
            load_taste(t)
        except Exception as e:  # noqa: BLE001 - a user's taste file may raise anything while loading
            raise UserError(f"--tastes {t}: {e}") from None
    return tastes


def rater_audience(taste: str) -> str:
    return f"rater:simulated:{taste}"


def draw_served_sets(setup: LoopSetup, config: LoopConfig, need: dict[int, int], progress: bool) -> None:
    """Ready sets of the loop's pool up to ``need[version id]`` for each version, drawn as the Rate page's worker
    draws (every audience's promoted version in turns of one batch, each to the sets its raters want)."""
    ctx = setup.ctx

    def wanted(version_id: int) -> int:
        with read_session(ctx.engine) as s:
            ready = ready_unanswered(session=s, pool=LOOP_POOL, version_id=version_id)
        return max(0, need.get(version_id, 0) - ready)

    depth = ceil(max(need.values()) / len(setup.train_prompts))
    fill_queue(ctx=ctx, pool=LOOP_POOL, depth=depth, max_sets=sum(need.values()), n=config.candidates,
               progress=progress, per_audience=True, target=wanted)


def _train_and_finetune(ctx: Context, config: LoopConfig, eval_prompts: list[str], audience: str,
                        progress: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """The reward model on the audience's labels, then ``finetune run`` (auto) for the audience."""
    from reward import train_reward

    try:
        _, metrics = train_reward(ctx=ctx, progress=progress, audience=audience)
    except UserError as e:  # e.g. too few labels of its own yet: its fine-tuning has nothing to stand on either
        return {"audience": audience, "reward_acc": None, "steps": [{"method": "reward", "status": "skipped",
                                                                      "reason": str(e)}]}
    try:
        steps, trust = finetune_auto(ctx, config, eval_prompts, log, audience=audience)
    except UserError as e:
        steps, trust = [{"method": "auto", "status": "skipped", "reason": str(e)}], None
    return {"audience": audience, "reward_acc": metrics.get("cv_acc", metrics.get("heldout_acc")),
            "labels": metrics.get("labels"), "trust": trust, "steps": steps}


def measure(ctx: Context, config: LoopConfig, eval_prompts: list[str], base: FixedSeedImages,
            tastes: Sequence[str], rater_ids: Sequence[int]) -> dict[str, Any]:
    """Each rater's oracle win rate against the base with the version serving them and with the shared one,
    and the prompt following of every version measured."""
    with write_session(ctx.engine) as s:
        shared = promoted_version(session=s)
        own = [serving_version(session=s, rater_id=rid, base_model=ctx.base_model) for rid in rater_ids]
        versions = {v.name: v for v in [shared, *own]}
    images = {name: draw_version(ctx, config, eval_prompts, v) for name, v in versions.items()}
    follow_base = follow_rate(base)
    follow = {name: follow_rate(im) for name, im in images.items()}
    out: dict[str, Any] = {"shared": shared.name, "follow_base": follow_base, "follow": follow,
                           "max_follow_drop": max(follow_base - f for f in follow.values())}
    for key, taste_name, version in zip("ab", tastes, own):
        taste = load_taste(taste_name)
        out[f"version_{key}"] = version.name
        out[f"win_{key}_own"] = oracle_win_rate(taste, images[version.name], base)
        out[f"win_{key}_shared"] = oracle_win_rate(taste, images[shared.name], base)
    return out


def run_audience_bench(*, ctx: Context, config: LoopConfig, tastes: Sequence[str] = TASTES, progress: bool = True,
                       log: Callable[[str], None] = print) -> AudienceBenchResult:
    """Run ``config.rounds`` rounds with two raters (see the module docstring); ``config.taste`` is unused."""
    tastes = check_tastes(tastes)
    t0, c0 = time.perf_counter(), time.process_time()
    setup = setup_loop(ctx, config)
    ctx = setup.ctx
    raters = [SimulatedRater(t, temperature=config.rater_temperature, tie_margin=config.rater_tie_margin,
                             seed=config.seed + i) for i, t in enumerate(tastes)]
    rater_ids = [simulated_rater_row(ctx, f"simulated:{r.name}") for r in raters]
    audiences = [rater_audience(t) for t in tastes]
    result = AudienceBenchResult(tuple(tastes))
    labels = [0] * len(raters)
    for r in range(1, config.rounds + 1):
        tr, cr = time.perf_counter(), time.process_time()
        shares = split_labels(config.labels_per_round, len(raters))
        with write_session(ctx.engine) as s:
            serving = [serving_version(session=s, rater_id=rid, base_model=ctx.base_model).id for rid in rater_ids]
        need: Counter[int] = Counter()
        for vid, n in zip(serving, shares):
            need[vid] += n
        draw_served_sets(setup, config, dict(need), progress)
        for i, (rater, rid, n, vid) in enumerate(zip(raters, rater_ids, shares, serving)):
            labels[i] += label_ready_sets(ctx, rater, rid, n, version_id=vid)
        runs = []
        for audience in [*audiences, EVERYONE]:
            log(f"round {r}: {audience}")
            runs.append(_train_and_finetune(ctx, config, setup.eval_prompts, audience, progress, log))
        m = measure(ctx, config, setup.eval_prompts, setup.base, tastes, rater_ids)
        row = {"round": r, "labels": dict(zip(tastes, labels)), "runs": runs, **m,
               "round_s": round(time.perf_counter() - tr, 1), "round_cpu_s": round(time.process_time() - cr, 1)}
        result.rounds.append(row)
        for run in runs:
            log(f"round {r} {run['audience']}: reward_acc={_fmt(run['reward_acc'])} "
                f"({'; '.join(_step_line(x) for x in run['steps'])})")
        log(f"round {r}: labels {' '.join(f'{t}={n}' for t, n in zip(tastes, labels))} shared={m['shared']} "
            f"{tastes[0]}: {m['version_a']} win {m['win_a_own']:.3f} (shared {m['win_a_shared']:.3f}) "
            f"{tastes[1]}: {m['version_b']} win {m['win_b_own']:.3f} (shared {m['win_b_shared']:.3f}) "
            f"follow base {m['follow_base']:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in m["follow"].items())
            + f" {row['round_s']}s ({row['round_cpu_s']}s cpu)")
    last = result.rounds[-1]
    result.figures = {k: last[k] for k in FIGURES[:5]}
    result.figures.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0)
    return result

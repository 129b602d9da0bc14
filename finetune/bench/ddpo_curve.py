"""``pickloop bench ddpo-curve``: does DDPO raise the score of a reward model trained on a simulated rater's picks?

In a fresh data home of its own, on the embedded shapes model: a simulated rater with a hidden taste
labels candidate sets of prompts that leave colour and size open -> a reward model is trained on those
picks -> DDPO (the job entry point of ``pickloop finetune run --method ddpo``, DDPOConfig defaults unless
``--config``) fine-tunes a LoRA against it. Each epoch prints the mean reward-model score of its samples
and the rater's hidden taste of the same images (the oracle, never trained against); a PNG plots both.
The last line is ``reward_first=<..> reward_last=<..> rise=<..> slope=<..> noise=<..> taste_first=<..>
taste_last=<..> drift=<..> follow_drop=<..> reward_acc=<..> epochs=<..> wall_s=<..>``: first/last are means
over the first/last quarter of the epochs, rise = last - first, slope the least-squares gain per epoch, noise
the standard deviation of the per-epoch means about that line, taste_* the same quarters of the oracle's
score, drift and follow_drop the last epoch's fixed-seed pixel drift from the base (0..1) and drop of the
judge's prompt-following on held-out prompts, reward_acc the reward model's held-out pairwise accuracy (a weak
reward model is easy to hack: the taste then falls while the reward is pushed up, or the images simply
degrade). The drift guard measures only, unless ``--config`` sets its limits.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from math import ceil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from finetune.ddpo.config import DDPOConfig
from pickloop.config_base import add_flags, config_from_args
from pickloop.errors import UserError

OPEN_ATTRIBUTES = ("color", "size")


def curve_figures(values: Sequence[float]) -> dict[str, float]:
    """first/last (means of the first/last quarter), rise, slope (per epoch) and noise of a per-epoch curve."""
    y = np.asarray(values, dtype=np.float64)
    if len(y) < 2:
        raise ValueError("a curve needs at least two epochs")
    q = max(1, len(y) // 4)
    x = np.arange(len(y), dtype=np.float64)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    noise = float(np.sqrt((residual ** 2).sum() / max(1, len(y) - 2)))
    first, last = float(y[:q].mean()), float(y[-q:].mean())
    return {"first": first, "last": last, "rise": last - first, "slope": float(slope), "noise": noise}


def rated_home(folder: Path, *, taste: str, labels: int, candidates: int, prompts: int, seed: int,
               progress: bool) -> tuple[Any, dict[str, Any]]:
    """A data home in ``folder`` on the embedded model: ``labels`` picks of a simulated rater, a reward model.

    Returns (Context, the reward model's metrics).
    """
    from generator import fill_queue
    from pickloop.context import EMBEDDED_MODEL, Context
    from pickloop.db import write_session
    from pickloop.settings import get_settings
    from pickloop.shapes.rating import LOOP_POOL, label_ready_sets, open_prompts, simulated_rater_row
    from pickloop.shapes.tastes import SimulatedRater
    from pickloop.store import add_prompts, ensure_base_version
    from reward import train_reward

    folder.mkdir(parents=True, exist_ok=True)
    ctx = Context(settings=get_settings(home=folder, database_url=f"sqlite:///{(folder / 'pickloop.db').resolve()}",
                                        image_store_url=str((folder / "images").resolve()),
                                        base_model=EMBEDDED_MODEL, overlap_share=0.0, sampling_seed=seed))
    texts = open_prompts(prompts, heldout=False, open_attributes=OPEN_ATTRIBUTES, seed=seed)
    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
        add_prompts(session=s, texts=texts, pool=LOOP_POOL)
    try:  # the rater's default temperature and tie margin, which are also the measured loop's
        rater = SimulatedRater(taste, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None
    rater_id = simulated_rater_row(ctx, f"simulated:{rater.name}")
    fill_queue(ctx=ctx, pool=LOOP_POOL, depth=ceil(labels / len(texts)), max_sets=labels, n=candidates,
               progress=progress, batch_sets=1)  # one set a call, as the measured curve was drawn
    written = label_ready_sets(ctx, rater, rater_id, labels)
    _, metrics = train_reward(ctx=ctx, progress=progress)
    return ctx, {"labels": written, **metrics}


def with_oracle(reward_fn: Callable, taste: Callable) -> tuple[Callable, list[float]]:
    """``reward_fn`` that also appends the hidden taste's score of every image it scores to the returned list."""
    seen: list[float] = []

    def score(prompts: Sequence[str], images: Sequence[Any]):  # noqa: ANN202 - a tensor (B,)
        seen.extend(float(taste(im, p)) for p, im in zip(prompts, images))
        return reward_fn(prompts, images)
    return score, seen


def save_curve_plot(rows: list[dict], path: Path, title: str) -> Path:
    """A PNG of the per-epoch mean reward (with its least-squares line) and the oracle's taste."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [r["epoch"] for r in rows]
    reward = [r["reward_mean"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=100)
    ax.errorbar(epochs, reward, yerr=[r["reward_sem"] for r in rows], marker="o", capsize=2,
                label="reward model (mean ± s.e.)")
    if len(rows) > 1:
        slope, intercept = np.polyfit(epochs, reward, 1)
        ax.plot(epochs, [slope * e + intercept for e in epochs], linestyle="--", color="C0", alpha=0.6,
                label=f"fit: {slope:+.3f} / epoch")
    ax.set_xlabel("DDPO epoch")
    ax.set_ylabel("reward-model score")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["taste_mean"] for r in rows], marker="s", color="C1", label="hidden taste (oracle)")
    ax2.set_ylabel("hidden taste score")
    lines = ax.get_legend_handles_labels()
    more = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_curve(folder: Path, config, *, taste: str, labels: int, candidates: int, prompts: int,  # noqa: ANN001
              progress: bool, log: Callable[[str], None] = print) -> tuple[list[dict], dict[str, Any]]:
    """Rated home -> reward model -> DDPO in ``folder``; returns (per-epoch rows, reward-model metrics)."""
    from finetune.ddpo.job import run_ddpo
    from finetune.ddpo.rewards import make_reward
    from pickloop.shapes.tastes import load_taste

    ctx, rmetrics = rated_home(folder, taste=taste, labels=labels, candidates=candidates, prompts=prompts,
                               seed=config.seed, progress=progress)
    log(f"reward model: {rmetrics['labels']} labels, held-out accuracy {rmetrics.get('heldout_acc', float('nan')):.3f}")
    reward_fn, seen = with_oracle(make_reward("reward-model", ctx=ctx), load_taste(taste))
    rows: list[dict] = []

    def on_step(epoch: int, h: dict) -> None:
        n = config.sample_batch_size * config.sample_batches_per_epoch
        row = {"epoch": epoch, "reward_mean": h["reward_mean"], "reward_sem": h["reward_std"] / np.sqrt(n),
               "taste_mean": float(np.mean(seen)), "drift_pixel": h.get("drift_pixel"),
               "drift_follow": h.get("drift_follow"), "follow_drop": h.get("drift_follow_drop"),
               "epoch_s": h["epoch_s"], "guard": h.get("guard")}
        seen.clear()
        rows.append(row)
        drift = "" if row["drift_pixel"] is None else f" drift {row['drift_pixel']:.3f}"
        follow = "" if row["drift_follow"] is None else f" follow {row['drift_follow']:.2f}"
        msg = (f"epoch {epoch}: reward {row['reward_mean']:.4f} ± {row['reward_sem']:.4f} taste "
               f"{row['taste_mean']:.4f}{drift}{follow} {row['epoch_s']:.1f} s")
        if row["guard"]:
            msg += f" guard: {row['guard']}"
        _write(msg, progress, log)

    run_ddpo(ctx, config, out_dir=folder / "ddpo-lora", reward_fn=reward_fn, on_step=on_step, progress=progress)
    return rows, rmetrics


def _write(msg: str, progress: bool, log: Callable[[str], None]) -> None:
    """One line, above the progress bar when one is showing."""
    if progress and log is print:
        from tqdm import tqdm

        tqdm.write(msg)
    else:
        log(msg)


def register_curve_bench(bench_sub) -> None:  # noqa: ANN001 - argparse subparsers of `pickloop bench`
    q = bench_sub.add_parser("ddpo-curve", help="DDPO reward curve against a reward model of a simulated rater",
                             description=__doc__.split("\n\n")[0])
    q.add_argument("--taste", default="large", help="the simulated rater's hidden taste (default large)")
    q.add_argument("--labels", type=int, default=200, help="labels of the simulated rater (default 200)")
    q.add_argument("--candidates", type=int, default=4, help="candidates per labelled set, 2-4 (default 4)")
    q.add_argument("--prompts", type=int, default=8, help="prompts leaving colour and size open, labelled and "
                                                          "trained on (default 8: each epoch draws every one)")
    q.add_argument("--plot", default=None, help="PNG of the curve (default: <reports>/ddpo-curve-<time>.png)")
    q.add_argument("--home", default=None, help="build the data home here and keep it (default: a temporary "
                                                "folder, removed afterwards)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    # Every DDPO setting as a flag and --config FILE.yaml; the drift guard measures but does not stop the run
    # unless they set its limits: the curve is the point.
    add_flags(q, DDPOConfig, {"drift_max_pixel": None, "drift_max_follow_drop": None})
    q.set_defaults(func=cmd_bench_ddpo_curve)


def cmd_bench_ddpo_curve(args: argparse.Namespace) -> int:
    import torch

    from pickloop.settings import get_settings

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = config_from_args(DDPOConfig, args)
    if args.labels < 2 or not 2 <= args.candidates <= 4 or args.prompts < 2:
        raise UserError("need --labels >= 2, --candidates 2-4 and --prompts >= 2")
    if args.home and Path(args.home).exists() and any(Path(args.home).iterdir()):
        raise UserError(f"{args.home} is not empty: --home needs a new or empty folder")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    plot = Path(args.plot) if args.plot else get_settings().reports_dir / f"ddpo-curve-{stamp}.png"
    print(f"ddpo curve: taste {args.taste}, {args.labels} labels of {args.candidates} candidates on {args.prompts} "
          f"prompts; DDPO {config.epochs} epochs x {config.sample_batches_per_epoch * config.sample_batch_size} "
          f"images, {config.steps} steps, lr {config.lr}, clip_range {config.clip_range}, inner_epochs "
          f"{config.inner_epochs}, timestep_fraction {config.timestep_fraction}; drift guard "
          f"{'measuring only' if config.drift_max_pixel is None and config.drift_max_follow_drop is None else 'on'}",
          flush=True)
    t0 = time.perf_counter()
    folder = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="pickloop-ddpo-curve-"))
    try:
        rows, rmetrics = run_curve(folder, config, taste=args.taste, labels=args.labels, candidates=args.candidates,
                            prompts=args.prompts, progress=not args.quiet)
    finally:
        if not args.home:
            shutil.rmtree(folder, ignore_errors=True)
    wall = time.perf_counter() - t0
    if len(rows) < 2:
        raise UserError(f"only {len(rows)} DDPO epoch(s) ran: a curve needs two (more --epochs, or the drift "
                        "guard stopped the run)")
    fig = curve_figures([r["reward_mean"] for r in rows])
    taste = curve_figures([r["taste_mean"] for r in rows])
    save_curve_plot(rows, plot, f"DDPO vs a reward model of taste '{args.taste}' ({args.labels} labels)")
    for key in ("reward_mean", "taste_mean"):
        print(f"{key.split('_')[0]}s=" + ",".join(f"{r[key]:.4f}" for r in rows))
    print(f"plot: {plot.resolve()}")
    last = {k: "n/a" if rows[-1][k] is None else f"{rows[-1][k]:.4f}" for k in ("drift_pixel", "follow_drop")}
    print(f"reward_first={fig['first']:.4f} reward_last={fig['last']:.4f} rise={fig['rise']:.4f} "
          f"slope={fig['slope']:.4f} noise={fig['noise']:.4f} taste_first={taste['first']:.4f} "
          f"taste_last={taste['last']:.4f} drift={last['drift_pixel']} follow_drop={last['follow_drop']} "
          f"reward_acc={rmetrics.get('heldout_acc', float('nan')):.4f} epochs={len(rows)} wall_s={wall:.1f}")
    return 0

"""``pickloop bench loop`` and ``pickloop demo``."""
from __future__ import annotations

import time

from pickloop.config_base import add_flags, config_from_args
from pickloop.errors import UserError
from pickloop.loop.config import LoopConfig

DEMO = dict(taste="large", labels=80, rounds=2, train_prompts=20, eval_prompts=8, eval_seeds=4, gate_seeds=2,
            dpo_steps=300, dpo_ai_feedback_sets=0, ddpo_epochs=4)


def _config(args) -> LoopConfig:  # noqa: ANN001
    return config_from_args(LoopConfig, args)


def _loop_ctx(args, stamp: str):  # noqa: ANN001, ANN202 - a Context
    """The configured data home with ``--in-place``, else a fresh one under ``<home>/loops/<stamp>``, so a
    measurement never mixes with real labels."""
    from pickloop.context import Context
    from pickloop.settings import get_settings

    if args.in_place:
        return Context()
    run_home = get_settings().home / "loops" / stamp
    ctx = Context(settings=get_settings(home=run_home, database_url=f"sqlite:///{(run_home / 'pickloop.db').resolve()}",
                                        image_store_url=str((run_home / "images").resolve())))
    print(f"loop data home: {run_home.resolve()}")
    return ctx


def _run(args, *, demo: bool) -> None:  # noqa: ANN001
    config = _config(args)  # a bad setting or taste is refused before torch and the models load

    from pickloop.loop.report import write_report
    from pickloop.loop.run import run_loop
    from pickloop.settings import get_settings

    home = get_settings()
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{config.taste.replace('/', '_').replace(':', '_')}"
    ctx = _loop_ctx(args, stamp)
    result = run_loop(ctx=ctx, config=config, progress=not args.quiet)
    report = write_report(result, home.reports_dir / f"loop-{stamp}")
    print(f"report: {report.resolve()}")
    if demo:
        print("Rate by hand: `pickloop raters add YOU --admin`, then `pickloop app` and open http://127.0.0.1:8501")
    s = result.summary
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


def _run_audiences(args) -> None:  # noqa: ANN001
    from pickloop.loop.audience_bench import check_tastes, run_audience_bench

    config = _config(args)
    tastes = check_tastes([t.strip() for t in args.tastes.split(",") if t.strip()])  # before the models load
    ctx = _loop_ctx(args, f"{time.strftime('%Y%m%d-%H%M%S')}-audiences")
    result = run_audience_bench(ctx=ctx, config=config, tastes=tastes, progress=not args.quiet)
    print(result.last_line)


def register(sub, bench_sub) -> None:  # noqa: ANN001
    p = bench_sub.add_parser("audiences", help="two simulated raters of opposite tastes in one store: a version "
                                               "for each against the shared one, by each rater's own win rate",
                             description="Each round the raters answer half the sets each; the reward model and "
                                         "`finetune run` (its defaults, --method auto) run for each rater's audience "
                                         "and for everyone. Last line: win_a_own= win_b_own= win_a_shared= "
                                         "win_b_shared= max_follow_drop= wall_s= cpu_s=")
    add_flags(p, LoopConfig, skip=("taste", "method"))
    p.add_argument("--tastes", default="large,small", help="the two raters' tastes, a then b (default large,small)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--in-place", action="store_true", help="run in the configured data home, not a fresh one")
    p.set_defaults(func=_run_audiences)
    p = bench_sub.add_parser("loop", help="the closed loop with a simulated rater: win rate vs base")
    add_flags(p, LoopConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--in-place", action="store_true", help="run in the configured data home, not a fresh one")
    p.set_defaults(func=lambda a: _run(a, demo=False))
    p = sub.add_parser("demo", help="a quick tour of the whole loop on the embedded model (<10 min)")
    add_flags(p, LoopConfig, DEMO)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--in-place", action="store_true", help="run in the configured data home, not a fresh one")
    p.set_defaults(func=lambda a: _run(a, demo=True))
    p = bench_sub.add_parser("loop-suite", help="the loop's defaults on every registered taste and a careless "
                                                "rater, two runs side by side; one line per taste")
    p.add_argument("--labels", type=int, default=400, help="labels per run (default 400)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (default 2: one per core)")
    p.add_argument("--tastes", default=None, help="comma-separated suite entries (default: all)")
    p.add_argument("--loop-args", default="", help="extra `bench loop` flags for every run, e.g. \"--rounds 1\" "
                                                    "(the suite's figures are meant with none)")
    p.set_defaults(func=_run_suite)


def _run_suite(args) -> None:  # noqa: ANN001
    import shlex

    from pickloop.loop.suite import pick_entries, run_suite
    from pickloop.settings import get_settings

    if args.labels < 1:
        raise UserError("--labels must be >= 1")
    entries = pick_entries([t.strip() for t in args.tastes.split(",") if t.strip()] if args.tastes else None)
    try:
        extra = shlex.split(args.loop_args)
    except ValueError as e:
        raise UserError(f"--loop-args: {e}") from None
    folder = get_settings().home / "loops" / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"suite folder: {folder.resolve()}")
    run_suite(labels=args.labels, folder=folder, entries=entries, jobs=args.jobs, extra=extra)

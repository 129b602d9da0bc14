"""``pickloop app`` (the rating app and its queue worker) and ``pickloop bench app``."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pickloop.errors import UserError


def register(sub, bench_sub) -> None:  # noqa: ANN001
    p = sub.add_parser("app", help="start the rating app on 127.0.0.1 (and the queue worker)",
                       description="Run the Streamlit rating app. On a fresh data home it first does what "
                                   "`pickloop init` does. Unless --no-worker, `pickloop generate --watch` runs "
                                   "beside it and stops with it.")
    p.add_argument("--host", default=None, help="address to bind (default: setting app_host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: setting app_port, 8501)")
    p.add_argument("--no-worker", action="store_true", help="do not start the queue worker")
    p.set_defaults(func=cmd_app)

    b = bench_sub.add_parser("app", help="pick-to-next-set latency in a real browser (p50/p95, ms)",
                             description="Pre-fills a temporary data home with ready sets, starts the app and "
                                         "Chromium, signs in and times each pick until the next set is fully "
                                         "shown (all images decoded), and until the page counts it as saved. "
                                         "Last line: p50_ms=.. p95_ms=.. picks=..")
    b.add_argument("--picks", type=int, default=50, help="timed picks")
    b.add_argument("--warmup", type=int, default=3, help="untimed picks first")
    b.add_argument("--image-size", type=int, default=256, help="candidate image side, pixels")
    b.add_argument("--candidates", type=int, default=4, choices=(2, 3, 4), help="candidates per set")
    b.add_argument("--look-ms", type=int, default=300,
                   help="pause on each set before picking, ms (a rater looks before choosing)")
    b.set_defaults(func=cmd_bench_app)


def _check_address(host: str, port: int) -> None:
    if not host or any(c.isspace() for c in host):
        raise UserError(f"bad --host {host!r}")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be 1-65535, not {port}")


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"{name} did not stop in 15 s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait()


def _interrupt(signum, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def cmd_app(args: argparse.Namespace) -> int:
    from feedback_app.browser import streamlit_command
    from pickloop.bootstrap import describe, initialize_home
    from pickloop.context import Context

    ctx = Context()
    host = args.host or ctx.settings.app_host
    port = args.port or ctx.settings.app_port
    _check_address(host, port)
    print(describe(ctx, initialize_home(ctx)), flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {host}: raters on the network can reach the app; use HTTPS in front of it",
              file=sys.stderr)
    worker = None
    # SIGTERM (systemd, docker stop) takes the same path as Ctrl+C, so the worker is always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not args.no_worker:
            worker = subprocess.Popen([sys.executable, "-m", "pickloop", "generate", "--watch"])
            print(f"queue worker started (pid {worker.pid}): pickloop generate --watch")
        print(f"rating app on http://{host}:{port}")
        app = subprocess.Popen(streamlit_command(host=host, port=port))
        try:
            while app.poll() is None:
                if worker is not None and worker.poll() is not None:
                    print(f"warning: queue worker exited with {worker.returncode}; new sets will not be drawn",
                          file=sys.stderr)
                    worker = None
                time.sleep(1.0)
            return app.returncode
        finally:
            _stop(app, "streamlit")
    except KeyboardInterrupt:
        return 130
    finally:
        _stop(worker, "queue worker")


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cmd_bench_app(args: argparse.Namespace) -> None:
    if args.picks < 1 or args.warmup < 0:
        raise UserError("--picks must be >= 1 and --warmup >= 0")
    from tqdm import tqdm

    from feedback_app import browser
    from feedback_app.ready_sets import make_ready_sets
    from pickloop.context import Context
    from sqlmodel import select

    from pickloop.db import read_session, write_session
    from pickloop.schema import Judgement
    from pickloop.settings import get_settings
    from pickloop.store import add_rater

    with tempfile.TemporaryDirectory(prefix="pickloop-bench-app-") as tmp:
        home = Path(tmp) / "home"
        ctx = Context(get_settings(home=home, database_url=None, image_store_url=None,
                                   candidates_per_set=args.candidates))
        total = args.picks + args.warmup
        print(f"pre-filling {total + 5} ready sets of {args.candidates} images ({args.image_size} px) in {home}")
        make_ready_sets(ctx=ctx, n=total + 5, size=args.image_size)
        with write_session(ctx.engine) as s:
            _, token = add_rater(session=s, name="bench")
        times: list[float] = []
        saved: list[float] = []
        with browser.app_server(home=home) as url, browser.chromium_page() as page:
            browser.sign_in(page, url, name="bench", token=token)
            key = browser.wait_for_set(page, None, n=args.candidates)
            browser.focus_page(page)
            for i in tqdm(range(total), desc="picks", file=sys.stdout):
                time.sleep(args.look_ms / 1000)
                t0 = time.perf_counter()
                page.keyboard.press(str(i % args.candidates + 1))
                key = browser.wait_for_set(page, key, n=args.candidates)
                shown = time.perf_counter()
                browser.wait_for_labels(page, i + 1)  # the server has recorded it (the counter says so)
                if i >= args.warmup:
                    times.append((shown - t0) * 1000)
                    saved.append((time.perf_counter() - t0) * 1000)
        with read_session(ctx.engine) as s:
            recorded = len(s.exec(select(Judgement)).all())
    if recorded != total:
        raise UserError(f"{total} picks made but {recorded} judgements recorded")
    print(f"pick to answer saved and counted on the page: p50 {percentile(saved, 50):.0f} ms, "
          f"p95 {percentile(saved, 95):.0f} ms; {recorded} judgements recorded for {total} picks")
    print(f"p50_ms={percentile(times, 50):.0f} p95_ms={percentile(times, 95):.0f} picks={len(times)}")

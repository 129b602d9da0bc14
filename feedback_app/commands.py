"""``pickloop app`` (the rating app and its queue worker), ``pickloop bench app|history|create``."""
from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

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

    b = bench_sub.add_parser("app", help="the rating page with the real worker and a steady rater, in Chromium",
                             description="A fresh data home, the queue worker and the app started together, one "
                                         "LoRA training job on the same cores, and a scripted rater in Chromium "
                                         "answering at a steady rate. Last line: p50_ms p95_ms max_ms (answer to "
                                         "next set fully shown) waits (answers after which the next set was not "
                                         "already in the browser) first_set_s picks.")
    b.add_argument("--answers", type=int, default=200, help="answers the rater gives")
    b.add_argument("--rate", type=float, default=1.0, help="answers a second")
    b.add_argument("--candidates", type=int, default=4, choices=(2, 3, 4), help="candidates per set")
    b.add_argument("--finetune-jobs", type=int, default=1,
                   help="LoRA training jobs (`pickloop bench dpo`) running on the same cores meanwhile")
    b.add_argument("--pre-drawn", type=int, default=0,
                   help="write this many ready sets first and start no worker (the page alone)")
    b.add_argument("--image-size", type=int, default=256, help="image side of pre-drawn sets, pixels")
    b.add_argument("--cold", action="store_true",
                   help="the home gets no first sets when made (as `pickloop app` on a home `pickloop init` "
                        "never saw): the first set waits for the worker's model to load")
    b.set_defaults(func=cmd_bench_app)
    c = bench_sub.add_parser("create", help="time of the Create page's answer: N candidates by the shipped model",
                             description="A fresh data home with the shipped model promoted; each run asks for "
                                         "candidates for a new prompt as the Create page does (check, draw, store, "
                                         "the PNGs with their text chunks). Last line: p50_ms p95_ms candidates.")
    c.add_argument("--runs", type=int, default=30, help="prompts timed after the first (which loads the model)")
    c.add_argument("--candidates", type=int, default=4, choices=(2, 3, 4), help="candidates per request")
    c.add_argument("--threads", type=int, default=1, help="torch threads the drawing uses (0: torch's default)")
    c.add_argument("--browser", action="store_true",
                   help="time it in Chromium against the app: Enter in the prompt box to every candidate decoded")
    c.set_defaults(func=cmd_bench_create)
    h = bench_sub.add_parser("history", help="time of the History page's first page for a rater with many answers",
                             description="Last line: first_page_ms (cold: thumbnails made) warm_ms answers shown.")
    h.add_argument("--answers", type=int, default=1000, help="answers the rater has given")
    h.set_defaults(func=cmd_bench_history)


def _check_address(host: str, port: int) -> None:
    if not host or any(c.isspace() for c in host):
        raise UserError(f"bad --host {host!r}")
    if not 1 <= port <= 65535:
        raise UserError(f"--port must be 1-65535, not {port}")


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    from feedback_app.browser import stop_process

    if not stop_process(proc):
        print(f"{name} did not stop in 15 s; killed it", file=sys.stderr)


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
    ctx.engine  # noqa: B018 - migrate here, before the worker and the app open the database too
    worker = None
    # SIGTERM (systemd, docker stop) takes the same path as Ctrl+C, so the worker is always stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not args.no_worker:
            # First, so that its model loads while the home is set up and Streamlit starts: on a fresh
            # home the first set is drawn by the time a rater has signed in.
            worker = subprocess.Popen([sys.executable, "-m", "pickloop", "generate", "--watch", "--quiet"])
            print(f"queue worker started (pid {worker.pid}): pickloop generate --watch")
        print(describe(ctx, initialize_home(ctx)), flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: binding {host}: raters on the network can reach the app; use HTTPS in front of it",
                  file=sys.stderr)
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


def cmd_bench_app(args: argparse.Namespace) -> None:
    from feedback_app.bench import cmd_bench_app as run

    run(args)


def cmd_bench_history(args: argparse.Namespace) -> None:
    from feedback_app.bench import cmd_bench_history as run

    run(args)


def cmd_bench_create(args: argparse.Namespace) -> None:
    from feedback_app.bench import cmd_bench_create as run

    run(args)

"""``pickloop bench app``: the rating page as a fast rater lives with it, in Chromium.

A fresh data home (starter prompts, the shipped model, no sets), the queue worker (``pickloop
generate --watch``) and the app started together as ``pickloop app`` starts them, and by default one
LoRA training job (``pickloop bench dpo``) on the same cores. A scripted rater signs in and answers
at a steady rate. Figures, each taken in the page (``performance.now()``):

- answer -> next set fully shown (every image decoded): p50 / p95 / max, ms;
- ``waits``: answers after which the next set was not already held, decoded, in the browser;
- ``first_set_s``: from starting the worker and the app to the first set fully shown (sign-in included),
  with the rater's browser already open (as a rater's is: Chromium starts before the clock does), on a
  home made as ``pickloop init`` makes it (which draws the first sets; ``--cold``: it does not, so the
  first set waits for the worker's model to load);
- ``picks``: answers given; each must be stored exactly once.

``--pre-drawn N`` writes N ready sets first and starts no worker (the old figure: the page alone).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from feedback_app import browser
from pickloop.errors import UserError

# Sets the panel holds hidden after the one on screen, with every image decoded.
AHEAD_JS = """() => [...document.querySelectorAll('.pl-set[hidden]')]
  .filter(s => [...s.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0)).length"""
# Records when each key reaches the page (before the panel's own handler: window, capture phase).
KEY_CLOCK_JS = """() => { if (!window.__benchKeys) { window.__benchKeys = true;
  window.addEventListener('keydown', () => { window.__keyAt = performance.now(); }, true); } }"""
# Records, in the page, each set that comes on screen fully shown (every image decoded): its key and
# the time from the last key to the frame that shows it. Driven by DOM mutations and image loads, not
# by polling every frame: a page polled on every frame keeps Chromium drawing frames the whole time the
# rater waits, which takes CPU from the worker the rater is waiting for.
SWAP_WATCH_JS = """(n) => { if (window.__benchSwaps) return; window.__benchSwaps = [];
  const first = document.querySelector('.pl-set:not([hidden])');
  let last = first ? first.dataset.key : null;
  const check = () => {
    const set = document.querySelector('.pl-set:not([hidden])');
    if (!set || set.dataset.key === last) return;
    const imgs = [...set.querySelectorAll('img')];
    if (imgs.length !== n) return;
    const pending = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
    if (pending.length) { pending.forEach(i => i.addEventListener('load', check, {once: true})); return; }
    last = set.dataset.key;
    const key = last;
    requestAnimationFrame(() => window.__benchSwaps.push({ key, ms: performance.now() - window.__keyAt }));
  };
  new MutationObserver(check).observe(document.body,
    { subtree: true, childList: true, attributes: true, attributeFilter: ['hidden', 'src'] });
}"""
SWAPS_JS = "(i) => window.__benchSwaps.length > i ? window.__benchSwaps[i] : null"
POLL_MS = 50  # how often Python looks at what the page recorded (the figures are the page's own)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q / 100
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class BenchResult:
    latencies_ms: list[float]
    waits: int
    first_set_s: float
    picks: int
    recorded: int
    init_s: float  # drawing the first sets when the home was made (``pickloop init``), seconds
    start_s: dict[str, float] = field(default_factory=dict)  # the start-up's steps, seconds from the start
    waited: list[int] = field(default_factory=list)  # the answers (1-based) after which the rater waited


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PICKLOOP_DATABASE_URL", "PICKLOOP_IMAGE_STORE_URL", "PICKLOOP_CONFIG")}
    env.update(PICKLOOP_HOME=str(home), OMP_NUM_THREADS="1")
    return env


def _start(args: list[str], home: Path, log_name: str) -> subprocess.Popen:
    log = open(home / log_name, "ab")  # the child keeps it; closed when the bench ends
    return subprocess.Popen([sys.executable, "-m", "pickloop", *args], env=_env(home), stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(home))


def run_app_bench(*, answers: int, rate: float, candidates: int, pre_drawn: int, finetune_jobs: int,
                  first_sets: int | None = None, image_size: int = 256, progress: bool = True) -> BenchResult:
    """``first_sets``: drawn when the home is made, as ``pickloop init`` does (None: its default,
    settings.first_sets; 0: none)."""
    from sqlmodel import func, select
    from tqdm import tqdm

    from feedback_app.ready_sets import make_ready_sets
    from pickloop.bootstrap import initialize_home
    from pickloop.context import Context
    from pickloop.db import read_session, write_session
    from pickloop.schema import Judgement, utcnow
    from pickloop.settings import get_settings
    from pickloop.store import add_rater

    with tempfile.TemporaryDirectory(prefix="pickloop-bench-app-") as tmp:
        home = Path(tmp) / "home"
        ctx = Context(get_settings(home=home, database_url=None, image_store_url=None,
                                   candidates_per_set=candidates))
        initialize_home(ctx, first_admin=False, prompts=pre_drawn == 0)
        init_s = 0.0
        first_sets = ctx.settings.first_sets if first_sets is None else first_sets
        if not pre_drawn and first_sets:
            from generator import draw_first_sets

            t = time.perf_counter()
            draw_first_sets(ctx, first_sets)  # as `pickloop init` (and so `make app`) does
            init_s = time.perf_counter() - t
        if pre_drawn:
            print(f"pre-drawing {pre_drawn} ready sets ({image_size} px) in {home}; no worker", flush=True)
            make_ready_sets(ctx=ctx, n=pre_drawn, size=image_size)
        with write_session(ctx.engine) as s:
            rater, token = add_rater(session=s, name="bench")
            rater.guide_seen_at = utcnow()  # a rater who has read the guide: it does not cover the page
            s.add(rater)
        os.environ["PICKLOOP_CANDIDATES_PER_SET"] = str(candidates)  # the worker and the app inherit it
        jobs = [_start(["bench", "dpo", "--steps", "1000000"], home, f"finetune-{i}.log")
                for i in range(finetune_jobs)]
        worker = None
        latencies: list[float] = []
        waited: list[int] = []
        steps: dict[str, float] = {}
        try:
            # The rater's browser is open before the app starts, as a rater's browser is.
            with browser.chromium_page() as page:
                if jobs:
                    time.sleep(5.0)  # let the training job get past its start-up, so that it really shares the cores
                t0 = time.perf_counter()
                if not pre_drawn:
                    worker = _start(["generate", "--watch", "--quiet"], home, "worker.log")
                with browser.app_server(home=home) as url:
                    steps["app_up"] = time.perf_counter() - t0
                    browser.sign_in(page, url, name="bench", token=token,
                                    on_form=lambda: steps.__setitem__("sign_in_page", time.perf_counter() - t0))
                    browser.wait_for_set(page, None, n=candidates, timeout_ms=120_000, polling=POLL_MS)
                    first_set_s = time.perf_counter() - t0
                    page.evaluate(KEY_CLOCK_JS)
                    page.evaluate(SWAP_WATCH_JS, candidates)
                    browser.focus_page(page)
                    due = time.perf_counter()
                    for i in tqdm(range(answers), desc="answers", file=sys.stdout, disable=not progress):
                        due += 1.0 / rate
                        time.sleep(max(0.0, due - time.perf_counter()))
                        if page.evaluate(AHEAD_JS) == 0:
                            waited.append(i + 1)
                        page.keyboard.press(str(i % candidates + 1))
                        if i == answers - 1:
                            break
                        try:
                            swap = page.wait_for_function(SWAPS_JS, arg=i, polling=POLL_MS,
                                                          timeout=120_000).json_value()
                        except Exception:
                            print("no next set within 120 s; the panel holds:", browser.panel_state(page))
                            raise
                        latencies.append(float(swap["ms"]))
                        due = max(due, time.perf_counter())  # a rater who had to wait starts the next second now
                    browser.wait_for_labels(page, answers, timeout_ms=120_000)
        finally:
            browser.stop_process(worker)
            for job in jobs:
                browser.stop_process(job)
        with read_session(ctx.engine) as s:
            recorded = s.exec(select(func.count()).select_from(Judgement)).one()
    return BenchResult(latencies, len(waited), first_set_s, answers, recorded, init_s, steps, waited)


def _ranges(xs: list[int]) -> str:
    """1,2,3,7,9,10 -> '1-3,7,9-10'."""
    out: list[str] = []
    for x in xs:
        if out and int(out[-1].split("-")[-1]) == x - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{x}"
        else:
            out.append(str(x))
    return ",".join(out)


def cmd_bench_app(args) -> None:  # noqa: ANN001
    if args.answers < 2 or args.rate <= 0 or args.pre_drawn < 0 or args.finetune_jobs < 0:
        raise UserError("--answers must be >= 2, --rate > 0, --pre-drawn and --finetune-jobs >= 0")
    if args.pre_drawn and args.pre_drawn < args.answers:
        raise UserError("--pre-drawn must be at least --answers (there is no worker to draw more)")
    r = run_app_bench(answers=args.answers, rate=args.rate, candidates=args.candidates, pre_drawn=args.pre_drawn,
                      finetune_jobs=args.finetune_jobs, first_sets=0 if args.cold else None, image_size=args.image_size)
    if r.recorded != r.picks:
        raise UserError(f"{r.picks} answers given but {r.recorded} judgements recorded")
    xs = r.latencies_ms
    print(f"{'pre-drawn sets, no worker' if args.pre_drawn else 'real worker, shipped model'}; "
          f"{args.finetune_jobs} training job(s) on the same cores; {args.rate:g} answers/s; "
          f"{r.recorded} judgements recorded for {r.picks} answers; "
          + ("home made cold (no first sets)" if args.cold or args.pre_drawn else
             f"first sets drawn when the home was made in {r.init_s:.1f} s"))
    print(f"start: app answering {r.start_s['app_up']:.1f} s, sign-in page {r.start_s['sign_in_page']:.1f} s, "
          f"first set {r.first_set_s:.1f} s after the app and worker started (browser already open); "
          f"waited after answers {_ranges(r.waited) or 'none'}")
    print(f"p50_ms={percentile(xs, 50):.0f} p95_ms={percentile(xs, 95):.0f} max_ms={max(xs):.0f} "
          f"waits={r.waits} first_set_s={r.first_set_s:.1f} picks={r.picks}")


def cmd_bench_history(args) -> None:  # noqa: ANN001
    """The History page's first page for a rater with ``--answers`` answers, rendered by Streamlit's
    AppTest (the page script, its queries and thumbnails; no browser), cold and again warm."""
    from streamlit.testing.v1 import AppTest

    from feedback_app.logic import Identity
    from feedback_app.ready_sets import make_answered_sets
    from pickloop.context import Context
    from pickloop.db import write_session
    from pickloop.settings import get_settings
    from pickloop.store import add_rater

    with tempfile.TemporaryDirectory(prefix="pickloop-bench-history-") as tmp:
        home = Path(tmp) / "home"
        os.environ["PICKLOOP_HOME"] = str(home)  # the page reads its settings from the environment
        for k in ("PICKLOOP_DATABASE_URL", "PICKLOOP_IMAGE_STORE_URL", "PICKLOOP_CONFIG"):
            os.environ.pop(k, None)
        ctx = Context(get_settings())
        with write_session(ctx.engine) as s:
            rater, _ = add_rater(session=s, name="bench")
            ident = Identity(rater_id=rater.id, name=rater.name, role=rater.role, kind=rater.kind)
        make_answered_sets(ctx=ctx, rater_id=ident.rater_id, n=args.answers)
        times = []
        for _ in range(2):
            at = AppTest.from_file(str(Path(__file__).parent / "pages" / "history.py"), default_timeout=120)
            at.session_state["identity"] = ident
            t = time.perf_counter()
            at.run()
            times.append((time.perf_counter() - t) * 1000)
            if at.exception:
                raise UserError(f"the History page failed: {at.exception[0].message}")
        shown = sum(h.proto.body.count('class="pl-hist-item"') for h in at.get("html"))
    print(f"first_page_ms={times[0]:.0f} warm_ms={times[1]:.0f} answers={args.answers} shown={shown}")


# ---------------------------------------------------------------- pickloop bench create

# Records when Enter reaches the page (before the panel's own handler: window, capture phase).
ENTER_CLOCK_JS = """() => { if (!window.__benchEnter) { window.__benchEnter = true;
  window.addEventListener('keydown', (e) => { if (e.key === 'Enter') window.__enterAt = performance.now(); },
                          true); } }"""


def _create_home(home: Path, candidates: int, threads: int):  # noqa: ANN202
    """A fresh home with the shipped model as its promoted version and one rater; (ctx, identity, token)."""
    from feedback_app.logic import identity_of
    from pickloop.bootstrap import initialize_home
    from pickloop.context import Context
    from pickloop.db import write_session
    from pickloop.schema import utcnow
    from pickloop.settings import get_settings
    from pickloop.store import add_rater

    ctx = Context(get_settings(home=home, database_url=None, image_store_url=None, create_candidates=candidates,
                               create_threads=threads))
    initialize_home(ctx, first_admin=False, prompts=False)
    with write_session(ctx.engine) as s:
        rater, token = add_rater(session=s, name="bench")
        rater.guide_seen_at = utcnow()
        s.add(rater)
        return ctx, identity_of(rater), token


def run_create_bench(*, runs: int, candidates: int, threads: int) -> tuple[list[float], float]:
    """Each run is what the server does for one Create request: check the prompt, draw the candidates with
    the promoted version (the shipped model, its own steps and size), store images and rows, and make the
    PNGs the page gets (text chunks included). Returns (ms per run, seconds of the first: the model's load)."""
    from feedback_app.create import create_offer
    from feedback_app.create_panel import CreatePanel
    from pickloop.shapes.world import prompt_pool

    with tempfile.TemporaryDirectory(prefix="pickloop-bench-create-") as tmp:
        ctx, ident, _ = _create_home(Path(tmp) / "home", candidates, threads)
        times = []
        for i, text in enumerate(prompt_pool("train", n=runs + 1)):
            t = time.perf_counter()
            panel = CreatePanel()
            panel.show(create_offer(ctx, identity=ident, text=text, request_id=f"bench-{i}"))
            panel.data(ctx.images.read_bytes, None, None)
            times.append(time.perf_counter() - t)
    return [1000 * x for x in times[1:]], times[0]


def run_create_browser_bench(*, runs: int, candidates: int, threads: int) -> tuple[list[float], float]:
    """The same requests made in Chromium against ``streamlit run`` as a rater makes them: Enter in the
    prompt box, then (once the candidates are shown) 1 to keep the first, which downloads, and the next
    prompt once the keep is acknowledged. Timed in the page, Enter to every candidate decoded. Returns
    (ms per run, seconds of the first)."""
    from pickloop.shapes.world import prompt_pool

    with tempfile.TemporaryDirectory(prefix="pickloop-bench-create-") as tmp:
        home = Path(tmp) / "home"
        _, _, token = _create_home(home, candidates, threads)
        os.environ.update(PICKLOOP_CREATE_CANDIDATES=str(candidates), PICKLOOP_CREATE_THREADS=str(threads))
        prompts = prompt_pool("train", n=runs + 1)
        with browser.app_server(home=home) as url, browser.chromium_page() as page:
            browser.sign_in(page, url, name="bench", token=token)
            page.goto(url + "/create")
            page.evaluate(ENTER_CLOCK_JS)
            t = time.perf_counter()
            key = browser.create(page, prompts[0], n=candidates)
            first_s = time.perf_counter() - t
            times = []
            for text in prompts[1:]:
                with page.expect_download():
                    page.keyboard.press("1")
                browser.wait_for_create_acknowledged(page)
                box = page.get_by_label("Prompt")
                box.fill(text)
                box.press("Enter")
                try:
                    swap = page.wait_for_function(browser.CREATE_SHOWN_JS, arg=[key, candidates], polling="raf",
                                                  timeout=60_000).json_value()
                except Exception:
                    print("no candidates within 60 s; the panel holds:", page.evaluate(browser.CREATE_STATE_JS))
                    raise
                key = swap["key"]
                times.append(float(swap["at"]) - float(page.evaluate("window.__enterAt")))
    return times, first_s


def cmd_bench_create(args) -> None:  # noqa: ANN001
    if args.runs < 2 or args.threads < 0:
        raise UserError("--runs must be >= 2 and --threads >= 0")
    bench = run_create_browser_bench if args.browser else run_create_bench
    xs, first_s = bench(runs=args.runs, candidates=args.candidates, threads=args.threads)
    what = "Enter to every candidate decoded in Chromium" if args.browser else "the server's work for one request"
    print(f"shipped model, promoted version; {args.runs} prompts; {what}; torch threads "
          f"{args.threads or 'default'}; the first request (model load included) took {first_s:.1f} s; "
          f"max {max(xs):.0f} ms")
    print(f"p50_ms={percentile(xs, 50):.0f} p95_ms={percentile(xs, 95):.0f} candidates={args.candidates}")

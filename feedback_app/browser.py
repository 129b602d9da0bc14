"""Drive the real app in a real browser: a ``streamlit run`` server on a loopback port and Debian's
Chromium through Playwright. Used by ``pickloop bench app`` and the browser test.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from pickloop.errors import UserError

APP_PATH = Path(__file__).with_name("app.py")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# A set is "fully shown" when the rating panel shows a new set and every one of its candidate images
# has decoded (checked on each animation frame).
SET_SHOWN_JS = """([oldKey, n]) => {
  const set = document.querySelector('.pl-set:not([hidden])');
  if (!set || set.dataset.key === oldKey) return null;
  const imgs = [...set.querySelectorAll('img')];
  if (imgs.length !== n || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
  return set.dataset.key;
}"""
# The "labels today" counter has reached n: the server has recorded n answers and shown so.
LABELS_JS = """(n) => [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
  .some(e => { const m = e.innerText.match(/^(\\d+) labels today/); return m && Number(m[1]) >= n; })"""



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def streamlit_command(*, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line for the app (through ``feedback_app.serve``, which warms the
    app up while the server starts): headless, no usage statistics, no file watcher, no full garbage
    collection after every script run."""
    return [sys.executable, "-m", "feedback_app.serve", "run", str(APP_PATH),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--server.runOnSave", "false", "--runner.postScriptGC", "false", "--client.toolbarMode", "minimal",
            "--global.developmentMode", "false"]


@contextlib.contextmanager
def app_server(*, home: Path, port: int | None = None, timeout_s: float = 60.0,
               log_path: Path | None = None) -> Iterator[str]:
    """Run the app against data home ``home`` on a free loopback port; yields its URL, stops it after."""
    port = port or free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PICKLOOP_DATABASE_URL", "PICKLOOP_IMAGE_STORE_URL", "PICKLOOP_CONFIG")}
    env.update(PICKLOOP_HOME=str(home), OMP_NUM_THREADS="1")
    log = open(log_path or Path(home) / "streamlit.log", "ab")  # closed below
    proc = subprocess.Popen(streamlit_command(host="127.0.0.1", port=port), env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(Path(home)))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {timeout_s:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        stop_process(proc)
        log.close()


def stop_process(proc: subprocess.Popen | None, *, timeout_s: float = 15.0) -> bool:
    """Terminate a child process, killing it if it has not stopped within ``timeout_s``; False if killed."""
    if proc is None or proc.poll() is not None:
        return True
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


@contextlib.contextmanager
def chromium_page(*, width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright page in Debian's Chromium (``playwright install`` is not needed)."""
    from playwright.sync_api import sync_playwright

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise UserError("chromium not found: apt-get install -y chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": width, "height": height}).new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            browser.close()


def sign_in(page, url: str, *, name: str, token: str, on_form: Callable[[], None] | None = None) -> None:  # noqa: ANN001
    """Sign in through the form and wait for the Rate page; ``on_form`` is called when the form is shown."""
    page.goto(url)
    page.get_by_label("Rater name").wait_for()
    if on_form is not None:
        on_form()
    page.get_by_label("Rater name").fill(name)
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text("labels today").wait_for()


# What the rating panel holds, for the message of a wait that timed out.
PANEL_STATE_JS = """() => { const p = window.__pickloopPanel; if (!p) return 'no panel';
  return JSON.stringify({shown: p.shown, sets: p.sets.map(s => s.token), srcs: [...p.srcs.keys()],
    answered: [...p.answered], outbox: p.outbox.map(a => [a.token, a.choice]), undone: p.undone && p.undone.set.token,
    queue: p.queueNow.map(s => s.token), waiting: p.waiting.hidden ? '' : p.waiting.textContent,
    status: p.status.textContent, overlay: Boolean(p.overlay),
    focus: document.activeElement && document.activeElement.tagName}); }"""


def panel_state(page) -> str:  # noqa: ANN001
    """The rating panel's state as one line of JSON (for messages when a wait fails)."""
    try:
        return str(page.evaluate(PANEL_STATE_JS))
    except Exception as e:  # noqa: BLE001 - only for a message
        return f"(panel state unreadable: {e})"


def wait_for_set(page, old_key: str | None, *, n: int, timeout_ms: float = 30_000,  # noqa: ANN001
                 polling: str | int = "raf") -> str:
    """Wait until a set other than ``old_key`` is fully shown (all ``n`` images loaded); its key.
    ``polling``: "raf" (every frame) or every so many ms. A timeout names what the panel held, so
    that a failure says why."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        handle = page.wait_for_function(SET_SHOWN_JS, arg=[old_key or "", n], polling=polling, timeout=timeout_ms)
    except PlaywrightTimeout as e:
        raise AssertionError(f"no set after {old_key!r} within {timeout_ms / 1000:g} s; "
                             f"panel: {panel_state(page)}") from e
    return handle.json_value()


def wait_for_labels(page, n: int, *, timeout_ms: float = 30_000) -> None:  # noqa: ANN001
    """Wait until the page's "labels today" counter reads at least ``n`` (the answers are saved)."""
    page.wait_for_function(LABELS_JS, arg=n, polling="raf", timeout=timeout_ms)


def wait_for_acknowledged(page, *, timeout_ms: float = 30_000) -> None:  # noqa: ANN001
    """Wait until the server has acknowledged every answer (and undo) the panel sent: its outbox is empty."""
    page.wait_for_function("() => window.__pickloopPanel && window.__pickloopPanel.outbox.length === 0",
                           polling="raf", timeout=timeout_ms)


def visible_set(page):  # noqa: ANN001, ANN201
    """The rating panel's set on screen (a Playwright locator)."""
    return page.locator(".pl-set:not([hidden])")


def focus_page(page) -> None:  # noqa: ANN001
    """Move keyboard focus to the page body so hotkeys reach Streamlit, not a text field."""
    page.evaluate("() => { if (document.activeElement) document.activeElement.blur(); }")


# The Create panel shows a set other than oldKey with all n images decoded: its key, and the page's clock
# then (performance.now(), ms; `bench create` times the answer with it).
CREATE_SHOWN_JS = """([oldKey, n]) => {
  const set = document.querySelector('.pc-set:not([hidden])');
  if (!set || !set.dataset.key || set.dataset.key === oldKey) return null;
  const imgs = [...set.querySelectorAll('img')];
  if (imgs.length !== n || !imgs.every(i => i.complete && i.naturalWidth > 0)) return null;
  return { key: set.dataset.key, at: performance.now() };
}"""
CREATE_STATE_JS = """() => { const p = window.__pickloopCreate; if (!p) return 'no Create panel';
  return JSON.stringify({set: p.set && p.set.token, srcs: [...p.srcs.keys()], answer: p.answer, pending: p.pending,
    outbox: p.outbox.map(a => [a.token, a.choice]), status: p.status.textContent}); }"""


def create(page, prompt: str, *, n: int, old_key: str | None = None, timeout_ms: float = 120_000) -> str:  # noqa: ANN001
    """On the Create page: type ``prompt``, press Enter, wait until its ``n`` candidates are shown; the set's key."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_label("Prompt")
    box.fill(prompt)
    box.press("Enter")
    try:
        handle = page.wait_for_function(CREATE_SHOWN_JS, arg=[old_key or "", n], polling="raf", timeout=timeout_ms)
    except PlaywrightTimeout as e:
        state = page.evaluate(CREATE_STATE_JS)
        raise AssertionError(f"no candidates within {timeout_ms / 1000:g} s; panel: {state}") from e
    return handle.json_value()["key"]


def wait_for_create_acknowledged(page, *, timeout_ms: float = 30_000) -> None:  # noqa: ANN001
    """Wait until the server has acknowledged every answer (and undo) the Create panel sent."""
    page.wait_for_function("() => window.__pickloopCreate && window.__pickloopCreate.outbox.length === 0",
                           polling="raf", timeout=timeout_ms)

"""`pickloop app` starts a working app on a fresh data home; bad flags are one line; bench figures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from feedback_app.browser import free_port
from feedback_app.bench import _ranges, percentile
from pickloop.context import Context
from pickloop.db import read_session
from pickloop.store import list_prompts, promoted_version


def pickloop(*args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pickloop", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_app_initializes_a_fresh_home_and_serves(home, tmp_path):
    port = free_port()
    env = {**os.environ, "PICKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = pickloop("app", "--no-worker", "--port", str(port), env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "app did not come up"
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert f"rating app on http://127.0.0.1:{port}" in out
    with read_session(Context().engine) as s:
        assert promoted_version(session=s) is not None
        assert len(list_prompts(session=s)) == 200  # the starter pool: no other step needed
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)


def test_bad_port_is_one_clear_line(home):
    proc = pickloop("app", "--port", "70000", "--no-worker", env={**os.environ, "PICKLOOP_HOME": str(home)})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip().count("\n") == 0 and "--port" in err


def test_percentile():
    assert percentile([5, 1, 3], 50) == 3
    assert percentile(list(range(101)), 95) == 95
    assert percentile([10.0], 95) == 10.0


def test_waits_are_listed_as_ranges():
    assert _ranges([1, 2, 3, 7, 9, 10]) == "1-3,7,9-10"
    assert _ranges([]) == "" and _ranges([4]) == "4"


@pytest.mark.slow
def test_bench_create_ends_with_its_figures(home):
    import re

    env = {**os.environ, "PICKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = pickloop("bench", "create", "--runs", "2", "--candidates", "2", env=env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert re.fullmatch(r"p50_ms=\d+ p95_ms=\d+ candidates=2", out.strip().splitlines()[-1])
    bad = pickloop("bench", "create", "--runs", "1", env=env)
    assert bad.communicate(timeout=60)[1].strip() == "pickloop: error: --runs must be >= 2 and --threads >= 0"
    assert bad.returncode == 2

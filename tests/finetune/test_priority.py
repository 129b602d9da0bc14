"""Fine-tuning processes lower their own CPU priority (settings.finetune_nice), so that the queue worker
and the app keep ahead of the raters while training shares the cores. Each case runs in a process of its
own: a nice value raised cannot be lowered again."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "nice"), reason="no nice values on this platform")

RUN = ("import os, sys; from pickloop.cli import main; "
       "rc = main(['finetune', 'run', '--min-new-labels', '5']); print(rc, os.nice(0))")


def _env(home, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLOOP_")}
    return {**env, "PICKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1", **extra}


def _run(code: str, env: dict[str, str], prefix: list[str] | None = None) -> list[str]:
    proc = subprocess.run([*(prefix or []), sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_finetune_run_lowers_its_priority_by_default(tmp_path):
    base = os.nice(0)
    out = _run(RUN, _env(tmp_path / "home"))
    assert out[-2:] == ["0", str(max(base, 10))]  # nothing to do (no labels), at nice 10


def test_finetune_nice_0_leaves_the_priority(tmp_path):
    out = _run(RUN, _env(tmp_path / "home", PICKLOOP_FINETUNE_NICE="0"))
    assert out[-1] == str(os.nice(0))


def test_a_nice_value_set_from_outside_is_never_lowered(tmp_path):
    code = "from finetune.priority import lower_priority; print(lower_priority(10))"
    assert _run(code, _env(tmp_path), prefix=["nice", "-n", "15"]) == [str(min(19, os.nice(0) + 15))]
    assert _run("from finetune.priority import lower_priority; print(lower_priority(3))", _env(tmp_path)) == [
        str(max(os.nice(0), 3))]

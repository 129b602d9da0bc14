"""``pickloop bench loop-suite``: the loop's defaults judged on every taste at once.

Each entry is one ``pickloop bench loop`` run with the defaults (``--taste`` and ``--labels`` only, plus
whatever the suite itself was given for all entries), in a data home of its own, as a subprocess; ``jobs``
run side by side (two on two cores). Entries: every registered taste, and a careless rater
(``large`` at temperature 0.2, four times the default noise). One line per entry, then
``min_win= mean_win= worst_taste= max_follow_drop= min_reward_acc= min_reward_taste_acc= wall_s=``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from pickloop.errors import UserError


@dataclass(frozen=True)
class Entry:
    name: str
    args: tuple[str, ...]  # flags of `pickloop bench loop` that make this entry (taste, rater)


def suite_entries() -> list[Entry]:
    from pickloop.shapes.tastes import TASTES

    entries = [Entry(name, ("--taste", name)) for name in sorted(TASTES)]
    return entries + [Entry("careless-large", ("--taste", "large", "--rater-temperature", "0.2"))]


def pick_entries(names: Sequence[str] | None) -> list[Entry]:
    entries = suite_entries()
    if not names:
        return entries
    known = {e.name: e for e in entries}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"unknown suite entr{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                        f"choose from {', '.join(known)}")
    return [known[n] for n in names]


def parse_figures(line: str) -> dict[str, str]:
    """``key=value key=value`` -> dict (the last line of every bench)."""
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def summarise(rows: dict[str, dict[str, str]], wall_s: float) -> dict[str, object]:
    """The suite's last line from each entry's figures (entries that failed count as a win rate of 0)."""
    def num(row: dict[str, str], key: str) -> float | None:
        try:
            return float(row[key])
        except (KeyError, ValueError):
            return None

    wins = {name: num(r, "win_rate") or 0.0 for name, r in rows.items()}
    drops = [num(r, "follow_base") - num(r, "follow_final") for r in rows.values()
             if num(r, "follow_base") is not None and num(r, "follow_final") is not None]
    accs = [a for a in (num(r, "reward_acc") for r in rows.values()) if a is not None]
    knows = [a for a in (num(r, "reward_taste_acc") for r in rows.values()) if a is not None]
    worst = min(wins, key=wins.get)
    return {"min_win": wins[worst], "mean_win": sum(wins.values()) / len(wins), "worst_taste": worst,
            "max_follow_drop": max(drops) if drops else float("nan"),
            "min_reward_acc": min(accs) if accs else float("nan"),
            "min_reward_taste_acc": min(knows) if knows else float("nan"), "wall_s": round(wall_s, 1)}


def format_figures(figures: dict[str, object]) -> str:
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())


def run_suite(*, labels: int, folder: Path, entries: Sequence[Entry], jobs: int = 2,
              extra: Sequence[str] = (), log: Callable[[str], None] = print) -> dict[str, object]:
    """Run ``entries`` (``jobs`` at a time), each in ``folder/<entry>`` with its own log; returns the summary."""
    if jobs < 1:
        raise UserError("--jobs must be >= 1")
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    waiting = list(entries)
    running: list[tuple[Entry, subprocess.Popen, Path, float]] = []
    rows: dict[str, dict[str, str]] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            e = waiting.pop(0)
            home = folder / e.name
            home.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "PICKLOOP_HOME": str(home), "OMP_NUM_THREADS": "1"}
            env.pop("PICKLOOP_DATABASE_URL", None)
            env.pop("PICKLOOP_IMAGE_STORE_URL", None)
            cmd = [sys.executable, "-m", "pickloop", "bench", "loop", *e.args, "--labels", str(labels), "--quiet",
                   "--in-place", *extra]
            out = (home / "loop.log").open("w")
            running.append((e, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env), home,
                            time.perf_counter()))
            log(f"started {e.name}: {' '.join(cmd[3:])} (log {home / 'loop.log'})")
        time.sleep(1.0)  # polling child processes, not synchronising with them
        for item in list(running):
            e, proc, home, started = item
            if proc.poll() is None:
                continue
            running.remove(item)
            lines = (home / "loop.log").read_text(errors="replace").strip().splitlines()
            figures = parse_figures(lines[-1]) if lines and proc.returncode == 0 else {}
            rows[e.name] = figures
            if "win_rate" in figures:
                log(f"taste={e.name} " + " ".join(f"{k}={v}" for k, v in figures.items()))
            else:
                log(f"taste={e.name} failed (exit {proc.returncode}): {lines[-1] if lines else 'no output'}")
    summary = summarise({e.name: rows[e.name] for e in entries}, time.perf_counter() - t0)
    log(format_figures(summary))
    return summary

"""``pickloop bench loop-suite``: every taste with the defaults, one line each, then the summary line."""
from __future__ import annotations

import pytest

from pickloop.cli import main
from pickloop.errors import UserError
from pickloop.loop.suite import parse_figures, pick_entries, suite_entries, summarise
from pickloop.shapes.tastes import TASTES


def test_entries_are_every_registered_taste_and_a_careless_rater():
    names = [e.name for e in suite_entries()]
    assert set(TASTES) | {"careless-large"} == set(names) and len(names) == len(TASTES) + 1
    assert {"small", "large-cool", "shape-wise"} <= set(names)
    careless = pick_entries(["careless-large"])[0]
    assert careless.args == ("--taste", "large", "--rater-temperature", "0.2")
    with pytest.raises(UserError, match="unknown suite entry nosuch"):
        pick_entries(["warm", "nosuch"])


def test_summary_takes_the_worst_taste_and_counts_a_failed_run_as_zero():
    rows = {"a": parse_figures("win_rate=0.900 follow_base=0.757 follow_final=0.800 reward_acc=0.910 "
                               "reward_taste_acc=0.800 labels=400"),
            "b": parse_figures("win_rate=0.700 follow_base=0.757 follow_final=0.700 reward_acc=0.750 "
                               "reward_taste_acc=0.950 labels=400")}
    s = summarise(rows, 12.0)
    assert s["worst_taste"] == "b" and s["min_win"] == 0.7 and s["mean_win"] == pytest.approx(0.8)
    assert s["max_follow_drop"] == pytest.approx(0.057) and s["min_reward_acc"] == 0.75
    assert s["min_reward_taste_acc"] == 0.8
    s = summarise({**rows, "c": {}}, 1.0)
    assert s["worst_taste"] == "c" and s["min_win"] == 0.0 and s["mean_win"] == pytest.approx(1.6 / 3)


@pytest.mark.slow
def test_suite_runs_an_entry_end_to_end(home, capsys):
    main(["bench", "loop-suite", "--labels", "6", "--tastes", "careless-large", "--loop-args",
          "--rounds 1 --candidates 2 --train-prompts 4 --eval-prompts 2 --eval-seeds 1 --gate-seeds 1 --dpo-steps 2"])
    out = capsys.readouterr().out.strip().splitlines()
    row = parse_figures(out[-2])
    assert row["taste"] == "careless-large" and 0.0 <= float(row["win_rate"]) <= 1.0 and row["labels"] == "6"
    assert {"reward_taste_acc", "label_ceiling"} <= set(row)  # how the reward model knows the taste; the labels' noise
    last = parse_figures(out[-1])
    assert list(last) == ["min_win", "mean_win", "worst_taste", "max_follow_drop", "min_reward_acc",
                          "min_reward_taste_acc", "wall_s"]
    assert last["worst_taste"] == "careless-large" and last["min_win"] == row["win_rate"]
    assert list(home.glob("loops/suite-*/careless-large/reports/loop-*/report.md"))


def test_suite_bad_arguments_are_one_line(home, capsys):
    assert main(["bench", "loop-suite", "--tastes", "nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown suite entry nosuch" in err[0]
    assert main(["bench", "loop-suite", "--labels", "0"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert not (home / "loops").exists()

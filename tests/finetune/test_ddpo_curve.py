"""DDPO reward curves: the curve figures, grouped epoch prompts, and ``pickloop bench ddpo-curve`` end to end."""
from __future__ import annotations

import re

import numpy as np
import pytest

from finetune.ddpo.train import _epoch_prompts
from finetune.bench.ddpo_curve import curve_figures


def test_curve_figures_measure_rise_slope_and_noise():
    rng = np.random.default_rng(0)
    wiggle = rng.normal(0, 0.05, 16)
    rising = 0.1 + 0.02 * np.arange(16) + wiggle
    f = curve_figures(rising)
    assert f["first"] == pytest.approx(rising[:4].mean()) and f["last"] == pytest.approx(rising[-4:].mean())
    assert f["rise"] == pytest.approx(f["last"] - f["first"])
    assert f["slope"] == pytest.approx(0.02, abs=0.01)
    assert 0.02 < f["noise"] < 0.08  # the wiggle's spread, not the trend
    flat = curve_figures(0.3 + wiggle)
    assert abs(flat["slope"]) < 0.01 and flat["noise"] == pytest.approx(f["noise"])
    assert curve_figures([1.0, 0.0])["rise"] == -1.0
    with pytest.raises(ValueError):
        curve_figures([0.5])


def test_epoch_prompts_come_in_groups_of_distinct_prompts():
    pool = [f"p{i}" for i in range(8)]
    got = _epoch_prompts(pool, 32, seed=0, epoch=0, rank=0, per_prompt=4)
    groups = [got[i:i + 4] for i in range(0, 32, 4)]
    assert all(len(set(g)) == 1 for g in groups)
    assert sorted(g[0] for g in groups) == pool  # as many distinct prompts as groups: the whole pool
    assert _epoch_prompts(pool, 32, seed=0, epoch=0, rank=0, per_prompt=4) == got
    assert _epoch_prompts(pool, 32, seed=0, epoch=1, rank=0, per_prompt=4) != got
    assert sorted(_epoch_prompts(pool, 8, seed=3, epoch=0, rank=0)) == pool
    more = _epoch_prompts(pool[:3], 10, seed=0, epoch=0, rank=1, per_prompt=4)  # a pool smaller than the groups
    assert len(more) == 10 and more[:4] == [more[0]] * 4 and len(set(more[:12:4])) == 3
    cut = _epoch_prompts(pool, 2, seed=0, epoch=0, rank=0, per_prompt=4)
    assert len(cut) == 2 and cut[0] == cut[1]


def _curve_args(*argv: str):
    import argparse

    from finetune.bench.ddpo import register_bench

    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers(dest="bench_cmd"))
    return parser.parse_args(["ddpo-curve", *argv])


TINY = ('{"sample_batch_size": 4, "sample_batches_per_epoch": 1, "train_batch_size": 4, "images_per_prompt": 2, '
        '"stat_min_count": 2, "steps": 2, "drift_prompts": 1}')


@pytest.mark.slow
def test_bench_ddpo_curve_rates_trains_a_reward_model_and_plots(home, tmp_path, capsys):
    plot = tmp_path / "curve.png"
    args = _curve_args("--labels", "8", "--candidates", "2", "--prompts", "4", "--epochs", "2", "--config", TINY,
                       "--plot", str(plot), "--home", str(tmp_path / "run"), "--quiet")
    assert args.func(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"reward_first=-?[\d.]+ reward_last=-?[\d.]+ rise=-?[\d.]+ slope=-?[\d.]+ noise=[\d.]+ "
                        r"taste_first=[\d.]+ taste_last=[\d.]+ drift=[\d.]+ follow_drop=-?[\d.]+ "
                        r"reward_acc=(nan|[\d.]+) epochs=2 "
                        r"wall_s=[\d.]+", out[-1]), out[-1]
    assert sum(line.startswith("epoch ") for line in out) == 2
    rewards = next(line for line in out if line.startswith("rewards="))
    assert len(rewards.split("=")[1].split(",")) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "run" / "ddpo-lora" / "pytorch_lora_weights.safetensors").is_file()


def test_bench_ddpo_curve_refuses_mistakes_in_one_line(home, tmp_path):
    from pickloop.errors import UserError

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for argv, words in [(["--home", str(tmp_path / "full")], "not empty"), (["--candidates", "5"], "candidates"),
                        (["--config", '{"nope": 1}'], "unknown ddpo setting"), (["--config", "[1]"], "JSON object")]:
        args = _curve_args(*argv)
        with pytest.raises(UserError, match=words):
            args.func(args)


def test_the_curve_bench_rater_answers_as_the_loops_rater():
    """``bench ddpo-curve`` builds its rater with SimulatedRater's defaults, which must stay the loop's."""
    import inspect

    from pickloop.loop.config import LoopConfig
    from pickloop.shapes.tastes import SimulatedRater

    params = inspect.signature(SimulatedRater.__init__).parameters
    loop = LoopConfig()
    assert (params["temperature"].default, params["tie_margin"].default) == (loop.rater_temperature,
                                                                             loop.rater_tie_margin)

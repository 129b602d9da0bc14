"""The reward model knows when it does not know: its cross-validated accuracy over every label."""
from __future__ import annotations

import random

from reward.data import ImagePair
from reward.train import RewardConfig, fold_of, train_on_pairs

FAST = dict(epochs=60, patience=10, heldout_share=0.3, cv_folds=4)


def test_cross_validated_accuracy_is_high_on_a_learnable_taste_and_chance_on_noise(clip_dir, make_pairs):
    pairs = make_pairs(24, 6, seed=0)
    _, learnable = train_on_pairs(pairs, config=RewardConfig(backbone=clip_dir, **FAST), progress=False)
    rng = random.Random(0)  # the same images with coin-flip labels: nothing to learn
    noise = [ImagePair(p.prompt, p.a, p.b, float(rng.random() < 0.5), group=p.group) for p in pairs]
    _, noisy = train_on_pairs(noise, config=RewardConfig(backbone=clip_dir, **FAST), progress=False)
    decided = sum(p.label != 0.5 for p in pairs)
    assert learnable["cv_pairs"] == decided  # every decided label is scored once, by a head that did not see it
    assert learnable["cv_acc"] > 0.75
    assert noisy["cv_acc"] < 0.65 and noisy["cv_acc"] < learnable["cv_acc"] - 0.15
    assert 0 <= learnable["cv_acc_se"] < 0.06 and noisy["cv_acc_se"] > 0.03
    # where it separates pairs most it is right at least as often; on noise it is not sure of anything
    assert learnable["cv_acc_top"] >= learnable["cv_acc"] and noisy["cv_acc_top"] - noisy["cv_acc_top_se"] < 0.6


def test_folds_are_fixed_by_the_prompt_text():
    prompts = [f"a red circle number {i}" for i in range(400)]
    folds = [fold_of(p, 5) for p in prompts]
    assert folds == [fold_of(p, 5) for p in prompts] and set(folds) == set(range(5))
    assert min(folds.count(k) for k in range(5)) > 50  # roughly even


def test_cv_off(clip_dir, make_pairs):
    _, m = train_on_pairs(make_pairs(8, 3, seed=1), config=RewardConfig(backbone=clip_dir, **{**FAST, "cv_folds": 0}),
                          progress=False)
    assert "cv_acc" not in m

"""`pickloop bench reward`: does the reward model learn a hidden taste from a simulated rater's picks?

In the shapes world, candidates are the world's own renders of prompts that leave one or two
attributes open (what the taste acts on); optionally (``off_prompt_share``, default 0) a share of them
break the prompt, as a generator's mistakes would. A simulated rater, whose taste the model is never
told, answers ``labels`` sets on training prompts. The model is then scored on pairs for held-out
prompts (the world's fixed held-out pool), each answered twice by the rater. The rater's consistency
printed last is the share of repeats answered alike over the pairs accuracy counts (those the rater
picked in, not ties); the share over all pairs (ties always repeat) is printed beside it.
"""
from __future__ import annotations

import random
import time

from PIL import Image
from tqdm import tqdm

from pickloop.errors import UserError
from pickloop.shapes.world import COLORS, SHAPES, SIZES, Scene, prompt_pool, render, scene_from_prompt
from reward.config import RewardBenchConfig as BenchConfig
from reward.data import ImagePair, featurize
from reward.evaluate import evaluate_model
from reward.train import RewardConfig, train_on_pairs


def make_rater(taste: str, seed: int):  # noqa: ANN201 - pickloop.shapes.tastes.SimulatedRater
    """The shapes world's simulated rater with the named taste."""
    try:
        from pickloop.shapes import tastes
    except ModuleNotFoundError as e:
        raise UserError(f"simulated raters are not installed ({e.name}); the shapes world provides them") from None
    try:
        return tastes.SimulatedRater(taste, seed=seed)
    except ValueError as e:
        raise UserError(str(e)) from None


def draw_candidate(prompt: str, rng: random.Random, off_prompt_share: float) -> Image.Image:
    """A render that follows the prompt (open attributes at random), or with ``off_prompt_share`` one
    that gets a stated attribute wrong."""
    scene = scene_from_prompt(prompt, rng)
    if rng.random() < off_prompt_share:
        objs = list(scene.objects)
        i = rng.randrange(len(objs))
        o = objs[i]
        attr = rng.choice(("kind", "color", "size"))
        if attr == "kind":
            o = type(o)(rng.choice([s for s in SHAPES if s != o.kind]), o.color, o.size, o.position)
        elif attr == "color":
            o = type(o)(o.kind, rng.choice([c for c in COLORS if c not in (o.color, scene.background)]),
                        o.size, o.position)
        else:
            o = type(o)(o.kind, o.color, next(s for s in SIZES if s != o.size), o.position)
        objs[i] = o
        scene = Scene(scene.background, tuple(objs))
    return render(scene)


def pairs_of_answer(prompt: str, images: list[Image.Image], answer, group: int) -> list[ImagePair]:  # noqa: ANN001
    """Pairs from one answer: the pick against every other image (1.0), or all pairs for a tie (0.5)."""
    if answer == "tie":
        return [ImagePair(prompt, images[i], images[j], 0.5, group)
                for i in range(len(images)) for j in range(i + 1, len(images))]
    if answer is None or answer in ("none", "skip"):
        return []
    return [ImagePair(prompt, images[answer], im, 1.0, group) for k, im in enumerate(images) if k != answer]


def label_training_sets(rater, cfg: BenchConfig, progress: bool = True) -> list[ImagePair]:  # noqa: ANN001

    rng = random.Random(f"reward-bench-train-{cfg.seed}")
    prompts = prompt_pool("train", n=cfg.train_prompts, open_share=1.0, seed=cfg.seed)
    pairs: list[ImagePair] = []
    for j in tqdm(range(cfg.labels), desc="rater labels", disable=not progress, leave=False):
        prompt = prompts[j % len(prompts)]
        images = [draw_candidate(prompt, rng, cfg.off_prompt_share) for _ in range(cfg.candidates)]
        pairs += pairs_of_answer(prompt, images, rater.choose(prompt, images), group=j + 1)
    return pairs


def label_test_pairs(rater, cfg: BenchConfig) -> tuple[list[ImagePair], dict]:  # noqa: ANN001
    """Held-out pairs labelled by the rater's first answer, and how consistent the rater is.

    Each pair is shown twice. ``all``: share of pairs answered alike both times (a tie always repeats,
    since the rater's scores are deterministic). ``decided``: the same share over the pairs whose first
    answer was a pick, the pairs that accuracy is measured on. ``oracle``: the accuracy on those pairs
    of the taste itself (picking the higher-scored image): the best any model of the rater can do.
    """
    rng = random.Random(f"reward-bench-test-{cfg.seed}")
    prompts = prompt_pool("heldout", n=max(20, cfg.test_pairs // 4), open_share=1.0, seed=cfg.seed)
    pairs, same, decided, same_decided, oracle = [], 0, 0, 0, 0
    for j in range(cfg.test_pairs):
        prompt = prompts[j % len(prompts)]
        images = [draw_candidate(prompt, rng, cfg.off_prompt_share) for _ in range(2)]
        scores = rater.scores(prompt, images)
        first, second = rater.choose(prompt, images, scores), rater.choose(prompt, images, scores)
        same += first == second
        if first != "tie":
            decided += 1
            same_decided += first == second
            oracle += (scores[0] > scores[1]) == (first == 0)
        pairs += pairs_of_answer(prompt, images, first, group=j + 1)
    n = max(decided, 1)
    return pairs, dict(all=same / cfg.test_pairs, decided=same_decided / n, oracle=oracle / n)


def run_bench(cfg: BenchConfig, config=None, progress: bool = True) -> dict:  # noqa: ANN001
    """Label, train, evaluate; returns the figures the bench prints."""
    config = config or RewardConfig(heldout_share=0.2)
    rater = make_rater(cfg.taste, cfg.seed)
    train_pairs = label_training_sets(rater, cfg, progress)
    test_pairs, consistency = label_test_pairs(rater, cfg)
    t0 = time.perf_counter()
    model, metrics = train_on_pairs(train_pairs, config=config, progress=progress)
    train_s = time.perf_counter() - t0
    test = featurize(model, test_pairs)
    trained = evaluate_model(model, test)
    untrained = [evaluate_model(model.fresh_head(seed=s), test)["accuracy"] for s in range(5)]
    return dict(heldout_acc=trained["accuracy"], heldout_log_loss=trained["log_loss"], heldout_ece=trained["ece"],
                rater_consistency=consistency["decided"], rater_consistency_all=consistency["all"],
                oracle_acc=consistency["oracle"], untrained_acc=sum(untrained) / len(untrained),
                untrained_each=untrained, labels=cfg.labels, train_pairs=len(train_pairs),
                test_pairs=trained["pairs"], test_ties=trained["ties"], train_s=train_s,
                early_stop_acc=metrics["heldout_acc"], epochs_run=metrics["epochs_run"])

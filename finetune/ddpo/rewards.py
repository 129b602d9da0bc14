"""Reward functions for DDPO: a registry of factories that all return ``(prompts, images) -> tensor``.

A reward function takes B prompts and B PIL images and returns a float tensor (B,) (higher is
better). ``make_reward(spec, ...)`` builds one by name:

- ``reward-model``: the learned preference model, ``reward.model.RewardModel.load(path).score``;
- ``judge``: the shapes world judge's prompt-following (share of fixed attributes shown);
- ``taste:NAME``: a simulated rater's hidden taste oracle (``pickloop.shapes.tastes.load_taste``),
  for experiments where the answer is known; NAME may be ``FILE.py:FUNC``;
- ``brightness`` / ``redness``: pixel rewards that need no model (tests, benchmarks, and a quick way
  to watch reward hacking happen).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from pickloop.errors import UserError

RewardFn = Callable[[Sequence[str], Sequence[Any]], torch.Tensor]
REWARDS: dict[str, Callable[..., RewardFn]] = {}


def register_reward(name: str) -> Callable[[Callable[..., RewardFn]], Callable[..., RewardFn]]:
    """Decorator: add a reward factory under ``name``."""
    def add(factory: Callable[..., RewardFn]) -> Callable[..., RewardFn]:
        REWARDS[name] = factory
        return factory
    return add


def _pixels(images: Sequence[Any]) -> np.ndarray:
    """PIL images -> float array (B, H, W, 3) in [0, 1]."""
    return np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])


@register_reward("brightness")
def brightness_reward(**_: Any) -> RewardFn:
    """Mean pixel value in [0, 1]."""
    def score(prompts: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        return torch.from_numpy(_pixels(images).mean(axis=(1, 2, 3)))
    return score


@register_reward("redness")
def redness_reward(**_: Any) -> RewardFn:
    """Mean of red minus the mean of green and blue, in [-1, 1]."""
    def score(prompts: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        px = _pixels(images)
        return torch.from_numpy((px[..., 0] - 0.5 * (px[..., 1] + px[..., 2])).mean(axis=(1, 2)))
    return score


@register_reward("judge")
def judge_reward(**_: Any) -> RewardFn:
    """Share of the attributes a shapes prompt fixes that the image shows (1.0 when it fixes none)."""
    from pickloop.shapes.judge import follows

    def score(prompts: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        out = []
        for prompt, image in zip(prompts, images):
            result = follows(prompt, image)
            out.append(float(np.mean(list(result.values()))) if result else 1.0)
        return torch.tensor(out, dtype=torch.float32)
    return score


@register_reward("reward-model")
def reward_model_reward(path: str | None = None, ctx: Any = None, audience: str = "everyone",
                        **_: Any) -> RewardFn:
    """The learned preference model's score; ``path`` is a folder, a registry id or "latest" (default:
    the newest reward model of ``audience``)."""
    from reward import RewardModel

    ref = path or "latest"
    if ctx is None and (ref == "latest" or str(ref).isdigit()):
        raise UserError("give the reward model's folder (reward_path) or run inside a data home")
    if ctx is not None:
        from reward import load_reward_model

        # weights checked against the registry's sha256
        model = load_reward_model(ctx=ctx, ref=str(ref), audience=audience)
    else:
        model = RewardModel.load(ref)

    def score(prompts: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        return model.score(list(prompts), list(images)).reshape(-1).float().cpu()
    return score


@register_reward("taste")
def taste_reward(name: str | None = None, **_: Any) -> RewardFn:
    """A simulated rater's hidden taste score of each image for its prompt (``taste:NAME``)."""
    from pickloop.shapes.tastes import load_taste

    if not name:
        raise UserError("name the taste: --reward taste:NAME (or taste:FILE.py:FUNC)")
    try:
        taste = load_taste(name)  # a callable (image, prompt) -> float
    except ValueError as e:
        raise UserError(str(e)) from None

    def score(prompts: Sequence[str], images: Sequence[Any]) -> torch.Tensor:
        return torch.tensor([float(taste(im, p)) for p, im in zip(prompts, images)], dtype=torch.float32)
    return score


def make_reward(spec: str, *, path: str | None = None, ctx: Any = None, audience: str = "everyone") -> RewardFn:
    """The reward function named by ``spec`` ("judge", "taste:NAME", "reward-model", ...); ``audience``:
    whose reward model "reward-model" reads when ``path`` is unset."""
    name, _, arg = spec.partition(":")
    if name not in REWARDS:
        raise UserError(f"unknown reward {spec!r}; choose one of {', '.join(sorted(REWARDS))} (taste:NAME)")
    return REWARDS[name](name=arg or None, path=path, ctx=ctx, audience=audience)

"""Hidden tastes and simulated raters for the shapes world.

A taste scores an image (and optionally its prompt) from what the judge reads. It gives
nothing (NOTHING) to an empty image or one that breaks the prompt, and otherwise a
continuous score in [0, 1] on what the prompt leaves open. A SimulatedRater turns a taste
into choices with Bradley-Terry noise: P(pick i) = softmax(score / temperature).
"""
from __future__ import annotations

import importlib.util
import inspect
import random
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .judge import Reading, follows, read

Taste = Callable[[Image.Image, "str | None"], float]
NOTHING = 0.0  # the score of an empty image or one that breaks its prompt
TASTES: dict[str, Taste] = {}


def register_taste(name: str) -> Callable[[Taste], Taste]:
    """Decorator: add a taste to the registry under `name`."""
    def add(fn: Taste) -> Taste:
        TASTES[name] = fn
        return fn
    return add


def gated(image: Image.Image, prompt: str | None) -> Reading | None:
    """The judge's reading, or None when the image is empty or breaks what the prompt fixes."""
    reading = read(image)
    if not reading.objects:
        return None
    if prompt and not all(follows(prompt, image, reading).values()):
        return None
    return reading


def _score(image: Image.Image, prompt: str | None, feature: Callable[[Reading], float]) -> float:
    reading = gated(image, prompt)
    if reading is None:
        return NOTHING
    # A kept image always beats a rejected one: the floor of a valid image is 0.05.
    return 0.05 + 0.95 * float(np.clip(feature(reading), 0.0, 1.0))


@register_taste("large")
def large(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers large objects: mean object area over the area of a large circle (~615 px)."""
    return _score(image, prompt, lambda r: np.mean([o.area for o in r.objects]) / 700.0)


@register_taste("warm")
def warm(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers warm objects (red, orange, yellow): red minus blue of the object colour."""
    return _score(image, prompt, lambda r: (np.mean([o.warmth for o in r.objects]) + 1.0) / 2.0)


@register_taste("centered")
def centered(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers objects near the middle: 1 minus the centre offset (in half-image units)."""
    return _score(image, prompt, lambda r: 1.0 - np.mean([o.center_offset for o in r.objects]) / 0.7)


@register_taste("circles")
def circles(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers round objects: a circle fills 0.785 of its box; scores fall off away from it."""
    return _score(image, prompt, lambda r: 1.0 - np.mean([abs(o.fill - 0.785) for o in r.objects]) / 0.3)


@register_taste("contrast")
def contrast(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers strong contrast between objects and background (RGB distance, 0..1)."""
    return _score(image, prompt, lambda r: r.contrast() / 0.8)


# Tastes unlike the five above in kind: the opposite of one, a trade-off between two attributes, and one
# that depends on what the prompt asks for. With the registered five they make the loop's suite
# (``pickloop bench loop-suite``), on which the defaults are judged.

@register_taste("small")
def small(image: Image.Image, prompt: str | None = None) -> float:
    """Prefers small objects (the opposite of ``large``): 1 minus mean object area over ~700 px."""
    return _score(image, prompt, lambda r: 1.0 - np.mean([o.area for o in r.objects]) / 700.0)


@register_taste("large-cool")
def large_cool(image: Image.Image, prompt: str | None = None) -> float:
    """A trade-off of two attributes: large objects and cool colours (blue, green, purple), half each."""
    return _score(image, prompt, lambda r: 0.5 * np.mean([o.area for o in r.objects]) / 700.0
                  + 0.25 * (1.0 - np.mean([o.warmth for o in r.objects])))


@register_taste("shape-wise")
def shape_wise(image: Image.Image, prompt: str | None = None) -> float:
    """Depends on the prompt: circles should be warm, every other shape cool (so no one colour shift wins)."""
    def feature(r: Reading) -> float:
        return float(np.mean([(1.0 + o.warmth) / 2.0 if o.shape == "circle" else (1.0 - o.warmth) / 2.0
                              for o in r.objects]))
    return _score(image, prompt, feature)


def _load_from_file(spec: str) -> Callable:
    path, _, name = spec.rpartition(":")
    if not Path(path).is_file():
        raise ValueError(f"taste file {path!r} not found (expected FILE.py:FUNCTION)")
    module_spec = importlib.util.spec_from_file_location(f"pickloop_taste_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not callable(getattr(module, name, None)):
        raise ValueError(f"{path} has no function {name!r}")
    return getattr(module, name)


def _with_prompt(fn: Callable) -> Taste:
    """Accept functions of (image) or (image, prompt) alike."""
    try:
        takes = len([p for p in inspect.signature(fn).parameters.values()
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        takes = 2
    if takes >= 2:
        return fn
    return lambda image, prompt=None: fn(image)


def load_taste(spec: str | Callable) -> Taste:
    """A taste from a registered name, "FILE.py:FUNCTION", or a Python callable.

    The callable maps a PIL image (and optionally the prompt) to a float score.
    """
    if callable(spec):
        return _with_prompt(spec)
    if spec in TASTES:
        return TASTES[spec]
    if ".py:" in spec:
        return _with_prompt(_load_from_file(spec))
    raise ValueError(f"unknown taste {spec!r}; registered: {', '.join(sorted(TASTES))}, or FILE.py:FUNCTION")


class SimulatedRater:
    """A rater with a hidden taste who picks among 2-4 images with Bradley-Terry noise.

    temperature: softmax temperature on scores (0 picks the best always; scores lie in 0..1,
    so 0.05 is a careful rater and 0.3 a careless one). tie_margin: says "tie" when the two
    best scores differ by less than this.
    """

    def __init__(self, taste: str | Callable, temperature: float = 0.05, tie_margin: float = 0.02,
                 seed: int = 0):
        if temperature < 0 or tie_margin < 0:
            raise ValueError("temperature and tie_margin must be >= 0")
        self.taste = load_taste(taste)
        self.name = taste if isinstance(taste, str) else getattr(taste, "__name__", "custom")
        self.temperature, self.tie_margin = temperature, tie_margin
        self.rng = random.Random(seed)

    def scores(self, prompt: str | None, images: Sequence[Image.Image]) -> list[float]:
        return [float(self.taste(im, prompt)) for im in images]

    def choose(self, prompt: str | None, images: Sequence[Image.Image],
               scores: Sequence[float] | None = None) -> int | str:
        """Index of the chosen image, or "tie" when the best two are within tie_margin."""
        if not 2 <= len(images) <= 4 and scores is None:
            raise ValueError(f"a rater compares 2 to 4 images, got {len(images)}")
        s = np.array(scores if scores is not None else self.scores(prompt, images))
        top = np.sort(s)[-2:]
        if top[1] - top[0] < self.tie_margin:
            return "tie"
        if self.temperature == 0:
            return int(np.argmax(s))
        p = np.exp((s - s.max()) / self.temperature)
        p /= p.sum()
        return int(self.rng.choices(range(len(s)), weights=p)[0])

    def prefers(self, prompt: str | None, img_a: Image.Image, img_b: Image.Image) -> int | str:
        """0 if it picks img_a, 1 for img_b, "tie" otherwise."""
        return self.choose(prompt, [img_a, img_b])


def rater_consistency(rater: SimulatedRater, pairs: Sequence[tuple[str | None, Image.Image, Image.Image]],
                      repeats: int = 2) -> float:
    """Share of pairs answered the same way every time they are shown (`repeats` times each)."""
    same = 0
    for prompt, a, b in pairs:
        scores = rater.scores(prompt, [a, b])
        answers = {rater.choose(prompt, [a, b], scores) for _ in range(repeats)}
        same += len(answers) == 1
    return same / max(len(pairs), 1)

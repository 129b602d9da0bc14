"""The loop's measures of the reward model: agreement with the taste itself, and the labels' noise ceiling."""
from __future__ import annotations

from PIL import Image

from pickloop.loop.evaluate import FixedSeedImages, label_ceiling, taste_agreement


def brightness(image: Image.Image, prompt: str | None = None) -> float:
    """A taste for these tests: the brighter the better."""
    return image.getpixel((0, 0))[0] / 255


def grey(v: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (v, v, v))


def test_taste_agreement_counts_same_prompt_pairs_the_taste_separates():
    levels = [10, 60, 120, 200]
    images = FixedSeedImages(["a"] * 4 + ["b"] * 2, [0, 1, 2, 3, 0, 1],
                             [grey(v) for v in levels] + [grey(100), grey(101)])
    # scores that order prompt a as the taste does, and prompt b's one close pair the wrong way
    assert taste_agreement(brightness, [1, 2, 3, 4, 5, 0], images, margin=0.02) == 1.0  # b's pair is within the margin
    assert taste_agreement(brightness, [4, 3, 2, 1, 5, 0], images, margin=0.02) == 0.0
    # one of a's six pairs swapped (the two brightest): 5 of 6
    assert taste_agreement(brightness, [1, 2, 4, 3, 0, 0], images, margin=0.02) == 5 / 6
    # pairs across prompts never count: b's pair counts once the margin is 0, and equal scores count half
    assert taste_agreement(brightness, [1, 2, 3, 4, 7, 7], images, margin=0.0) == (6 + 0.5) / 7
    assert taste_agreement(brightness, [0] * 6, FixedSeedImages(["a"], [0], [grey(1)]), margin=0.0) is None


def test_label_ceiling_is_the_taste_own_accuracy_on_the_picks():
    pairs = [("p", grey(200), grey(10)), ("p", grey(10), grey(200)), ("p", grey(50), grey(50)),
             ("p", grey(90), grey(80))]
    assert label_ceiling(brightness, pairs) == (1 + 0 + 0.5 + 1) / 4
    assert label_ceiling(brightness, []) is None

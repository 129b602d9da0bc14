"""Tastes react to what they claim; raters are consistent; custom tastes load."""
from __future__ import annotations

import random

import pytest

from pickloop.shapes import tastes, world
from pickloop.shapes.world import Scene, Shape


def draw(kind="circle", color="red", size="large", position="center", background="blue"):
    return world.render(Scene(background, (Shape(kind, color, size, position),)))


@pytest.mark.parametrize(("name", "better", "worse"), [
    ("large", dict(size="large"), dict(size="small")),
    ("warm", dict(color="orange"), dict(color="purple")),
    ("centered", dict(position="center"), dict(position="left")),
    ("circles", dict(kind="circle"), dict(kind="triangle")),
    ("contrast", dict(color="yellow"), dict(color="purple")),
    ("small", dict(size="small"), dict(size="large")),
    ("large-cool", dict(size="large", color="blue", background="white"), dict(size="small", color="red")),
    ("large-cool", dict(size="large", color="red"), dict(size="small", color="red")),
    ("large-cool", dict(size="large", color="blue", background="white"), dict(size="large", color="red")),
    ("shape-wise", dict(kind="circle", color="red"), dict(kind="circle", color="blue", background="white")),
    ("shape-wise", dict(kind="square", color="blue", background="white"), dict(kind="square", color="red")),
])
def test_taste_prefers_what_it_claims(name, better, worse):
    taste = tastes.load_taste(name)
    assert taste(draw(**better), None) > taste(draw(**worse), None)
    assert taste(draw(**better), "a circle") > 0 or better.get("kind", "circle") != "circle"


@pytest.mark.parametrize("name", sorted(tastes.TASTES))
def test_empty_or_prompt_breaking_images_get_nothing(name):
    taste = tastes.load_taste(name)
    assert taste(world.render(Scene("blue", ())), None) == tastes.NOTHING
    assert taste(draw(color="red"), "a green circle") == tastes.NOTHING
    assert taste(draw(color="red"), "a red circle") > tastes.NOTHING


def _pairs(n=30):
    rng = random.Random(0)
    prompts = world.prompt_pool("train", n, open_share=1.0)
    return [(p, world.render(world.scene_from_prompt(p, rng)), world.render(world.scene_from_prompt(p, rng)))
            for p in prompts]


@pytest.mark.parametrize("name", sorted(tastes.TASTES))
def test_rater_consistency_is_sane(name):
    pairs = _pairs()
    careful = tastes.rater_consistency(tastes.SimulatedRater(name, temperature=0.05, seed=1), pairs, repeats=3)
    careless = tastes.rater_consistency(tastes.SimulatedRater(name, temperature=1.0, seed=1), pairs, repeats=3)
    assert 0.6 <= careful <= 1.0
    assert careless < careful


def test_choose_ties_and_picks_among_four():
    rater = tastes.SimulatedRater("large", temperature=0.0, tie_margin=0.02)
    same = draw()
    assert rater.choose(None, [same, same]) == "tie"
    images = [draw(size="small"), draw(size="large"), draw(size="small", color="green"), world.render(Scene("red", ()))]
    assert rater.choose(None, images) == 1
    assert rater.prefers(None, draw(size="small"), draw(size="large")) == 1


def test_custom_taste_from_file_and_callable(tmp_path):
    path = tmp_path / "mytaste.py"
    path.write_text("def greenness(image):\n    r, g, b = image.convert('RGB').resize((1, 1)).getpixel((0, 0))\n"
                    "    return g / 255\n")
    taste = tastes.load_taste(f"{path}:greenness")
    assert taste(world.render(Scene("green", ())), "anything") > taste(world.render(Scene("red", ())), None)
    rater = tastes.SimulatedRater(lambda image: image.getpixel((0, 0))[2] / 255, temperature=0.0)
    assert rater.prefers(None, world.render(Scene("red", ())), world.render(Scene("blue", ()))) == 1
    with pytest.raises(ValueError):
        tastes.load_taste("no-such-taste")
    with pytest.raises(ValueError):
        tastes.load_taste(f"{path}:missing")

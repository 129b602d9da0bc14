"""The judge reads drawn images right, and scores only what a prompt fixes."""
from __future__ import annotations

import random

from pickloop.shapes import judge, world


def test_judge_reads_drawn_images():
    rng = random.Random(7)
    scenes = [world.sample_scene(rng, two_share=0.4) for _ in range(300)]
    acc = judge.follow_accuracy([world.caption(s) for s in scenes], [world.render(s) for s in scenes])
    for attr in world.ATTRIBUTES:
        assert acc[attr] >= 0.99, acc


def test_follows_scores_only_fixed_attributes():
    image = world.render(world.Scene("blue", (world.Shape("circle", "red", "large", "left"),)))
    assert judge.follows("a red circle", image) == {"color": True, "shape": True}
    assert judge.follows("a green circle on a blue background", image) == {
        "background": True, "color": False, "shape": True}


def test_empty_image_fails_object_attributes():
    empty = world.render(world.Scene("white", ()))
    reading = judge.read(empty)
    assert reading.background == "white" and reading.objects == []
    assert judge.follows("a small red circle", empty) == {"color": False, "shape": False, "size": False}


def test_continuous_features():
    small = judge.read(world.render(world.Scene("black", (world.Shape("square", "red", "small", "center"),))))
    large = judge.read(world.render(world.Scene("black", (world.Shape("square", "blue", "large", "top"),))))
    assert large.objects[0].area > 2 * small.objects[0].area
    assert small.objects[0].warmth > 0.5 > large.objects[0].warmth
    assert small.objects[0].center_offset < 0.1 < large.objects[0].center_offset
    assert 0 < small.contrast() <= 1

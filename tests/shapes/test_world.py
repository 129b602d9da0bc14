"""The shapes world: deterministic drawing, captions that parse back, a stable held-out split."""
from __future__ import annotations

import random

import numpy as np

from pickloop.shapes import world
from pickloop.shapes.architectures import make_tokenizer


def test_render_and_training_pairs_are_deterministic():
    for seed in range(20):
        (a, cap_a), (b, cap_b) = world.sample_training_pair(seed), world.sample_training_pair(seed)
        assert cap_a == cap_b
        assert np.array_equal(np.asarray(a), np.asarray(b))
        assert a.size == (64, 64) and a.mode == "RGB"
    scene = world.sample_scene(random.Random(3))
    assert np.array_equal(np.asarray(world.render(scene)), np.asarray(world.render(scene)))


def test_caption_parses_back_to_the_scene():
    rng = random.Random(0)
    for _ in range(300):
        scene = world.sample_scene(rng)
        fixed = world.parse_prompt(world.caption(scene))
        assert fixed["background"] == scene.background
        for obj, shape in zip(fixed["objects"], scene.objects, strict=True):
            assert obj == {"color": shape.color, "shape": shape.kind, "size": shape.size, "position": shape.position}


def test_open_attributes_are_left_out():
    scene = world.Scene("blue", (world.Shape("circle", "red", "large", "left"),))
    assert world.caption(scene, open=("size", "position", "background")) == "a red circle"
    assert world.caption(scene, open=("shape",)) == "a large red shape on the left on a blue background"
    assert world.parse_prompt("a red circle") == {"objects": [{"color": "red", "shape": "circle"}]}


def test_prompt_pool_is_stable_and_heldout_is_disjoint():
    train, held = world.prompt_pool("train", 200), world.prompt_pool("heldout", 100)
    assert train == world.prompt_pool("train", 200) and held == world.prompt_pool("heldout", 100)
    assert len(set(held)) == 100 and not set(train) & set(held)
    assert all(world.is_heldout(p) for p in held)
    assert not any(world.is_heldout(world.sample_training_pair(s)[1]) for s in range(300))


def test_every_caption_word_is_one_token():
    tok = make_tokenizer()
    for prompt in world.prompt_pool("train", 50):
        ids = tok(prompt).input_ids
        assert len(ids) == len(prompt.split()) + 2  # bos, one per word, eos
        assert tok.unk_token_id not in ids[1:-1]

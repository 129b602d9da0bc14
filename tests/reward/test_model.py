"""RewardModel on a tiny CLIP: scores, save/load, LoRA, untrained heads, uncertainty."""
from __future__ import annotations

import json

import pytest
import torch

from pickloop.errors import UserError
from reward.model import RewardModel
from reward.uncertainty import CandidateSet, most_uncertain


@pytest.fixture(scope="module")
def pairs(make_pairs):
    return make_pairs(6, 2, seed=1)


def test_score_shape_and_one_prompt_for_all(clip_dir, pairs):
    model = RewardModel.create(clip_dir)
    images = [p.a for p in pairs[:4]]
    scores = model.score(pairs[0].prompt, images)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.allclose(scores, model.score([pairs[0].prompt] * 4, images))
    assert not any(p.requires_grad for p in model.backbone.parameters())  # frozen by default


def test_save_load_gives_identical_scores(clip_dir, pairs, tmp_path):
    model = RewardModel.create(clip_dir, head_width=32, seed=3)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(torch.randn_like(p))  # a "trained" head, not the init that load would rebuild
    prompts, images = [p.prompt for p in pairs], [p.a for p in pairs]
    before = model.score(prompts, images)
    model.save(tmp_path / "rm", metrics={"heldout_acc": 0.9})
    model.save(tmp_path / "rm", metrics={"heldout_acc": 0.91})  # overwriting goes through a temp folder too
    assert sorted(f.name for f in tmp_path.iterdir()) == ["rm"]
    assert sorted(f.name for f in (tmp_path / "rm").iterdir()) == ["config.json", "metrics.json", "model.safetensors"]
    loaded = RewardModel.load(tmp_path / "rm")
    assert torch.equal(loaded.score(prompts, images), before)
    assert loaded.metrics == {"heldout_acc": 0.91}
    assert json.loads((tmp_path / "rm" / "config.json").read_text())["head_width"] == 32


def test_lora_backbone_trains_only_adapters_and_round_trips(clip_dir, pairs, tmp_path):
    model = RewardModel.create(clip_dir, head_width=16, lora_rank=2)
    trainable = [n for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # LoRA B starts at zero; make the adapters matter
    prompts, images = [p.prompt for p in pairs[:4]], [p.a for p in pairs[:4]]
    before = model.score(prompts, images)
    plain = RewardModel.create(clip_dir, head_width=16)  # same head init (same seed), no adapters
    assert not torch.allclose(before, plain.score(prompts, images), atol=1e-3)
    model.save(tmp_path / "lora")
    assert torch.allclose(RewardModel.load(tmp_path / "lora").score(prompts, images), before, atol=1e-6)


def test_load_of_a_non_model_is_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match="not a saved reward model"):
        RewardModel.load(tmp_path / "x")


def test_least_certain_sets_come_first(clip_dir, pairs):
    model = RewardModel.create(clip_dir)
    a, b = pairs[0].a, pairs[0].b
    sets = [CandidateSet(pairs[0].prompt, [a, b, b], key="distinct"),
            CandidateSet(pairs[0].prompt, [a, a, b], key="twin")]  # two identical best-or-not candidates
    scores = model.score(pairs[0].prompt, [a, b])
    ranked = most_uncertain(model, sets)
    if scores[0] > scores[1]:  # a is best: the twin set's top two are equal
        assert ranked[0].key == "twin" and ranked[0].margin == pytest.approx(0.0, abs=1e-6)
    else:  # b is best: the distinct set has b twice at the top
        assert ranked[0].key == "distinct" and ranked[0].margin == pytest.approx(0.0, abs=1e-6)
    assert ranked[0].p_best == pytest.approx(0.5, abs=1e-6)
    assert ranked[1].margin == pytest.approx(abs((scores[0] - scores[1]).item()), abs=1e-5)


def test_a_backbone_published_only_as_a_pickle_is_refused_unopened(clip_dir, tmp_path, monkeypatch):
    """A CLIP folder with pytorch_model.bin and no safetensors: one line, and the pickle is never loaded."""
    import pickle
    import shutil

    from transformers import CLIPModel

    folder = tmp_path / "clip-bin"
    shutil.copytree(clip_dir, folder)
    torch.save(CLIPModel.from_pretrained(folder).state_dict(), folder / "pytorch_model.bin")  # the pickle layout
    (folder / "model.safetensors").unlink()
    assert (folder / "pytorch_model.bin").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(UserError, match="safetensors weights only"):
        RewardModel.create(str(folder))

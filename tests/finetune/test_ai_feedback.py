"""DPO with AI feedback: the reward model ranks extra candidate sets drawn by the base model, and their
best-vs-worst pairs join the human picks at their own weight (off by default)."""
from __future__ import annotations

import pytest
import torch
from sqlmodel import func, select

from finetune import lora as lora_io
from finetune.dpo import DPOConfig, PairSpec, denoising_errors, dpo_loss, normalised_weights, run_dpo
from finetune.dpo.ai_feedback import ai_feedback_pairs, plan_sets
from pickloop.db import read_session
from pickloop.errors import UserError

# steps 3 x batch 2 over 3 human pairs (+2 AI pairs): each run takes a few seconds on the tiny model.
RUN = dict(steps=3, batch_size=2, lr=1e-2, seed=1, checkpoint_every=0, log_every=0)
AI = dict(ai_feedback_sets=2, ai_feedback_candidates=2)
DEFAULT_HASH_BEFORE_AI_FEEDBACK = "e0564b7bcde5a150"  # DPOConfig().config_hash() before these settings existed


@pytest.fixture(scope="module")
def fast_base(tiny_base, tmp_path_factory):
    """The tiny pipeline with 4 sampling steps (pickloop_defaults.json) so AI sets draw fast."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("fast") / "base"
    shutil.copytree(tiny_base, out)
    (out / "pickloop_defaults.json").write_text(json.dumps({"num_inference_steps": 4, "guidance_scale": 5.0}))
    return out


@pytest.fixture
def labelled(ctx, fast_base, monkeypatch):
    """As conftest's ``labelled`` (3 picked train sets of 2), on the fast-sampling copy of the base."""
    from tests.finetune.conftest import labelled_home

    return labelled_home(fast_base, monkeypatch)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIPModel + CLIPProcessor folder of the shapes CLIP's architecture with random weights."""
    from tests.tiny_clip import write_random_shapes_clip

    return write_random_shapes_clip(tmp_path_factory.mktemp("clip"))


def register_reward_model(ctx, clip_dir: str) -> int:
    """Save an untrained reward model (random head: distinct scores) and register it; returns its id."""
    from pickloop.db import write_session
    from pickloop.schema import RewardModelRow
    from reward.model import RewardModel
    from reward.registry import weights_sha256

    folder = RewardModel.create(backbone=clip_dir, seed=3).save(ctx.home / "reward" / "manual")
    with write_session(ctx.engine) as s:
        row = RewardModelRow(path=str(folder), sha256=weights_sha256(folder), backbone=clip_dir, data_snapshot=0)
        s.add(row)
        s.flush()
        return int(row.id)


def _lora(result) -> dict[str, torch.Tensor]:
    return lora_io.load_lora_state(result.lora_dir)[0]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _count(ctx, table) -> int:
    with read_session(ctx.engine) as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def test_ai_feedback_adds_weighted_pairs_from_the_reward_model(labelled, tiny_clip, tmp_path):
    from pickloop.schema import Candidate, Comparison, Judgement

    reward_id = register_reward_model(labelled, tiny_clip)
    rows_before = [_count(labelled, t) for t in (Comparison, Candidate, Judgement)]

    human = run_dpo(labelled, DPOConfig(**RUN), out_dir=tmp_path / "human")
    # Off: the other AI settings change neither the weights nor the hash (no draws, no reward model use).
    off = run_dpo(labelled, DPOConfig(**RUN, ai_feedback_candidates=3, ai_feedback_weight=2.0),
                  out_dir=tmp_path / "off")
    assert _max_diff(_lora(off), _lora(human)) == 0.0
    assert human.metrics["ai_pairs"] == 0 and human.metrics["human_pairs"] == 3

    on = run_dpo(labelled, DPOConfig(**RUN, **AI), out_dir=tmp_path / "on")
    assert on.metrics["ai_pairs"] == 2 and on.metrics["human_pairs"] == 3 and on.metrics["pairs"] == 5
    assert _max_diff(_lora(on), _lora(human)) > 1e-4, "AI pairs did not change the LoRA"
    meta = lora_io.read_manifest(on.lora_dir)["metadata"]["ai_feedback"]
    assert meta["reward_model_id"] == reward_id and meta["pairs"] == 2 and meta["weight"] == 0.5

    # Weight 0: the pairs are drawn and counted but carry no gradient: the human-only LoRA exactly.
    zero = run_dpo(labelled, DPOConfig(**RUN, **AI, ai_feedback_weight=0.0), out_dir=tmp_path / "zero")
    assert zero.metrics["ai_pairs"] == 2 and zero.metrics["pairs"] == 3
    assert _max_diff(_lora(zero), _lora(human)) == 0.0

    # The AI sets are stored images only, not labels.
    assert [_count(labelled, t) for t in (Comparison, Candidate, Judgement)] == rows_before


def test_ai_sets_are_reproducible_ranked_and_stored(labelled, tiny_clip, fast_base):
    from reward.registry import load_latest

    register_reward_model(labelled, tiny_clip)
    cfg = DPOConfig(**RUN, **AI)
    first, summary = ai_feedback_pairs(labelled, cfg, base=str(fast_base))
    again, _ = ai_feedback_pairs(labelled, cfg, base=str(fast_base))
    assert first == again and len(first) == 2 and summary["sets"] == 2
    assert all(p.weight == cfg.ai_feedback_weight and p.winner != p.loser for p in first)
    reward_model = load_latest(ctx=labelled)
    for p in first:  # stored (load_image works) and ranked winner over loser by the reward model
        images = [labelled.images.open(p.winner), labelled.images.open(p.loser)]
        scores = reward_model.score(p.prompt, images)
        assert float(scores[0]) > float(scores[1])
    other, _ = ai_feedback_pairs(labelled, DPOConfig(**{**RUN, "seed": 2}, **AI), base=str(fast_base))
    assert {p.winner for p in other} != {p.winner for p in first}, "the seed does not pick the draws"


def test_ai_sets_come_from_the_parent_the_run_starts_at(labelled, tiny_clip, fast_base, tmp_path):
    from finetune.lora import ParentLora, file_sha256
    from tests.generator.tiny_models import make_lora

    register_reward_model(labelled, tiny_clip)
    lora_dir = make_lora(fast_base, tmp_path / "parent")
    parent = ParentLora(name="v2", lora_dir=str(lora_dir),
                        sha256=file_sha256(lora_dir / lora_io.LORA_WEIGHT_NAME))
    cfg = DPOConfig(**RUN, **AI)
    from_base, s_base = ai_feedback_pairs(labelled, cfg, base=str(fast_base))
    from_parent, s_parent = ai_feedback_pairs(labelled, cfg, base=str(fast_base), parent=parent)
    assert (s_base["drawn_by"], s_parent["drawn_by"]) == ("base", "v2")
    images = lambda pairs: {p.winner for p in pairs} | {p.loser for p in pairs}  # noqa: E731
    assert from_parent and not images(from_parent) & images(from_base)  # same seeds, other model: other images


def test_a_newer_reward_model_makes_a_new_run(labelled, tiny_clip, capsys):
    import json

    from pickloop.cli import main

    register_reward_model(labelled, tiny_clip)
    args = ["finetune", "run", "--method", "dpo", "--min-new-labels", "0", "--config", json.dumps({**RUN, **AI})]
    assert main(args) == 0 and "registered as a candidate" in capsys.readouterr().out
    assert main(args) == 0 and "already done" in capsys.readouterr().out  # same labels, same reward model
    rid = register_reward_model(labelled, tiny_clip)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "registered as a candidate" in out and f"-rm{rid}" in out


def test_missing_reward_model_is_one_clear_error(labelled, tmp_path):
    with pytest.raises(UserError, match="needs a trained reward model: run `pickloop reward train`") as err:
        run_dpo(labelled, DPOConfig(**RUN, **AI), out_dir=tmp_path / "x")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_settings_validation_and_hash():
    for bad in ({"ai_feedback_sets": -1}, {"ai_feedback_candidates": 1}, {"ai_feedback_weight": -0.5},
                {"ai_feedback_weight": float("nan")}):
        with pytest.raises(UserError):
            DPOConfig(**bad)
    assert (DPOConfig().config_hash() == DPOConfig(ai_feedback_weight=0.9).config_hash()
            == DEFAULT_HASH_BEFORE_AI_FEEDBACK)
    on = DPOConfig(ai_feedback_sets=8)
    assert on.config_hash() != DPOConfig().config_hash()
    assert DPOConfig(ai_feedback_sets=8, ai_feedback_weight=0.25).config_hash() != on.config_hash()
    assert DPOConfig(ai_feedback_sets=8, ai_feedback_candidates=2).config_hash() != on.config_hash()
    plan = plan_sets(["a", "b", "c"], 5, 3, seed=0)
    assert sorted(p for p, _ in plan[:3]) == ["a", "b", "c"] and all(len(s) == 3 for _, s in plan)
    with pytest.raises(UserError):
        plan_sets([], 1, 2, seed=0)


def test_weighted_loss_is_mean_of_weight_times_pair_loss(labelled):
    from finetune import models as fm
    from finetune.dpo import noise_and_timesteps, store_pairs

    assert normalised_weights([PairSpec("p", "a", "b")] * 3) is None  # all human: the unweighted path
    assert normalised_weights([PairSpec("p", "a", "b"), PairSpec("p", "a", "b", 0.5)]) == [4 / 3, 2 / 3]
    m = fm.load_train_models(str(labelled.base_model))
    lora_io.add_lora(m.unet, rank=4)
    with torch.no_grad():
        for p in lora_io.lora_parameters(m.unet):
            p.add_(0.1 * torch.randn_like(p))  # policy != reference, so pair losses differ
    pairs = store_pairs(labelled)
    lw = fm.latents_for(m, [p.winner for p in pairs], labelled.images.open)
    ll = fm.latents_for(m, [p.loser for p in pairs], labelled.images.open)
    cond = fm.text_conditioning(m, [p.prompt for p in pairs])
    noise, ts = noise_and_timesteps(range(len(pairs)), 0, tuple(lw.shape[1:]), 1000)
    with torch.no_grad():
        errors = denoising_errors(m.unet, m.noise_scheduler, lw, ll, cond, noise, ts)
        plain, per = dpo_loss(*errors, beta=2500.0)
        ones, _ = dpo_loss(*errors, 2500.0, torch.ones(len(pairs)))
        w = torch.tensor([1.5, 0.0, 1.5])
        weighted, per_w = dpo_loss(*errors, 2500.0, w)
    assert torch.equal(ones, plain)
    assert weighted.item() == pytest.approx(float((per["loss"] * w).mean()), rel=1e-6)
    assert torch.equal(per_w["loss"], per["loss"])  # logged per-pair figures stay unweighted

"""DDPO: the sampler's step log-probability, the PPO ratio, stat tracking, a tiny run, the drift guard."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch.distributions import Normal

from finetune.ddpo import PerPromptStatTracker, ppo_loss, train_ddpo
from finetune.ddpo.config import DDPOConfig
from finetune.ddpo.rewards import make_reward
from finetune.ddpo.sampler import (ddim_step_log_prob, decode_images, make_ddim_scheduler, policy_log_prob,
                                   sample_trajectories, to_pil)
from finetune.lora import add_lora, lora_named_parameters, lora_tensors
from pickloop.errors import UserError

SHAPES_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       prediction_type="v_prediction", rescale_betas_zero_snr=True, clip_sample=False,
                       set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=0)
SD15_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                     prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
PROMPTS = ["a red circle", "a large blue square on a white background"]


@pytest.fixture
def pipe(tiny_base):
    """The embedded shapes pipeline when it has been shipped, else the tiny random one."""
    from pickloop.shapes.models import default_pipeline_dir

    folder = default_pipeline_dir() if (default_pipeline_dir() / "model_index.json").exists() else tiny_base
    p = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    return p


def left_minus_right(prompts, images) -> torch.Tensor:
    """Brightness of the left half minus the right half: a reward no normalisation layer can hide."""
    px = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    half = px.shape[2] // 2
    return torch.from_numpy(px[:, :, :half].mean(axis=(1, 2, 3)) - px[:, :, half:].mean(axis=(1, 2, 3)))


def small_config(**kw) -> DDPOConfig:
    # Training batches as large as sampling batches: the same kernels run, so the first ratio is bitwise 1.
    base = dict(epochs=2, sample_batch_size=4, sample_batches_per_epoch=2, train_batch_size=4, steps=4,
                timestep_fraction=0.5, drift_prompts=2, drift_max_pixel=None, drift_max_follow_drop=None)
    return DDPOConfig(**{**base, **kw})


# ---------------------------------------------------------------- the step's log-probability

@pytest.mark.parametrize("schedule", [SHAPES_SCHEDULE, SD15_SCHEDULE], ids=["v-zero-snr-trailing", "sd15-eps"])
def test_step_log_prob_is_normal_density_of_ddim_step(schedule):
    sched = DDIMScheduler(**schedule)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps[[0, 1, 5, -1]]:
        out, x, z = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
        prev = sched.step(out, t, x, eta=1.0, variance_noise=z).prev_sample
        if sched.alphas_cumprod[t] == 0:
            # Zero terminal SNR: DDIM's direction term sqrt(1 - a_prev - sigma^2) is 0 in exact arithmetic, and
            # some diffusers versions take the square root of its rounding (NaN). Ours is finite: x0 scaled.
            a_prev = sched.alphas_cumprod[t - sched.config.num_train_timesteps // 10]
            got_prev, got = ddim_step_log_prob(sched, out, t, x, prev_sample=x, eta=1.0)
            assert torch.isfinite(got).all()
            mean = a_prev ** 0.5 * (-out)  # v-prediction at alpha_bar 0: x0 = -v
            std = (1 - a_prev) ** 0.5
            expected = Normal(mean.double(), std.double()).log_prob(x.double()).mean(dim=(1, 2, 3))
            torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
            continue
        # Mean and std implied by diffusers' step: its output is mean + std * variance_noise.
        mean = sched.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(z)).prev_sample
        std = sched.step(out, t, x, eta=1.0, variance_noise=torch.ones_like(z)).prev_sample - mean
        expected = Normal(mean.double(), std.double()).log_prob(prev.double()).mean(dim=(1, 2, 3))
        got_prev, got = ddim_step_log_prob(sched, out, t, x, prev_sample=prev, eta=1.0)
        assert torch.equal(got_prev, prev)
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
        # Drawing from the same generator reproduces diffusers' own sample.
        ours, _ = ddim_step_log_prob(sched, out, t, x, generator=torch.Generator().manual_seed(7))
        theirs = sched.step(out, t, x, eta=1.0, generator=torch.Generator().manual_seed(7)).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_step_log_prob_accepts_one_timestep_per_sample():
    sched = DDIMScheduler(**SHAPES_SCHEDULE)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    out, x, prev = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    ts = sched.timesteps[[0, 4, 9]]
    _, mixed = ddim_step_log_prob(sched, out, ts, x, prev_sample=prev)
    single = torch.cat([ddim_step_log_prob(sched, out[i:i + 1], ts[i], x[i:i + 1], prev_sample=prev[i:i + 1])[1]
                        for i in range(3)])
    torch.testing.assert_close(mixed, single)
    with pytest.raises(ValueError):
        ddim_step_log_prob(sched, out, ts, x, prev_sample=prev, eta=0.0)


def test_zero_snr_first_step_stays_finite_when_rounding_goes_below_zero():
    # With alpha_bar_t = 0 the step's sigma_t^2 equals 1 - alpha_bar_prev, so the direction term's
    # 1 - alpha_bar_prev - sigma_t^2 is 0 in exact arithmetic; for this alpha_bar_prev float32 rounding
    # makes it negative (as a GPU's kernels may for the shapes schedule).
    sched = DDIMScheduler(**SHAPES_SCHEDULE)
    sched.set_timesteps(10)
    t = sched.timesteps[0]
    prev_t = int(t) - sched.config.num_train_timesteps // sched.num_inference_steps
    assert float(sched.alphas_cumprod[t]) == 0.0
    sched.alphas_cumprod[prev_t] = 0.49625658988952637
    a_prev = sched.alphas_cumprod[prev_t]
    assert 1 - a_prev - ((1 - a_prev) ** 0.5) ** 2 < 0
    g = torch.Generator().manual_seed(3)
    out, x = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    prev, logp = ddim_step_log_prob(sched, out, t, x, generator=g)
    assert torch.isfinite(prev).all() and torch.isfinite(logp).all()


@pytest.mark.parametrize("schedule", [SHAPES_SCHEDULE, SD15_SCHEDULE], ids=["v-zero-snr-trailing", "sd15-eps"])
def test_step_std_is_the_noise_scale_of_ddim_steps_and_picks_the_trainable_steps(schedule):
    from finetune.ddpo.train import trainable_steps
    from finetune.ddpo.sampler import step_std

    sched = DDIMScheduler(**schedule)
    sched.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    out, x = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    stds = step_std(sched, sched.timesteps, eta=1.0)
    for t, std in zip(sched.timesteps, stds):
        if sched.alphas_cumprod[t] == 0:  # zero terminal SNR: sigma = sqrt(1 - a_prev) (diffusers may give NaN here)
            a_prev = sched.alphas_cumprod[t - sched.config.num_train_timesteps // 10]
            torch.testing.assert_close(std, (1 - a_prev) ** 0.5)
            continue
        zero = sched.step(out, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample
        one = sched.step(out, t, x, eta=1.0, variance_noise=torch.ones_like(x)).prev_sample
        torch.testing.assert_close((one - zero).mean(), std, rtol=1e-4, atol=1e-5)
    assert torch.all(stds[:-1] > stds[1:]) and stds[-1] < 0.05  # falling; the last step adds almost no noise
    torch.testing.assert_close(step_std(sched, sched.timesteps, eta=0.5), 0.5 * stds)
    assert trainable_steps(sched, sched.timesteps, DDPOConfig(min_step_std=0.0)).tolist() == list(range(10))
    between = float(stds[-2] + stds[-1]) / 2
    assert trainable_steps(sched, sched.timesteps, DDPOConfig(min_step_std=between)).tolist() == list(range(9))
    with pytest.raises(UserError, match="min_step_std"):
        trainable_steps(sched, sched.timesteps, DDPOConfig(min_step_std=2.0))


def test_first_ppo_ratio_on_fresh_trajectories_is_exactly_one(pipe):
    add_lora(pipe.unet, rank=4)
    with torch.no_grad():  # a LoRA that does something, so the check covers the adapter path
        for p in lora_named_parameters(pipe.unet).values():
            p.normal_(0, 0.05)
    sched = make_ddim_scheduler(pipe)
    pipe.unet.eval()
    traj = sample_trajectories(pipe, pipe.unet, sched, PROMPTS * 2, steps=4, guidance=5.0,
                               generator=torch.Generator().manual_seed(0))
    assert traj.latents.shape[:2] == traj.next_latents.shape[:2] == traj.log_probs.shape == (4, 4)
    pipe.unet.train()
    batch = traj.select([2, 0, 3, 1])  # shuffled samples, one random step each: as training does
    cols = torch.tensor([3, 0, 2, 1])
    rows = torch.arange(4)
    logp = policy_log_prob(pipe.unet, sched, batch.latents[rows, cols], batch.timesteps[rows, cols],
                           batch.next_latents[rows, cols], batch.embeds, batch.negative_embeds, 5.0, 1.0)
    _, ratio = ppo_loss(logp, batch.log_probs[rows, cols], torch.ones(4), 1e-4)
    assert torch.equal(ratio, torch.ones(4))


def test_ppo_loss_clips_the_ratio():
    old = torch.zeros(4)
    new = torch.tensor([0.0, 0.5, -0.5, 0.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, ratio = ppo_loss(new, old, adv, clip_range=0.1)
    loss.backward()
    # Ratio above 1+c with a positive advantage (and below 1-c with a negative one) gives no gradient.
    assert new.grad[1] == 0 and new.grad[2] == 0
    assert new.grad[0] != 0 and new.grad[3] != 0
    torch.testing.assert_close(ratio, torch.exp(new.detach()))


# ---------------------------------------------------------------- per-prompt stat tracking

def test_stat_tracker_uses_batch_stats_until_min_count_then_the_prompts_own():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    prompts = ["a", "a", "b", "b"]
    rewards = torch.tensor([1.0, 3.0, 10.0, 14.0])
    adv = tracker.update(prompts, rewards)
    r = rewards.double().numpy()
    torch.testing.assert_close(adv, torch.from_numpy((r - r.mean()) / (r.std() + 1e-6)).float())
    adv = tracker.update(["a", "b"], torch.tensor([2.0, 12.0]))  # now 3 rewards each: per-prompt statistics
    np.testing.assert_allclose(adv.numpy(), [0.0, 0.0], atol=1e-6)
    tracker.update(["a", "a"], torch.tensor([5.0, 5.0]))
    assert list(tracker.buffers["a"]) == [3.0, 2.0, 5.0, 5.0]  # only the last buffer_size kept
    restored = PerPromptStatTracker(buffer_size=4, min_count=3)
    restored.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(restored.update(["a"], torch.tensor([1.0])), tracker.update(["a"], torch.tensor([1.0])))


def test_registered_rewards_score_rendered_shapes():
    from pickloop.shapes.world import Scene, Shape, render

    prompts = ["a circle", "a circle"]
    warm = render(Scene("white", (Shape("circle", "red", "large", "center"),)))
    cold = render(Scene("white", (Shape("circle", "blue", "large", "center"),)))
    for spec in ("taste:warm", "redness"):
        r = make_reward(spec)(prompts, [warm, cold])
        assert r.shape == (2,) and r.dtype == torch.float32 and r[0] > r[1], spec
    judged = make_reward("judge")(["a red circle", "a red circle"], [warm, cold])
    assert judged.tolist() == [1.0, 0.5]  # share of fixed attributes shown: colour wrong, shape right
    with pytest.raises(UserError):
        make_reward("taste:no-such-taste")


def test_config_and_reward_registry_reject_mistakes():
    with pytest.raises(UserError):
        DDPOConfig(eta=0.0)
    with pytest.raises(UserError):
        DDPOConfig(stat_min_count=40, stat_buffer=32)
    with pytest.raises(UserError):
        DDPOConfig.from_dict({"lerning_rate": 1.0})
    for bad in ({"images_per_prompt": 0}, {"min_step_std": -0.1}):
        with pytest.raises(UserError):
            DDPOConfig(**bad)
    with pytest.raises(UserError):
        make_reward("aesthetics")
    assert DDPOConfig().config_hash() != DDPOConfig(lr=1e-3).config_hash()


# ---------------------------------------------------------------- training

def fixed_seed_reward(pipe, reward_fn, n: int = 8) -> float:
    sched = make_ddim_scheduler(pipe)
    pipe.unet.eval()
    traj = sample_trajectories(pipe, pipe.unet, sched, (PROMPTS * n)[:n], steps=4, guidance=5.0,
                               generator=torch.Generator().manual_seed(123))
    return float(reward_fn(traj.prompts, to_pil(decode_images(pipe, traj.final_latents))).mean())


@pytest.mark.slow
def test_tiny_run_moves_only_lora_and_raises_the_reward(tiny_base):
    # Always the tiny random model: the margins below were measured on it (deterministic on CPU).
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_base), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    frozen = {n: p.detach().clone() for n, p in [*pipe.vae.named_parameters(), *pipe.text_encoder.named_parameters()]}
    base_reward = fixed_seed_reward(pipe, left_minus_right)
    cfg = small_config(epochs=5, lr=1e-2, clip_range=0.2)
    lora, history = train_ddpo(pipe, PROMPTS, left_minus_right, cfg, progress=False)
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    assert all(h["first_ratio_dev"] == 0.0 for h in history)  # each epoch's first ratio is exactly 1
    after = dict(pipe.unet.named_parameters())
    for name, p in after.items():
        if "lora_" in name:
            continue
        assert torch.equal(p.detach(), before[name.replace(".base_layer", "")]), name
    assert any(not torch.all(v == 0) for k, v in lora.items() if "lora_B" in k)
    for name, p in [*pipe.vae.named_parameters(), *pipe.text_encoder.named_parameters()]:
        assert torch.equal(p.detach(), frozen[name])
    # The random tiny model's images vary little (reward std ~0.005), so the margins are small but real.
    assert np.mean([h["reward_mean"] for h in history[-2:]]) > history[0]["reward_mean"] + 0.002
    assert fixed_seed_reward(pipe, left_minus_right) > base_reward + 0.001
    assert all(h["epoch_s"] >= h["sample_s"] + h["train_s"] > 0 for h in history)


@pytest.mark.parametrize("action, patience", [("rollback", 0), ("stop", 0), ("rollback", 1)])
def test_drift_guard_stops_and_rolls_back(pipe, action, patience):
    cfg = small_config(epochs=3, lr=1e-2, clip_range=0.2, drift_max_pixel=1e-9, drift_action=action,
                       drift_patience=patience)
    add_lora(pipe.unet, rank=cfg.lora_rank)
    initial = lora_tensors(pipe.unet)
    lora, history = train_ddpo(pipe, PROMPTS, left_minus_right, cfg, progress=False, drift_prompts=PROMPTS)
    assert len(history) == patience + 1  # every epoch crosses: stopped after patience + 1 of them
    assert all("pixel drift" in h["drift_over"] for h in history)
    assert all(h["guard"] is None for h in history[:-1])  # within the patience the run goes on
    row = history[-1]
    assert row["drift_pixel"] > 1e-9 and "pixel drift" in row["guard"] and "stopped" in row["guard"]
    same = all(torch.equal(lora[k], initial[k]) for k in initial)
    if action == "rollback":  # back to the last epoch within the limits: none was, so the start
        assert same and "rolled back" in row["guard"]
    else:
        assert not same


def test_a_run_that_ends_past_a_drift_limit_keeps_the_last_good_lora(pipe):
    cfg = small_config(epochs=1, lr=1e-2, clip_range=0.2, drift_max_pixel=1e-9, drift_patience=1)
    add_lora(pipe.unet, rank=cfg.lora_rank)
    initial = lora_tensors(pipe.unet)
    lora, history = train_ddpo(pipe, PROMPTS, left_minus_right, cfg, progress=False, drift_prompts=PROMPTS)
    assert len(history) == 1 and "at the last epoch" in history[0]["guard"] and "rolled back" in history[0]["guard"]
    assert all(torch.equal(lora[k], initial[k]) for k in initial)


# ---------------------------------------------------------------- the job entry point

@pytest.fixture
def tiny_ctx(home, tiny_base, monkeypatch):
    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_base))
    from pickloop.context import Context

    return Context()


@pytest.mark.slow
def test_run_ddpo_writes_a_loadable_lora_and_resumes_like_an_uninterrupted_run(tiny_ctx, tmp_path):
    from finetune.ddpo import run_ddpo
    from finetune.lora import load_lora_state

    def run(epochs: int, name: str):
        cfg = small_config(epochs=epochs, lr=1e-2, clip_range=0.2, drift_prompts=0)
        return run_ddpo(tiny_ctx, cfg, out_dir=tmp_path / name, work_dir=tmp_path / f"work-{name}", upto=7,
                        prompts=PROMPTS, reward_fn=left_minus_right, progress=False)

    whole = run(2, "whole")
    run(1, "split")  # "killed" after one epoch: its checkpoint stays in work-split
    resumed = run(2, "split")
    assert [h["epoch"] for h in resumed.metrics["history"]] == [0, 1]
    timing = ("epoch_s", "sample_s", "train_s", "epoch_cpu_s", "sample_cpu_s", "train_cpu_s")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]  # noqa: E731
    assert strip(resumed.metrics["history"]) == strip(whole.metrics["history"])
    t_whole, cfg = load_lora_state(whole.lora_dir, expected_sha256=whole.lora_sha256)
    t_resumed, _ = load_lora_state(resumed.lora_dir, expected_sha256=resumed.lora_sha256)
    assert cfg["r"] == 4 and set(t_whole) == set(t_resumed)
    assert all(torch.equal(t_whole[k], t_resumed[k]) for k in t_whole)
    assert any(k.endswith("lora.up.weight") and not torch.all(v == 0) for k, v in t_whole.items())
    # The file loads in plain diffusers and changes a fixed-seed image.
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_ctx.base_model), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kw = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")
    before = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    pipe.load_lora_weights(str(whole.lora_dir), weight_name="pytorch_lora_weights.safetensors", use_safetensors=True)
    after = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kw).images
    assert not np.array_equal(before, after)


# ---------------------------------------------------------------- pickloop bench ddpo

def _bench_args(*argv: str):
    import argparse

    from finetune.bench.ddpo import register_bench

    parser = argparse.ArgumentParser()
    register_bench(parser.add_subparsers(dest="bench_cmd"))
    return parser.parse_args(["ddpo", *argv])


def test_bench_ddpo_prints_its_figures_last(tiny_base, capsys):
    import re

    args = _bench_args("--epochs", "1", "--base", str(tiny_base), "--reward", "brightness", "--sample-batch-size",
                       "2", "--batches", "1", "--train-batch-size", "2", "--steps", "2", "--drift-prompts", "1")
    assert args.func(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"epoch_s=[\d.]+ sample_s=[\d.]+ train_s=[\d.]+ floor_ratio=[\d.]+ peak_rss_mb=[\d.]+",
                        last), last


def test_bench_ddpo_reference_trl_without_the_extra_says_how_to_install(tiny_base, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "trl", None)  # as when the optional extra is not installed
    args = _bench_args("--base", str(tiny_base), "--reference", "trl")
    assert args.func(args) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "pip install 'pickloop[trl-reference]'" in out[0]


def test_finetune_job_runs_ddpo_and_registers_a_candidate(labelled):
    from sqlmodel import select

    from finetune.jobs import run_finetune_job
    from pickloop.db import read_session
    from pickloop.schema import ModelVersion

    overrides = dict(epochs=1, sample_batch_size=2, sample_batches_per_epoch=1, train_batch_size=2, steps=2,
                     reward="brightness", drift_prompts=1)
    outcome = run_finetune_job(labelled, method="ddpo", overrides=overrides)
    assert outcome.status == "done", outcome.message
    with read_session(labelled.engine) as s:
        version = s.exec(select(ModelVersion).where(ModelVersion.name == outcome.version)).one()
    assert version.method == "ddpo" and version.status == "candidate"
    assert len(version.metrics["history"]) == 1 and "reward_mean" in version.metrics["history"][0]
    assert run_finetune_job(labelled, method="ddpo", overrides=overrides).status in ("nothing-new", "already-done")


def test_a_ddpo_run_rolled_back_to_its_start_registers_no_version(labelled):
    from sqlmodel import select

    from finetune.jobs import run_finetune_job
    from pickloop.db import read_session
    from pickloop.schema import Job, ModelVersion

    overrides = dict(epochs=2, sample_batch_size=2, sample_batches_per_epoch=1, train_batch_size=2, steps=2,
                     reward="brightness", drift_prompts=1, drift_max_pixel=1e-9, drift_patience=0)
    outcome = run_finetune_job(labelled, method="ddpo", overrides=overrides)
    assert outcome.status == "no-change" and outcome.version is None and outcome.exit_code == 0, outcome.message
    assert "pixel drift" in outcome.message and "no version registered" in outcome.message
    with read_session(labelled.engine) as s:
        assert s.exec(select(ModelVersion).where(ModelVersion.method == "ddpo")).all() == []
        job = s.exec(select(Job).where(Job.kind == "finetune-ddpo")).one()
    assert job.status == "done" and job.output["version"] is None
    assert not any(labelled.settings.lora_dir.glob("ddpo-*"))  # no LoRA file written either
    again = run_finetune_job(labelled, method="ddpo", overrides=overrides, min_new_labels=0)
    assert again.status == "already-done" and "changed nothing" in again.message

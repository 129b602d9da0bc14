"""Fine-tuning that continues from the promoted parent's LoRA: start, reference, data, resume, job keys."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune import lora as lora_io
from finetune import models as fm
from finetune.dpo import DPOConfig, denoising_errors, dpo_loss, noise_and_timesteps, run_dpo, store_pairs, train_dpo
from pickloop.errors import UserError


def _random_lora(base, folder, *, rank=4, alpha=4.0, seed=0, scale=0.2):
    m = fm.load_train_models(str(base))
    lora_io.add_lora(m.unet, rank=rank, alpha=alpha)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in lora_io.lora_parameters(m.unet):
            p.copy_(torch.randn_like(p) * scale)
    sha = lora_io.save_lora(m.unet, folder)
    return lora_io.ParentLora("parent", str(folder), sha), lora_io.lora_tensors(m.unet)


@pytest.fixture
def parent(labelled, tmp_path):
    return _random_lora(labelled.base_model, tmp_path / "parent")


def _batch(ctx, m):
    pairs = store_pairs(ctx)
    lw = fm.latents_for(m, [p.winner for p in pairs], ctx.images.open)
    ll = fm.latents_for(m, [p.loser for p in pairs], ctx.images.open)
    cond = fm.text_conditioning(m, [p.prompt for p in pairs])
    noise, ts = noise_and_timesteps(range(len(pairs)), 0, tuple(lw.shape[1:]), 1000)
    return lw, ll, cond, noise, ts


def test_start_from_parent_copies_it_and_makes_it_the_reference(labelled, parent):
    spec, parent_tensors = parent
    m = fm.load_train_models(str(labelled.base_model))
    config = lora_io.start_lora(m.unet, rank=8, parent=spec, reference=True)
    assert config["r"] == 4  # the parent's rank wins over the settings'
    start = lora_io.lora_tensors(m.unet)
    assert start.keys() == parent_tensors.keys()
    assert all(torch.equal(start[k], parent_tensors[k]) for k in start), "the run does not start at the parent"
    assert all(p.requires_grad for p in lora_io.lora_parameters(m.unet))
    frozen = [n for n, p in m.unet.named_parameters() if f".{lora_io.REFERENCE_ADAPTER}." in n]
    assert frozen and not any(p.requires_grad for n, p in m.unet.named_parameters() if n in frozen)

    # Policy == reference at the start: the DPO loss is exactly log 2 and every error gap is 0. Against
    # the base as reference this parent would give gaps far from 0.
    lw, ll, cond, noise, ts = _batch(labelled, m)
    loss, per = dpo_loss(*denoising_errors(m.unet, m.noise_scheduler, lw, ll, cond, noise, ts), beta=2500.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert torch.all(per["gap_w"].abs() < 1e-6) and torch.all(per["gap_l"].abs() < 1e-6)
    with torch.no_grad(), lora_io.adapters_disabled(m.unet) as base:
        x = m.noise_scheduler.add_noise(lw, noise, ts)
        base_out = base(x, ts, **cond).sample
    with torch.no_grad():
        with lora_io.reference_model(m.unet) as ref:
            ref_out = ref(x, ts, **cond).sample
        policy_out = m.unet(x, ts, **cond).sample
    assert torch.allclose(ref_out, policy_out, atol=1e-6) and not torch.allclose(ref_out, base_out, atol=1e-3)
    # after the reference pass the trainable adapter is active and trainable again, the reference frozen
    assert all(p.requires_grad for p in lora_io.lora_parameters(m.unet))
    assert not any(p.requires_grad for n, p in m.unet.named_parameters() if n in frozen)
    assert m.unet.active_adapters() == [lora_io.ADAPTER_NAME]


def test_stacked_run_moves_from_the_parent_not_from_zero(labelled, parent, tmp_path):
    spec, parent_tensors = parent
    cfg = DPOConfig(steps=3, batch_size=2, lr=1e-3, checkpoint_every=0, log_every=0)
    result = run_dpo(labelled, cfg, out_dir=tmp_path / "child", parent=spec)
    child = fm.load_train_models(str(labelled.base_model))
    lora_io.load_lora_into(child.unet, result.lora_dir)
    got = lora_io.lora_tensors(child.unet)
    drift = max(float((got[k] - parent_tensors[k]).abs().max()) for k in got)
    assert 0 < drift < 0.05, f"child LoRA is {drift} away from its parent's"
    fresh = run_dpo(labelled, cfg, out_dir=tmp_path / "fresh")  # from the base: lora_B starts at 0
    other = lora_io.load_lora_state(fresh.lora_dir)[0]
    assert max(float(v.abs().max()) for k, v in other.items() if "lora_B" in k or ".up." in k) < 0.05
    manifest = json.loads((tmp_path / "child" / lora_io.MANIFEST_NAME).read_text())["metadata"]
    assert manifest["parent"]["sha256"] == spec.sha256 and manifest["adapter"]["r"] == 4


def test_stacked_run_trains_on_labels_newer_than_the_parent(labelled, parent, tmp_path):
    spec, _ = parent
    newest = max(p.judgement_id for p in _all_pairs(labelled))
    done = lora_io.ParentLora(spec.name, spec.lora_dir, spec.sha256, data_snapshot=newest)
    cfg = DPOConfig(steps=1, batch_size=2, checkpoint_every=0, log_every=0)
    with pytest.raises(UserError, match="no preference pairs"):
        run_dpo(labelled, cfg, out_dir=tmp_path / "x", parent=done)
    every = DPOConfig(steps=1, batch_size=2, checkpoint_every=0, log_every=0, since_parent=False)
    assert run_dpo(labelled, every, out_dir=tmp_path / "y", parent=done).metrics["human_pairs"] == 3
    assert every.config_hash() != cfg.config_hash() and cfg.config_hash() == DPOConfig(
        steps=1, batch_size=2).config_hash()


def _all_pairs(ctx):
    from pickloop.db import read_session
    from pickloop.store import preference_pairs

    with read_session(ctx.engine) as s:
        return preference_pairs(session=s, include_ties=False)


def test_stacked_resume_matches_uninterrupted_and_checks_the_parent(labelled, parent, tmp_path):
    spec, _ = parent
    pairs = store_pairs(labelled)

    def train(steps, out, work, parent_lora=spec):
        cfg = DPOConfig(steps=steps, batch_size=2, lr=1e-3, checkpoint_every=1, log_every=0, seed=3)
        return train_dpo(cfg, base=str(labelled.base_model), pairs=pairs, load_image=labelled.images.open,
                         out_dir=out, work_dir=work, parent=parent_lora)

    train(4, tmp_path / "ref", tmp_path / "w-ref")
    train(2, tmp_path / "cut", tmp_path / "w")  # stops after the checkpoint of step 1
    with pytest.raises(UserError, match="continues from parent"):
        train(4, tmp_path / "out", tmp_path / "w", parent_lora=None)
    train(4, tmp_path / "out", tmp_path / "w")
    a, b = lora_io.load_lora_state(tmp_path / "out")[0], lora_io.load_lora_state(tmp_path / "ref")[0]
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


LOAD_IN_PLAIN_DIFFUSERS = """
import sys
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], safety_checker=None)
pipe.load_lora_weights(sys.argv[2], weight_name="pytorch_lora_weights.safetensors", use_safetensors=True)
assert "pickloop" not in sys.modules and "finetune" not in sys.modules
print(pipe.get_active_adapters())
"""


def test_job_continues_from_the_promoted_version(labelled, monkeypatch):
    from finetune.jobs import run_finetune_job
    from pickloop.db import read_session
    from pickloop.schema import Job
    from pickloop.store import find_version, promote
    from pickloop.db import write_session
    from tests.finetune.conftest import add_labelled_sets

    tiny = {"steps": 2, "batch_size": 2, "checkpoint_every": 0, "log_every": 0}
    first = run_finetune_job(labelled, min_new_labels=1, overrides=tiny)
    with write_session(labelled.engine) as s:
        promote(session=s, version=find_version(session=s, ref=first.version))
    add_labelled_sets(labelled, n_sets=2, split="train", seed=1)
    second = run_finetune_job(labelled, min_new_labels=1, overrides=tiny)
    assert second.status == "done" and second.version != first.version
    with read_session(labelled.engine) as s:
        parent = find_version(session=s, ref=first.version)
        child = find_version(session=s, ref=second.version)
        job = s.get(Job, second.job_id)
    assert child.parent_id == parent.id and job.run_key.endswith(f":from-{parent.lora_sha256[:16]}")
    meta = json.loads((Path(child.lora_path) / lora_io.MANIFEST_NAME).read_text())["metadata"]
    assert meta["parent"]["name"] == parent.name and meta["labels_after"] == parent.data_snapshot
    out = subprocess.run([sys.executable, "-c", LOAD_IN_PLAIN_DIFFUSERS, str(labelled.base_model), child.lora_path],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


def test_ddpo_starts_and_resumes_from_the_parent(home, tiny_base, monkeypatch, tmp_path):
    from finetune.ddpo import run_ddpo
    from finetune.ddpo.config import DDPOConfig
    from pickloop.context import Context

    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_base))
    ctx = Context()
    spec, parent_tensors = _random_lora(tiny_base, tmp_path / "parent", rank=2, alpha=2.0)
    brightness = lambda prompts, images: torch.tensor(  # noqa: E731
        [float(np.asarray(im.convert("L"), dtype=np.float32).mean()) for im in images])

    def run(epochs: int, name: str):
        cfg = DDPOConfig(epochs=epochs, sample_batch_size=2, sample_batches_per_epoch=1, train_batch_size=2, steps=2,
                         timestep_fraction=0.5, drift_prompts=0, lr=1e-9, lora_rank=4)
        return run_ddpo(ctx, cfg, out_dir=tmp_path / name, work_dir=tmp_path / f"work-{name}", upto=1,
                        prompts=["a red circle", "a blue square"], reward_fn=brightness, progress=False, parent=spec)

    run(1, "split")
    resumed = run(2, "split")  # resumes at epoch 1 from the checkpoint of a parent-shaped adapter
    got, config = lora_io.load_lora_state(resumed.lora_dir, expected_sha256=resumed.lora_sha256)
    assert config["r"] == 2 and resumed.epochs == 2
    start = lora_io.peft_keys({k.removeprefix("unet."): v for k, v in got.items()})
    want = {k.replace(f".{lora_io.ADAPTER_NAME}.", "."): v for k, v in parent_tensors.items()}
    assert start.keys() == want.keys()
    assert max(float((start[k] - want[k]).abs().max()) for k in start) < 1e-6  # lr 1e-9: still the parent

"""Diffusion-DPO on a tiny random SD pipeline: what changes, the reference pass, the loss at start."""
from __future__ import annotations

import math

import pytest
import torch

from finetune import lora as lora_io
from finetune import models as fm
from finetune.dpo import DPOConfig, denoising_errors, dpo_loss, noise_and_timesteps, run_dpo, store_pairs


def test_every_lora_parameter_moves_and_nothing_else_does(labelled, tmp_path, monkeypatch):
    cfg = DPOConfig(steps=3, batch_size=2, lr=1e-2, checkpoint_every=0, log_every=0)
    base = fm.load_train_models(str(labelled.base_model)).unet
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    start_lora, seen = lora_io.start_lora, {}

    def watch_start(unet, **kw):  # the trained U-Net and its trainable parameters as the run starts
        out = start_lora(unet, **kw)
        seen.update(unet=unet, start={n: p.detach().clone() for n, p in unet.named_parameters() if p.requires_grad})
        return out

    monkeypatch.setattr(lora_io, "start_lora", watch_start)
    result = run_dpo(labelled, cfg, out_dir=tmp_path / "lora")
    trainable = {n: p for n, p in seen["unet"].named_parameters() if p.requires_grad}
    assert set(trainable) == set(seen["start"]) and trainable and all("lora_" in n for n in trainable)
    still = [n for n, p in trainable.items() if torch.equal(p.detach(), seen["start"][n])]
    assert not still, f"{len(still)} of {len(trainable)} LoRA parameters did not move, e.g. {still[:3]}"
    m = fm.load_train_models(str(labelled.base_model))
    lora_io.load_lora_into(m.unet, result.lora_dir)
    changed_lora = 0
    for name, p in m.unet.named_parameters():
        if "lora_" in name:
            changed_lora += int(p.detach().abs().sum() > 0 and "lora_B" in name)
        else:
            key = name.replace(".base_layer", "")
            assert torch.equal(p.detach(), before[key]), f"base parameter {name} changed"
    assert changed_lora > 0, "no LoRA up-projection moved away from zero"
    assert set(result.metrics) >= {"final_loss", "final_implicit_acc", "final_gap_w", "final_gap_l"}
    assert (tmp_path / "lora" / lora_io.LORA_WEIGHT_NAME).exists()


def test_reference_pass_equals_base_unet(labelled):
    m = fm.load_train_models(str(labelled.base_model))
    plain = fm.load_train_models(str(labelled.base_model)).unet.eval()
    lora_io.add_lora(m.unet, rank=4)
    with torch.no_grad():
        for p in lora_io.lora_parameters(m.unet):
            p.add_(torch.randn_like(p))  # a LoRA far from identity
    pairs = store_pairs(labelled)
    lat = fm.latents_for(m, [p.winner for p in pairs], labelled.images.open)
    cond = fm.text_conditioning(m, [p.prompt for p in pairs])
    noise, ts = noise_and_timesteps(range(len(pairs)), 0, tuple(lat.shape[1:]), 1000)
    x = m.noise_scheduler.add_noise(lat, noise, ts)
    m.unet.eval()
    with torch.no_grad():
        with lora_io.adapters_disabled(m.unet) as ref:
            ref_out = ref(x, ts, **cond).sample
        with lora_io.reference_model(m.unet) as ref:  # the DPO step's switch: the same base U-Net
            dpo_ref_out = ref(x, ts, **cond).sample
        adapted = m.unet(x, ts, **cond).sample
        base_out = plain(x, ts, **cond).sample
    assert torch.allclose(ref_out, base_out, atol=1e-6) and torch.equal(dpo_ref_out, ref_out)
    assert not torch.allclose(adapted, base_out, atol=1e-3)
    assert all(p.requires_grad for p in lora_io.lora_parameters(m.unet)), "adapters not re-enabled"


def test_loss_is_log2_at_start_and_uses_v_prediction(labelled):
    m = fm.load_train_models(str(labelled.base_model))
    assert m.prediction_type == "v_prediction"
    lora_io.add_lora(m.unet, rank=4)  # lora_B = 0: policy equals reference
    pairs = store_pairs(labelled)
    lw = fm.latents_for(m, [p.winner for p in pairs], labelled.images.open)
    ll = fm.latents_for(m, [p.loser for p in pairs], labelled.images.open)
    cond = fm.text_conditioning(m, [p.prompt for p in pairs])
    noise, ts = noise_and_timesteps(range(len(pairs)), 0, tuple(lw.shape[1:]), 1000)
    loss, per = dpo_loss(*denoising_errors(m.unet, m.noise_scheduler, lw, ll, cond, noise, ts), beta=2500.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert torch.all(per["gap_w"].abs() < 1e-6)


def test_config_validation_and_hash():
    from pickloop.errors import UserError

    with pytest.raises(UserError):
        DPOConfig(mixed_precision="fp8")
    with pytest.raises(UserError):
        DPOConfig.from_dict({"betta": 1})
    assert DPOConfig(cache_latents=False).config_hash() == DPOConfig().config_hash()
    assert DPOConfig(beta=5000).config_hash() != DPOConfig().config_hash()

"""Batched sampling with recorded seeds, and bit-identical redraws, on SD 1.x-style and SDXL pipelines."""
from __future__ import annotations

import pytest

from generator.pipeline import load_pipeline
from generator.sampling import redraw, sample_candidates
from pickloop.errors import UserError
from pickloop.images import png_bytes

SHAPING_KEYS = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width",
                "batch_seeds", "slot", "scheduler", "model", "model_version_id", "lora_path", "lora_sha256",
                "lora_scale", "dtype", "torch", "torch_threads"}


def _unet_calls(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.fixture(params=["sd", "sdxl"])
def pipe(request, sd_model_dir, tiny_sdxl_dir):
    return load_pipeline(str(sd_model_dir if request.param == "sd" else tiny_sdxl_dir))


def test_n_candidates_in_one_batched_call_with_recorded_seeds(pipe):
    calls, handle = _unet_calls(pipe)
    try:
        out = sample_candidates(pipe, "a red circle", 4, seeds=[11, 22, 33, 44], steps=2, height=16, width=16)
    finally:
        handle.remove()
    # one U-Net pass per step, each over all 4 images (x2 for classifier-free guidance): one batched call
    assert calls == [8, 8]
    assert [seed for _, seed, _ in out] == [11, 22, 33, 44]
    assert [p["slot"] for _, _, p in out] == [0, 1, 2, 3]
    assert all(img.size == (16, 16) for img, _, _ in out)
    assert len({png_bytes(img) for img, _, _ in out}) == 4  # each seed its own starting noise
    params = out[2][2]
    assert SHAPING_KEYS <= set(params)
    assert params["batch_seeds"] == [11, 22, 33, 44]
    assert params["scheduler"]["class"] == type(pipe.scheduler).__name__
    assert params["scheduler"]["config"]["num_train_timesteps"] == 1000
    assert (params["num_inference_steps"], params["height"], params["width"]) == (2, 16, 16)
    assert params["dtype"] == "torch.float32" and params["pipeline"] == type(pipe).__name__


def test_same_seed_same_image_other_seed_other_image(pipe):
    kw = dict(steps=2, height=16, width=16)
    a = sample_candidates(pipe, "a blue square", 2, seeds=[5, 6], **kw)
    b = sample_candidates(pipe, "a blue square", 2, seeds=[5, 7], **kw)
    assert png_bytes(a[0][0]) == png_bytes(b[0][0])
    assert png_bytes(a[1][0]) != png_bytes(b[1][0])


def test_redraw_from_the_row_alone_is_bit_identical(pipe):
    out = sample_candidates(pipe, "a small green triangle", 3, steps=2, height=16, width=16,
                            negative_prompt="blurry", guidance=3.0)
    for img, seed, params in out:
        row = {"seed": seed, "params": params}
        assert png_bytes(redraw(pipe, row)) == png_bytes(img)


def test_scheduler_by_name_is_recorded_and_redrawn_without_changing_the_pipeline(pipe):
    before = type(pipe.scheduler)
    out = sample_candidates(pipe, "a red circle", 2, steps=2, height=16, width=16,
                            scheduler="DPMSolverMultistepScheduler")
    assert type(pipe.scheduler) is before
    assert out[0][2]["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert png_bytes(redraw(pipe, {"params": out[1][2]})) == png_bytes(out[1][0])
    with pytest.raises(UserError, match="unknown scheduler"):
        sample_candidates(pipe, "x", 1, scheduler="NoSuchScheduler")


def test_defaults_come_from_the_model_folder(tiny_sd_dir):
    pipe = load_pipeline(str(tiny_sd_dir))
    params = sample_candidates(pipe, "a circle", 1)[0][2]
    assert (params["num_inference_steps"], params["guidance_scale"], params["height"], params["width"]) == \
        (2, 5.0, 16, 16)  # tiny_sd_dir's pickloop_defaults.json


def test_bad_arguments_are_one_line_errors(tiny_sd_dir):
    pipe = load_pipeline(str(tiny_sd_dir))
    with pytest.raises(UserError, match="2 seeds given for 3 images"):
        sample_candidates(pipe, "x", 3, seeds=[1, 2])
    with pytest.raises(UserError, match="multiples of 2"):
        sample_candidates(pipe, "x", 1, height=15)
    with pytest.raises(UserError, match="no recorded sampling parameters"):
        redraw(pipe, {"params": {}})

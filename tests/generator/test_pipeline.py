"""load_pipeline: local folders, the registry's LoRA versions (id, name, latest), LoRA folders, clear errors."""
from __future__ import annotations

import shutil

import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from generator.pipeline import LORA_WEIGHT_NAME, file_sha256, load_pipeline
from generator.sampling import redraw, sample_candidates
from pickloop.db import write_session
from pickloop.errors import UserError
from pickloop.images import png_bytes
from pickloop.schema import ModelVersion
from pickloop.store import ensure_base_version, promote

KW = dict(seeds=[3, 4], steps=2, height=16, width=16)


def _images(pipe, **extra):
    return [png_bytes(img) for img, _, _ in sample_candidates(pipe, "a red circle", 2, **{**KW, **extra})]


def _register_lora(ctx, tiny_lora_dir, name="dpo-1") -> ModelVersion:
    with write_session(ctx.engine) as s:
        base = ensure_base_version(session=s, base_model=ctx.base_model)
        v = ModelVersion(name=name, base_model=ctx.base_model, lora_path=str(tiny_lora_dir),
                         lora_sha256=file_sha256(tiny_lora_dir / LORA_WEIGHT_NAME), parent_id=base.id, method="dpo")
        s.add(v)
        s.flush()
        return v


def test_cached_per_model_and_lora(tiny_sd_dir, tiny_lora_dir):
    a = load_pipeline(str(tiny_sd_dir))
    assert load_pipeline(str(tiny_sd_dir)) is a
    b = load_pipeline(str(tiny_sd_dir), lora=str(tiny_lora_dir))
    assert b is not a and load_pipeline(str(tiny_sd_dir), lora=str(tiny_lora_dir)) is b
    assert a.pickloop_info.lora_path is None  # loading a LoRA elsewhere left the base pipeline alone


def test_lora_folder_changes_the_image_and_is_recorded(tiny_sd_dir, tiny_lora_dir):
    base = load_pipeline(str(tiny_sd_dir))
    pipe = load_pipeline(str(tiny_sd_dir), lora=str(tiny_lora_dir))
    assert _images(pipe) != _images(base)
    out = sample_candidates(pipe, "a red circle", 2, **KW)
    params = out[0][2]
    assert params["lora_path"] == str(tiny_lora_dir) and params["lora_scale"] == 1.0
    assert params["lora_sha256"] == file_sha256(tiny_lora_dir / LORA_WEIGHT_NAME)
    assert png_bytes(redraw(pipe, {"params": out[1][2]})) == png_bytes(out[1][0])
    with pytest.raises(UserError, match="another LoRA"):
        redraw(base, {"params": params})
    half = sample_candidates(pipe, "a red circle", 2, lora_scale=0.5, **KW)
    assert half[0][2]["lora_scale"] == 0.5 and png_bytes(half[0][0]) != png_bytes(out[0][0])
    assert png_bytes(redraw(pipe, {"params": half[0][2]})) == png_bytes(half[0][0])


def test_lora_by_version_id_name_and_latest(gen_ctx, tiny_lora_dir):
    v = _register_lora(gen_ctx, tiny_lora_dir)
    by_folder = _images(load_pipeline(lora=str(tiny_lora_dir), ctx=gen_ctx))
    by_id = load_pipeline(lora=v.id, ctx=gen_ctx)
    assert by_id.pickloop_info.model_version_id == v.id and by_id.pickloop_info.model_version_name == "dpo-1"
    assert _images(by_id) == by_folder
    assert _images(load_pipeline(lora="dpo-1", ctx=gen_ctx)) == by_folder
    latest = load_pipeline(lora="latest", ctx=gen_ctx)  # the base version is promoted so far
    assert latest.pickloop_info.lora_path is None and _images(latest) != by_folder
    with write_session(gen_ctx.engine) as s:
        promote(session=s, version=s.get(ModelVersion, v.id))
    latest = load_pipeline(lora="latest", ctx=gen_ctx)
    assert latest.pickloop_info.model_version_id == v.id and _images(latest) == by_folder
    params = sample_candidates(latest, "a red circle", 1, seeds=[1], steps=2)[0][2]
    assert (params["model_version_id"], params["model_version"]) == (v.id, "dpo-1")


def test_missing_folders_and_unknown_versions_are_one_line(gen_ctx, tiny_sd_dir, tmp_path):
    with pytest.raises(UserError, match="LoRA folder not found"):
        load_pipeline(str(tiny_sd_dir), lora=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=f"has no {LORA_WEIGHT_NAME}"):
        load_pipeline(str(tiny_sd_dir), lora=str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no model version 'nope'"):
        load_pipeline(lora="nope", ctx=gen_ctx)
    with pytest.raises(UserError, match="diffusers folder not found"):
        load_pipeline(str(tmp_path / "no-model"))
    with write_session(gen_ctx.engine) as s:
        s.add(ModelVersion(name="gone", base_model=gen_ctx.base_model, lora_path=str(tmp_path / "gone")))
    with pytest.raises(UserError, match="LoRA folder of model version gone not found"):
        load_pipeline(lora="gone", ctx=gen_ctx)


def test_corrupt_lora_file(tiny_sd_dir, tiny_lora_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_lora_dir, bad)
    data = (bad / LORA_WEIGHT_NAME).read_bytes()
    (bad / LORA_WEIGHT_NAME).write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(UserError, match="corrupt or not safetensors"):
        load_pipeline(str(tiny_sd_dir), lora=str(bad))
    (bad / LORA_WEIGHT_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="corrupt or not safetensors"):
        load_pipeline(str(tiny_sd_dir), lora=str(bad))


def test_lora_for_another_base(tiny_sdxl_dir, tiny_sd_dir, tiny_lora_dir, tmp_path):
    with pytest.raises(UserError, match="does not fit base model .*size mismatch"):
        load_pipeline(str(tiny_sdxl_dir), lora=str(tiny_lora_dir))
    # Half of the layers named by the file do not exist in this U-Net: diffusers only warns; we refuse.
    with safe_open(str(tiny_lora_dir / LORA_WEIGHT_NAME), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    renamed = {(k.replace("up_blocks.", "up_blocks_v2.") if "up_blocks." in k else k): t for k, t in tensors.items()}
    (tmp_path / "foreign").mkdir()
    save_file(renamed, str(tmp_path / "foreign" / LORA_WEIGHT_NAME))
    with pytest.raises(UserError, match="32 of 64 weights do not fit.*names no layer of the unet"):
        load_pipeline(str(tiny_sd_dir), lora=str(tmp_path / "foreign"))


def test_version_made_for_another_base(gen_ctx, tiny_lora_dir, tiny_sdxl_dir):
    _register_lora(gen_ctx, tiny_lora_dir)
    with pytest.raises(UserError, match="was made for base"):
        load_pipeline(str(tiny_sdxl_dir), lora="dpo-1", ctx=gen_ctx)

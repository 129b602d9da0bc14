"""Fixtures of the bad-input corpus: one good LoRA on the shipped shapes model, the shipped U-Net, and
a way to register a LoRA folder as a model version."""
from __future__ import annotations

import os

import pytest
import torch

from tests.badinput.corpus import make_good_lora

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def good_lora(tmp_path_factory):
    """(folder, sha256) of a LoRA pickloop saved on the shipped shapes U-Net."""
    return make_good_lora(tmp_path_factory.mktemp("badinput") / "good")


@pytest.fixture(scope="module")
def shapes_unet():
    """The shipped shapes U-Net. A refused LoRA must leave it untouched, so tests may share it."""
    from diffusers import UNet2DConditionModel

    from pickloop.shapes.models import default_pipeline_dir

    return UNet2DConditionModel.from_pretrained(default_pipeline_dir(), subfolder="unet", use_safetensors=True)


@pytest.fixture
def labelled(ctx):
    """A data home on the shipped shapes model with 3 picked train sets of 2 images (3 pairs)."""
    from tests.finetune.conftest import add_labelled_sets

    add_labelled_sets(ctx, n_sets=3, split="train")
    return ctx


@pytest.fixture(autouse=True)
def _fresh_pipeline_cache():
    from generator.pipeline import clear_cache

    clear_cache()
    yield
    clear_cache()


def register_lora(ctx, folder, sha256: str, name: str = "v1"):  # ModelVersion
    """Register ``folder`` as candidate version ``name`` whose LoRA the registry records as ``sha256``."""
    from finetune.registry import register_version
    from pickloop.db import write_session

    with write_session(ctx.engine) as s:
        return register_version(session=s, base_model=ctx.base_model, parent_id=None, method="dpo",
                                lora_dir=folder, lora_sha256=sha256, data_snapshot=None, config_hash=None,
                                metrics={}, name=name)


def one_line_naming(message: str, path) -> None:
    assert "\n" not in message.strip(), message
    assert str(path) in message, message

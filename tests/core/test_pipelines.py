"""The one pipeline loader reads safetensors only, and every stage that opens a pipeline goes through it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pickloop.errors import UserError
from pickloop.pipelines import open_pipeline
from tests.generator.tiny_models import build_tiny_sd

PICKLED_NAME = {"diffusion_pytorch_model.safetensors": "diffusion_pytorch_model.bin",
                "model.safetensors": "pytorch_model.bin"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[str, str]:
    """(a tiny SD folder in safetensors, the same weights pickled: .bin files only)."""
    safe = build_tiny_sd(tmp_path_factory.mktemp("models") / "safe")
    pickled = tmp_path_factory.mktemp("models") / "pickled"
    shutil.copytree(safe, pickled, dirs_exist_ok=True)
    for f in list(pickled.rglob("*.safetensors")):
        torch.save(load_file(f), f.with_name(PICKLED_NAME[f.name]))
        f.unlink()
    return str(safe), str(pickled)


def test_open_pipeline_loads_safetensors_and_refuses_pickled_weights(folders):
    safe, pickled = folders
    assert open_pipeline(safe).unet is not None
    with pytest.raises(UserError, match="cannot load model .*pickled"):
        open_pipeline(pickled)
    # the pickled folder is whole (every weights file has its pickled twin, the configs are the same), so only
    # the refusal to unpickle stops it; checked by name, without ever loading a pickle
    twins = {f.parent.relative_to(safe) / PICKLED_NAME[f.name] for f in Path(safe).rglob("*.safetensors")}
    assert twins and twins == {f.relative_to(pickled) for f in Path(pickled).rglob("*.bin")}
    assert not list(Path(pickled).rglob("*.safetensors"))
    configs = {f.relative_to(safe) for f in Path(safe).rglob("*.json")}
    assert configs == {f.relative_to(pickled) for f in Path(pickled).rglob("*.json")}
    with pytest.raises(UserError, match="no model_index.json"):
        open_pipeline(str(Path(safe).parent))


def test_every_stage_loader_refuses_pickled_weights(folders):
    from finetune.ddpo.job import load_pipeline as ddpo_pipeline
    from finetune.models import load_train_models
    from finetune.registry import draw_images
    from generator import load_pipeline

    _, pickled = folders
    loaders = {
        "generator": lambda: load_pipeline(pickled, device="cpu"),
        "dpo": lambda: load_train_models(pickled),
        "ddpo": lambda: ddpo_pipeline(pickled),
        "gate": lambda: draw_images(pickled, None, None, ["a red circle"], [0], steps=1, guidance=1.0),
    }
    for load in loaders.values():
        with pytest.raises(UserError, match="cannot load model"):
            load()

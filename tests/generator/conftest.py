"""Fixtures for the generator: tiny SD / SDXL pipelines and a LoRA, built once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.generator.tiny_models import build_tiny_sd, build_tiny_sdxl, make_lora, write_defaults

os.environ.setdefault("OMP_NUM_THREADS", "1")
TINY_DEFAULTS = dict(num_inference_steps=2, guidance_scale=5.0, height=16, width=16)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory) -> Path:
    d = build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")
    write_defaults(d, **TINY_DEFAULTS)
    return d


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return build_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_sd_dir, tmp_path_factory) -> Path:
    return make_lora(tiny_sd_dir, tmp_path_factory.mktemp("loras") / "tiny-sd-lora")


def embedded_model_dir() -> Path | None:
    """The shipped shapes pipeline once it has been trained, else None."""
    try:
        from pickloop.shapes.models import default_pipeline_dir
    except ImportError:
        return None
    d = default_pipeline_dir()
    return d if (d / "model_index.json").is_file() else None


@pytest.fixture(scope="session")
def sd_model_dir(tiny_sd_dir) -> Path:
    """$PICKLOOP_TEST_SD_MODEL (e.g. a local SD 1.5 folder) when set; else the embedded shapes model when
    present (same classes as SD 1.x); the tiny random SD until then."""
    override = os.environ.get("PICKLOOP_TEST_SD_MODEL")
    return Path(override) if override else (embedded_model_dir() or tiny_sd_dir)


@pytest.fixture(autouse=True)
def _fresh_pipeline_cache():
    """Version ids repeat across test databases: never let one test's cached pipeline reach another."""
    from generator.pipeline import clear_cache

    clear_cache()
    yield
    clear_cache()


@pytest.fixture
def gen_ctx(home, tiny_sd_dir):
    """A Context on a fresh SQLite home whose base model is the tiny SD pipeline."""
    from pickloop.context import Context
    from pickloop.settings import get_settings

    return Context(settings=get_settings(home=home, base_model=str(tiny_sd_dir)))

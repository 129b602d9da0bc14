"""The context every command and stage works in: settings, the migrated database, the image store."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sqlalchemy.engine import Engine

from pickloop.settings import Settings, get_settings
from pickloop.shapes.models import default_clip_dir, default_pipeline_dir

EMBEDDED_MODEL = "embedded:shapes"  # the shipped shapes-world StableDiffusionPipeline
EMBEDDED_CLIP = "embedded:shapes-clip"  # the shipped shapes-world CLIPModel


def resolve_model_ref(ref: str | None) -> str:
    """A diffusers/transformers folder or hub id for ``ref``; the embedded names map to package data."""
    if ref in (None, "", EMBEDDED_MODEL):
        return str(default_pipeline_dir())
    if ref == EMBEDDED_CLIP:
        return str(default_clip_dir())
    return ref


@dataclass
class Context:
    settings: Settings = field(default_factory=get_settings)

    @cached_property
    def engine(self) -> Engine:
        from pickloop.db import get_engine

        self.settings.home.mkdir(parents=True, exist_ok=True)
        return get_engine(self.settings)

    @cached_property
    def images(self):  # noqa: ANN201 - pickloop.images.ImageStore
        from pickloop.images import ImageStore

        return ImageStore(self.settings.images_url)

    @property
    def base_model(self) -> str:
        return self.settings.base_model or EMBEDDED_MODEL

    @property
    def home(self) -> Path:
        return self.settings.home

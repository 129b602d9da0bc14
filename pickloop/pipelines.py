"""Opening a diffusers pipeline: the one place pickloop calls ``from_pretrained`` on a pipeline.

Weights are read from safetensors only (``use_safetensors=True``): a pickled ``.bin`` can run code when
it is loaded, so a model folder or hub repository without safetensors is refused, not loaded. Every
failure is one ``UserError`` line naming the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pickloop.errors import UserError


def looks_like_path(ref: str) -> bool:
    """Whether ``ref`` names a local folder rather than a hub id (``org/name``)."""
    return ref.startswith((".", "/", "~")) or "\\" in ref or Path(ref).expanduser().exists() or ref.count("/") > 1


def open_pipeline(model: str, *, dtype: Any = None, pipeline_class: Any = None, safety_checker: bool = True) -> Any:
    """The pipeline ``model`` (a local diffusers folder, a hub id or an ``embedded:`` name), on the CPU.

    ``dtype``: a torch dtype for every component (None: as diffusers loads it, float32).
    ``pipeline_class``: a diffusers pipeline class to load with (None: the text-to-image class that
    ``AutoPipelineForText2Image`` picks, else the class the folder's model_index.json names).
    ``safety_checker``: False drops an SD 1.x safety checker (training and gates never show images).
    """
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline
    from diffusers.pipelines import pipeline_utils

    from pickloop.context import resolve_model_ref

    kwargs: dict[str, Any] = {"use_safetensors": True}
    if dtype is not None:
        # newer diffusers name the argument `dtype` and warn on `torch_dtype`; older ones know only `torch_dtype`
        kwargs["dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"] = dtype
    if not safety_checker:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    path = resolve_model_ref(model)
    local = Path(path).expanduser()
    if local.exists() or looks_like_path(path):
        if not (local / "model_index.json").is_file():
            what = "embedded shapes model (not trained yet?)" if model.startswith("embedded:") else "diffusers folder"
            raise UserError(f"{what} not found: {local} has no model_index.json")
        path = str(local)
    try:
        if pipeline_class is not None:
            return pipeline_class.from_pretrained(path, **kwargs)
        try:
            return AutoPipelineForText2Image.from_pretrained(path, **kwargs)
        except ValueError as e:
            if "AutoPipeline" not in str(e):
                raise
            # not a text-to-image class AutoPipeline knows; any pipeline with the same call signature will do
            return DiffusionPipeline.from_pretrained(path, **kwargs)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - hub unreachable, no safetensors, broken config: one line naming the model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {model}: {first[:300]}") from None

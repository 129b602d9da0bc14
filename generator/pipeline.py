"""Load a diffusers text-to-image pipeline with an optional LoRA version: the generator's public entry point.

    pipe = load_pipeline()                                  # the embedded shapes model
    pipe = load_pipeline("runwayml/stable-diffusion-v1-5")  # a hub id or a local diffusers folder
    pipe = load_pipeline(lora="latest")                     # the promoted version from the registry
    pipe = load_pipeline(lora="/path/to/lora_folder")       # any diffusers-format LoRA folder

Weights load from safetensors only. A LoRA is verified before it loads (its sha256 against the manifest
and the registry, finite values, a sound header) and checked after: every LoRA weight in the file must
have landed in the model with the verified values, or the load fails with one line naming the file (a
LoRA made for another base loads "fine" in diffusers and silently does nothing, or half of it).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pickloop.errors import UserError
from pickloop.integrity import file_sha256
from pickloop.lora_files import LORA_WEIGHT_NAME, load_into_pipeline, verify_lora
from pickloop.pipelines import looks_like_path, open_pipeline

__all__ = ["LORA_WEIGHT_NAME", "PipelineInfo", "clear_cache", "file_sha256", "load_lora", "load_pipeline"]

ADAPTER_NAME = "pickloop"
DEFAULTS_FILE = "pickloop_defaults.json"  # sampling defaults a model folder may carry (the shapes model writes one)

_CACHE: dict[tuple, Any] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class PipelineInfo:
    """What a loaded pipeline is, recorded with every image it draws (``pipe.pickloop_info``)."""

    model: str  # the reference as given or stored (hub id, folder, "embedded:shapes")
    model_path: str  # the resolved folder or hub id
    lora_path: str | None = None
    lora_sha256: str | None = None  # of the safetensors file
    model_version_id: int | None = None
    model_version_name: str | None = None
    defaults: dict[str, Any] = field(default_factory=dict)  # from pickloop_defaults.json
    embed_cache: dict[str, Any] = field(default_factory=dict)  # prompt -> pooled text embedding (noise memory)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one sampling call at a time per pipeline


def resolve_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: Any, device: str) -> Any:  # a torch.dtype
    import torch

    if dtype in ("auto", None):
        return torch.float16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    named = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in named:
        raise UserError(f"unknown dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return named[dtype]


def _resolve_lora(lora: str | int | None, model: str | None, ctx) -> tuple[str | None, str | None, Any]:  # noqa: ANN001
    """(model ref, LoRA folder or None, version row or None) for the ``lora`` argument."""
    if lora is None:
        return model, None, None
    if isinstance(lora, (str, Path)) and not str(lora).isdigit() and str(lora) != "latest" and (
            isinstance(lora, Path) or looks_like_path(str(lora))):
        folder = Path(lora).expanduser()
        if not folder.is_dir():
            raise UserError(f"LoRA folder not found: {folder}")
        return model, str(folder), None
    from pickloop.context import Context, resolve_model_ref
    from pickloop.db import read_session
    from pickloop.store import find_version

    ctx = ctx or Context()
    with read_session(ctx.engine) as s:
        version = find_version(session=s, ref=lora)
    if model is not None and resolve_model_ref(model) != resolve_model_ref(version.base_model):
        raise UserError(f"model version {version.name} was made for base {version.base_model}, not {model}")
    folder = None
    if version.lora_path:
        folder = Path(version.lora_path).expanduser()
        if not folder.is_absolute() and not folder.exists():
            folder = ctx.home / folder  # stored relative to the data home
        if not folder.is_dir():
            raise UserError(f"LoRA folder of model version {version.name} not found: {folder}")
        folder = str(folder)
    return version.base_model, folder, version


def load_pipeline(model: str | None = None, lora: str | int | None = None, device: str = "auto",
                  dtype: Any = "auto", *, ctx=None, lora_sha256: str | None = None) -> Any:  # noqa: ANN001
    """A text-to-image pipeline for ``model`` with the LoRA ``lora``, cached per (model, LoRA) in this process.

    ``model``: local diffusers folder, hub id, or None for the context's base model (the embedded
    shapes model by default). ``lora``: a model-version id or name, ``"latest"`` (the promoted
    version; its base model is used when ``model`` is None), or a LoRA folder. The pipeline carries
    ``pipe.pickloop_info`` (a :class:`PipelineInfo`) that sampling records with every image.
    ``lora_sha256``: the sha256 a LoRA folder's file must have (a registry version brings its own).
    """
    from pickloop.context import resolve_model_ref

    model, lora_dir, version = _resolve_lora(lora, model, ctx)
    if model is None:
        model = ctx.base_model if ctx is not None else "embedded:shapes"
    model_path = resolve_model_ref(model)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if version is not None:
        lora_sha256 = version.lora_sha256
    key = (model_path, lora_dir, version.id if version is not None else None, lora_sha256, device, str(torch_dtype))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        # the LoRA is checked before the model loads: a damaged file is one line, at once
        verified = verify_lora(lora_dir, expected_sha256=lora_sha256) if lora_dir is not None else None
        pipe = open_pipeline(model, dtype=torch_dtype).to(device)
        info = PipelineInfo(model=model, model_path=model_path, defaults=_read_defaults(model_path))
        if version is not None:
            info.model_version_id, info.model_version_name = version.id, version.name
        if lora_dir is not None:
            load_into_pipeline(pipe, verified, adapter_name=ADAPTER_NAME)
            info.lora_path, info.lora_sha256 = lora_dir, verified.sha256
        pipe.set_progress_bar_config(disable=True)
        pipe.pickloop_info = info
        _CACHE[key] = pipe
        return pipe


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _read_defaults(model_path: str) -> dict[str, Any]:
    f = Path(model_path) / DEFAULTS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def load_lora(pipe, folder: str | Path, expected_sha256: str | None = None) -> str:  # noqa: ANN001
    """Load ``folder/pytorch_lora_weights.safetensors`` into ``pipe``; return the file's sha256.

    The file is verified first (``pickloop.lora_files.verify_lora``: the sha256 against the manifest
    and ``expected_sha256``, the registry's; finite values; a sound header, keys and rank), must fit
    this base model layer by layer, and what lands in the pipeline must be exactly what was verified.
    Anything else is one UserError line naming the file.
    """
    lora = verify_lora(Path(folder).expanduser(), expected_sha256=expected_sha256)
    load_into_pipeline(pipe, lora, adapter_name=ADAPTER_NAME)
    return lora.sha256

"""Load a diffusers text-to-image pipeline with an optional LoRA version: the generator's public entry point.

    pipe = load_pipeline()                                  # the embedded shapes model
    pipe = load_pipeline("runwayml/stable-diffusion-v1-5")  # a hub id or a local diffusers folder
    pipe = load_pipeline(lora="latest")                     # the promoted version from the registry
    pipe = load_pipeline(lora="/path/to/lora_folder")       # any diffusers-format LoRA folder

Weights load from safetensors only. A LoRA is checked after loading: every LoRA weight in the file must
have landed in the model, or the load fails with one line (a LoRA made for another base loads "fine" in
diffusers and silently does nothing, or half of it).
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pickloop.errors import UserError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes; loaded by name, never guessed
ADAPTER_NAME = "pickloop"
DEFAULTS_FILE = "pickloop_defaults.json"  # sampling defaults a model folder may carry (the shapes model writes one)

# LoRA file key prefixes (diffusers and kohya spellings) -> pipeline component they belong to.
_COMPONENT_PREFIXES = (
    ("unet.", "unet"), ("lora_unet_", "unet"), ("transformer.", "transformer"),
    ("text_encoder_2.", "text_encoder_2"), ("lora_te2_", "text_encoder_2"),
    ("text_encoder.", "text_encoder"), ("lora_te1_", "text_encoder"), ("lora_te_", "text_encoder"),
)
_LORA_MATRIX_MARKERS = ("lora_A.", "lora_B.", "lora.down.", "lora.up.", "lora_down.", "lora_up.")

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


def resolve_dtype(dtype: Any, device: str):  # noqa: ANN201 - torch.dtype
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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or "\\" in ref or Path(ref).expanduser().exists() or ref.count("/") > 1


def _resolve_lora(lora: str | int | None, model: str | None, ctx) -> tuple[str | None, str | None, Any]:  # noqa: ANN001
    """(model ref, LoRA folder or None, version row or None) for the ``lora`` argument."""
    if lora is None:
        return model, None, None
    if isinstance(lora, (str, Path)) and not str(lora).isdigit() and str(lora) != "latest" and (
            isinstance(lora, Path) or _looks_like_path(str(lora))):
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
                  dtype: Any = "auto", *, ctx=None):  # noqa: ANN001, ANN201 - DiffusionPipeline
    """A text-to-image pipeline for ``model`` with the LoRA ``lora``, cached per (model, LoRA) in this process.

    ``model``: local diffusers folder, hub id, or None for the context's base model (the embedded
    shapes model by default). ``lora``: a model-version id or name, ``"latest"`` (the promoted
    version; its base model is used when ``model`` is None), or a LoRA folder. The pipeline carries
    ``pipe.pickloop_info`` (a :class:`PipelineInfo`) that sampling records with every image.
    """
    from pickloop.context import resolve_model_ref

    model, lora_dir, version = _resolve_lora(lora, model, ctx)
    if model is None:
        model = ctx.base_model if ctx is not None else "embedded:shapes"
    model_path = resolve_model_ref(model)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (model_path, lora_dir, version.id if version is not None else None, device, str(torch_dtype))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        pipe = _from_pretrained(model, model_path, torch_dtype).to(device)
        info = PipelineInfo(model=model, model_path=model_path, defaults=_read_defaults(model_path))
        if version is not None:
            info.model_version_id, info.model_version_name = version.id, version.name
        if lora_dir is not None:
            info.lora_path, info.lora_sha256 = lora_dir, load_lora(pipe, lora_dir)
        pipe.set_progress_bar_config(disable=True)
        pipe.pickloop_info = info
        _CACHE[key] = pipe
        return pipe


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def _from_pretrained(model: str, model_path: str, torch_dtype):  # noqa: ANN001, ANN202
    from diffusers import AutoPipelineForText2Image, DiffusionPipeline
    from diffusers.pipelines import pipeline_utils

    # newer diffusers name the argument `dtype` and warn on `torch_dtype`; older ones know only `torch_dtype`
    dtype_kw = {"dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype": torch_dtype}

    local = Path(model_path).expanduser()
    if local.exists() or _looks_like_path(model_path):
        if not (local / "model_index.json").is_file():
            what = "embedded shapes model (not trained yet?)" if model.startswith("embedded:") else "diffusers folder"
            raise UserError(f"{what} not found: {local} has no model_index.json")
        model_path = str(local)
    try:
        try:
            return AutoPipelineForText2Image.from_pretrained(model_path, use_safetensors=True, **dtype_kw)
        except ValueError as e:
            if "AutoPipeline" not in str(e):
                raise
            # not a text-to-image class AutoPipeline knows; any pipeline with the same call signature will do
            return DiffusionPipeline.from_pretrained(model_path, use_safetensors=True, **dtype_kw)
    except UserError:
        raise
    except Exception as e:  # hub unreachable, no safetensors, broken config: one line naming the model
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {model}: {first[:300]}") from None


def _read_defaults(model_path: str) -> dict[str, Any]:
    f = Path(model_path) / DEFAULTS_FILE
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{f} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def lora_file_counts(path: Path) -> dict[str, int]:
    """LoRA matrices (down/A and up/B) per pipeline component in a safetensors file; a corrupt file is a UserError."""
    from safetensors import SafetensorError, safe_open

    counts: dict[str, int] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"LoRA file {path} is corrupt or not safetensors: {e}") from None
    for k in keys:
        if not any(m in k for m in _LORA_MATRIX_MARKERS):
            continue
        comp = next((c for prefix, c in _COMPONENT_PREFIXES if k.startswith(prefix)), "unet")
        counts[comp] = counts.get(comp, 0) + 1
    if not counts:
        raise UserError(f"LoRA file {path} holds no LoRA weights")
    return counts


def _loaded_counts(pipe, components) -> dict[str, int]:  # noqa: ANN001
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for comp in components:
        module = getattr(pipe, comp, None)
        n = 0
        if module is not None:
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer) and ADAPTER_NAME in getattr(layer, "lora_A", {}):
                    n += 2  # one A (down) and one B (up) matrix
        out[comp] = n
    return out


def load_lora(pipe, folder: str | Path) -> str:  # noqa: ANN001
    """Load ``folder/pytorch_lora_weights.safetensors`` into ``pipe``; return the file's sha256.

    Raises one UserError line for a missing folder or file, a corrupt file, or a LoRA whose weights do
    not all fit this base model (made for another base).
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"LoRA folder not found: {folder}")
    weights = folder / LORA_WEIGHT_NAME
    if not weights.is_file():
        raise UserError(f"LoRA folder {folder} has no {LORA_WEIGHT_NAME}")
    expected = lora_file_counts(weights)
    try:
        pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, use_safetensors=True,
                               adapter_name=ADAPTER_NAME)
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, unknown layer
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = next((ln for ln in lines if "mismatch" in ln), lines[-1])
        raise UserError(f"LoRA {folder} does not fit base model {getattr(pipe, 'name_or_path', '?')} "
                        f"(made for another base?): {why[:300]}") from None
    loaded = _loaded_counts(pipe, expected)
    for comp, n in expected.items():
        if loaded.get(comp, 0) != n:
            raise UserError(f"LoRA {folder}: {n - loaded.get(comp, 0)} of {n} weights for {comp} found no layer "
                            f"in base model {getattr(pipe, 'name_or_path', '?')} (made for another base?)")
    return file_sha256(weights)

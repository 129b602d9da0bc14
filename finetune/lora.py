"""LoRA adapters on a diffusers U-Net: add, save (diffusers + kohya formats), verify and load back.

Generic helpers shared by every fine-tuning method (Diffusion-DPO, DDPO). Files are safetensors
only; a folder written by :func:`save_lora` holds

- ``pytorch_lora_weights.safetensors``: diffusers format (``unet.*.lora_A/B.weight`` keys) with the
  peft adapter config in the header (``lora_adapter_metadata``), so ``lora_alpha`` survives and
  ``pipe.load_lora_weights(dir, weight_name=..., use_safetensors=True)`` works in any script;
- ``lora_kohya.safetensors``: kohya/A1111/ComfyUI format (``lora_unet_*.lora_down/lora_up`` plus
  ``.alpha`` set to the real alpha, not diffusers' default of the rank);
- ``manifest.json``: sha256 of each file and the caller's metadata, checked on every load.

A file that is truncated, bit-flipped or a pickle renamed to ``.safetensors`` is one ``UserError``;
pickle is never loaded.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from finetune.dpo.config import DEFAULT_TARGETS
from pickloop.atomic import fsync_file, replacing_folder
from pickloop.errors import UserError
from pickloop.integrity import file_sha256, parse_safetensors, read_verified
from pickloop.lora_files import LORA_WEIGHT_NAME, MANIFEST_NAME, check_fits, verify_lora
from pickloop.lora_files import read_manifest  # noqa: F401 - part of this module's API (checkpoints, tests)

KOHYA_WEIGHT_NAME = "lora_kohya.safetensors"
ADAPTER_NAME = "default"
REFERENCE_ADAPTER = "reference"  # the frozen parent in a Diffusion-DPO run that continues from it


# ---------------------------------------------------------------- adding and reading adapters

def add_lora(unet: torch.nn.Module, *, rank: int = 8, alpha: float | None = None,
             targets: Sequence[str] = DEFAULT_TARGETS, dropout: float = 0.0,
             adapter_name: str = ADAPTER_NAME) -> Any:
    """Freeze ``unet`` and add a peft LoRA adapter (``lora_B`` starts at zero, so the output is unchanged).

    ``alpha`` defaults to ``rank`` (scale alpha/rank = 1), which kohya tools assume. Only the adapter
    named ``ADAPTER_NAME`` is trainable and active; another name (the frozen DPO reference, see
    :func:`start_lora`) is added frozen and inactive. Returns the LoraConfig.
    """
    from peft import LoraConfig

    if rank < 1:
        raise UserError(f"LoRA rank must be >= 1, not {rank}")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha if alpha is not None else rank),
                        lora_dropout=float(dropout), init_lora_weights="gaussian",
                        target_modules=list(targets))
    unet.requires_grad_(False)
    with warnings.catch_warnings():  # peft warns on a second adapter; here it is the frozen reference, on purpose
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        unet.add_adapter(config, adapter_name=adapter_name)  # diffusers makes the new adapter the active one
    if adapter_name != ADAPTER_NAME and ADAPTER_NAME in unet.peft_config:
        unet.set_adapter(ADAPTER_NAME)
    _train_only_default(unet)
    return config


def _train_only_default(unet: torch.nn.Module) -> None:
    for name, p in unet.named_parameters():
        p.requires_grad_(_is_default_lora(name))


def _is_default_lora(name: str) -> bool:
    return "lora_" in name and f".{ADAPTER_NAME}." in name


def lora_named_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable adapter's parameters by their module-path names (peft's, with the adapter name);
    a frozen reference adapter's are left out."""
    return {n: p for n, p in unet.named_parameters() if _is_default_lora(n)}


def lora_parameters(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(lora_named_parameters(unet).values())


def lora_tensors(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached float32 CPU copy of the LoRA parameters (for checkpoints and comparisons)."""
    return {n: p.detach().to("cpu", torch.float32).clone() for n, p in lora_named_parameters(unet).items()}


def set_lora_tensors(unet: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors from :func:`lora_tensors` back into the adapter; the names must match exactly."""
    params = lora_named_parameters(unet)
    missing, unexpected = set(params) - set(tensors), set(tensors) - set(params)
    if missing or unexpected:
        raise UserError(f"LoRA state does not fit this U-Net: {len(missing)} missing, "
                        f"{len(unexpected)} unexpected tensors (e.g. {sorted(missing or unexpected)[0]})")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n].to(p.device, p.dtype))


def adapter_config(unet: torch.nn.Module) -> dict[str, Any]:
    """The adapter's peft config as a JSON-able dict (rank ``r``, ``lora_alpha``, ``target_modules``...)."""
    cfg = unet.peft_config[ADAPTER_NAME].to_dict()
    return json.loads(json.dumps(cfg, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))


@contextmanager
def adapters_disabled(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the base U-Net (the reference model in DPO): adapters off inside, back on after. No copy."""
    model = getattr(unet, "module", unet)  # DDP wrapper -> the model
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()


def _lora_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's peft LoRA layers, found once per set of adapters (walking all modules of a U-Net costs
    more than switching its ~100 LoRA layers, and the reference pass switches twice a step)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    key = tuple(sorted(getattr(model, "peft_config", None) or {}))
    cached = model.__dict__.get("_pickloop_lora_layers")
    if cached is None or cached[0] != key:
        cached = (key, [m for m in model.modules() if isinstance(m, BaseTunerLayer)])
        model.__dict__["_pickloop_lora_layers"] = cached
    return cached[1]


@contextmanager
def reference_model(unet: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The Diffusion-DPO reference model: the frozen parent adapter when the run continues from a parent
    (:func:`start_lora` with ``reference=True``), else the base U-Net (adapters disabled). No copy of
    the U-Net either way; the trainable adapter is active (and trainable) again after.

    Switches each LoRA layer directly (peft's per-layer ``enable_adapters``/``set_adapter``, which also keep
    ``requires_grad`` right), the same switch diffusers' ``disable_adapters``/``set_adapter`` make after
    walking every module of the U-Net."""
    model = getattr(unet, "module", unet)  # DDP wrapper -> the model
    layers = _lora_layers(model)
    with_parent = REFERENCE_ADAPTER in (getattr(model, "peft_config", None) or {})
    for layer in layers:
        if with_parent:
            layer.set_adapter(REFERENCE_ADAPTER, inference_mode=True)
        else:
            layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            if with_parent:
                layer.set_adapter(ADAPTER_NAME)  # the trainable adapter active and trainable, the reference frozen
            else:
                layer.enable_adapters(True)


# ---------------------------------------------------------------- continuing from a parent

@dataclass(frozen=True)
class ParentLora:
    """The LoRA of the promoted version a run continues from. Everywhere a parent is optional, None
    means the parent is the base model itself: the run starts from a fresh adapter."""

    name: str
    lora_dir: str
    sha256: str | None = None
    data_snapshot: int | None = None  # highest judgement id the parent was trained on
    audience: str = "everyone"  # whom the parent serves: a run for another audience learns from all its labels

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "sha256": self.sha256, "data_snapshot": self.data_snapshot}


def parent_lora(version: Any) -> ParentLora | None:
    """The ParentLora of a model-version row; None when it has no LoRA (the base)."""
    if version is None or not version.lora_path:
        return None
    return ParentLora(version.name, str(version.lora_path), version.lora_sha256, version.data_snapshot,
                      getattr(version, "audience", None) or "everyone")


def start_lora(unet: torch.nn.Module, *, rank: int = 8, alpha: float | None = None,
               targets: Sequence[str] = DEFAULT_TARGETS, parent: ParentLora | None = None,
               reference: bool = False) -> dict[str, Any]:
    """Add the trainable adapter a fine-tuning run starts from; returns its peft config as a dict.

    Without a parent: a fresh adapter of ``rank``/``alpha``/``targets`` whose ``lora_B`` is zero, so the
    run starts at the base model. With one: the adapter takes the parent's rank, alpha and targets from
    its file header (they win over the arguments; a differing rank is reported) and the parent's
    weights, verified by sha256, so the run starts at the parent and the LoRA it saves is the whole
    model (parent plus what this run learned), loadable alone anywhere. ``reference=True`` also loads
    the parent into a second, frozen adapter (``REFERENCE_ADAPTER``) that :func:`reference_model`
    switches to: Diffusion-DPO then measures the policy against its parent, not the base.
    """
    if parent is None:
        add_lora(unet, rank=rank, alpha=alpha, targets=targets)
        return adapter_config(unet)
    config = load_lora_into(unet, parent.lora_dir, expected_sha256=parent.sha256)
    if int(config["r"]) != int(rank):
        print(f"starting from {parent.name}: keeping its LoRA rank {config['r']} (the settings ask for {rank})")
    if reference:
        load_lora_into(unet, parent.lora_dir, expected_sha256=parent.sha256, adapter_name=REFERENCE_ADAPTER)
    return adapter_config(unet)


# ---------------------------------------------------------------- saving

def diffusers_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter in the diffusers layout (keys without the ``unet.`` prefix the pipeline adds)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return convert_state_dict_to_diffusers(state)


def peft_keys(diffusers_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers U-Net LoRA keys (``...to_q.lora.down.weight``) -> peft's (``...to_q.lora_A.weight``)."""
    return {k.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B."): v for k, v in diffusers_sd.items()}


def kohya_state_dict(diffusers_sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """Kohya keys (``lora_unet_*.lora_down.weight``) from diffusers-layout keys, with the real ``alpha``.

    ``diffusers_sd`` keys may or may not carry the ``unet.`` prefix. diffusers' converter writes
    alpha = rank; we overwrite it so a LoRA trained with alpha != rank keeps its strength.
    """
    from diffusers.utils import convert_state_dict_to_kohya

    prefixed = {(k if k.startswith("unet.") else "unet." + k): v for k, v in peft_keys(diffusers_sd).items()}
    kohya = convert_state_dict_to_kohya(prefixed)
    for key in kohya:
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(alpha))
    return {k: v.contiguous() for k, v in kohya.items()}


def write_manifest(folder: Path, files: Sequence[str], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` (sha256 of each file + metadata) atomically; returns it."""
    folder = Path(folder)
    manifest = {"files": {name: file_sha256(folder / name) for name in files}, "metadata": metadata or {}}
    tmp = folder / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    fsync_file(tmp)
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def save_lora(unet: torch.nn.Module, out_dir: Path | str, *, metadata: dict[str, Any] | None = None,
              sdxl: bool = False, kohya: bool = True) -> str:
    """Write the adapter of ``unet`` into ``out_dir`` (diffusers file, kohya file, manifest).

    ``metadata`` (JSON-able: method, config, step, data snapshot...) goes into the manifest.
    Returns the sha256 of ``pytorch_lora_weights.safetensors``. Callers wanting atomicity write into
    a temporary folder and rename it (see ``finetune.checkpoint``).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(unet, "module", unet)
    sd = diffusers_state_dict(model)
    cfg = adapter_config(model)
    pipe_cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe_cls.save_lora_weights(save_directory=str(out), unet_lora_layers=sd, weight_name=LORA_WEIGHT_NAME,
                               safe_serialization=True, unet_lora_adapter_metadata=cfg)
    files = [LORA_WEIGHT_NAME]
    if kohya:
        from safetensors.torch import save_file

        save_file(kohya_state_dict(sd, cfg["lora_alpha"]), str(out / KOHYA_WEIGHT_NAME),
                  metadata={"ss_network_dim": str(cfg["r"]), "ss_network_alpha": str(cfg["lora_alpha"]),
                            "ss_network_module": "networks.lora", "format": "pt"})
        files.append(KOHYA_WEIGHT_NAME)
    for name in files:
        fsync_file(out / name)
    manifest = write_manifest(out, files, {"adapter": cfg, "sdxl": sdxl, **(metadata or {})})
    return manifest["files"][LORA_WEIGHT_NAME]


def save_lora_atomic(unet: torch.nn.Module, out_dir: Path | str, *, metadata: dict[str, Any] | None = None,
                     sdxl: bool = False) -> str:
    """:func:`save_lora` into a temporary folder beside ``out_dir``, then renamed into place
    (``pickloop.atomic.replacing_folder``); returns the sha256. A kill at any moment leaves the old folder
    or the new one under the name, and the next write or run removes what the killed one left."""
    with replacing_folder(out_dir) as tmp:
        return save_lora(unet, tmp, metadata=metadata, sdxl=sdxl)


# ---------------------------------------------------------------- verifying and loading

def verify_file(path: Path | str, expected_sha256: str | None = None) -> str:
    """Check a LoRA file before any loading (see ``pickloop.lora_files.verify_lora``); returns its sha256."""
    return verify_lora(path, expected_sha256=expected_sha256).sha256


def read_safetensors(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; anything else (a pickle, a truncated file) is a UserError."""
    return parse_safetensors(read_verified(path, None), path, what="safetensors file")


def load_lora_state(folder: Path | str, *, weight_name: str = LORA_WEIGHT_NAME,
                    expected_sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Verify and read a saved LoRA: (diffusers-layout tensors, adapter config from the header).

    The sha256 must match ``expected_sha256`` (the registry's) when given and ``manifest.json`` when
    present (see ``pickloop.lora_files.verify_lora`` for everything else that is checked). Raises one
    ``UserError`` for a missing, truncated, bit-flipped, non-finite or pickle file.
    """
    lora = verify_lora(folder, expected_sha256=expected_sha256, weight_name=weight_name)
    return lora.tensors, lora.config


def load_lora_into(unet: torch.nn.Module, folder: Path | str, *, adapter_name: str = ADAPTER_NAME,
                   **kwargs: Any) -> dict[str, Any]:
    """Verify a saved LoRA and put its weights into ``unet``'s adapter ``adapter_name`` (added first,
    from the file's rank/alpha/targets, when absent). Every tensor of that adapter must be in the file."""
    from peft.utils import set_peft_model_state_dict

    lora = verify_lora(folder, **kwargs)
    tensors, config = lora.tensors, lora.config
    check_fits(lora, {"unet": unet}, "this U-Net")
    if adapter_name not in (getattr(unet, "peft_config", None) or {}):
        if not config:
            raise UserError(f"LoRA in {folder} carries no adapter metadata; cannot rebuild its rank/alpha")
        add_lora(unet, rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                 targets=config.get("target_modules") or DEFAULT_TARGETS, adapter_name=adapter_name)
    state = peft_keys({k.removeprefix("unet."): v for k, v in tensors.items()})
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter_name)
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise UserError(f"LoRA in {folder} does not fit this U-Net: unexpected key {unexpected[0]}")
    wanted = sum(1 for n, _ in unet.named_parameters() if "lora_" in n and f".{adapter_name}." in n)
    if len(state) != wanted:
        raise UserError(f"LoRA in {folder} does not fit this U-Net: {len(state)} tensors for an adapter of {wanted}")
    return config or adapter_config(unet)


def export_lora(folder: Path | str, out: Path | str, *, fmt: str = "diffusers",
                expected_sha256: str | None = None) -> Path:
    """Write a verified LoRA (``expected_sha256``: the registry's) to ``out`` (a folder) as ``diffusers``
    (the verified bytes themselves) or ``kohya``; returns the file written. Each file lands atomically."""
    from safetensors.torch import save

    if fmt not in ("diffusers", "kohya"):
        raise UserError(f"export format must be diffusers or kohya, not {fmt!r}")
    lora = verify_lora(folder, expected_sha256=expected_sha256)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "diffusers":
        dest, data = out / LORA_WEIGHT_NAME, lora.data
    else:
        alpha = float(lora.config.get("lora_alpha")
                      or next(v.shape[0] for k, v in lora.tensors.items() if "lora_A" in k))
        dest = out / KOHYA_WEIGHT_NAME
        data = save(kohya_state_dict(lora.tensors, alpha),
                    metadata={"ss_network_alpha": str(alpha), "ss_network_module": "networks.lora", "format": "pt"})
    tmp = out / f".{dest.name}.tmp"
    tmp.write_bytes(data)
    fsync_file(tmp)
    os.replace(tmp, dest)
    write_manifest(out, [dest.name], {"exported_from": str(folder), "format": fmt})
    return dest

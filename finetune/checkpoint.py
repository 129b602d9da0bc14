"""Training checkpoints that survive a kill at any moment, for any LoRA trainer (DPO, DDPO).

A checkpoint folder ``<root>/step-<000123>/`` holds

- an inference-ready LoRA (``pytorch_lora_weights.safetensors`` + kohya file, see ``finetune.lora``);
- ``train_state.safetensors``: LoRA parameters (float32, peft names), optimizer tensors, RNG tensors;
- ``train_state.json``: step, data position, optimizer param groups, LR-scheduler state, python/numpy RNG;
- ``manifest.json`` (written last): sha256 of every file. A folder without a valid manifest is incomplete.

Writing: a temporary folder beside the target, fsync of each file, ``os.replace`` onto the final name,
fsync of the parent, then the manifest; older checkpoints are removed only after the new one verifies
(accelerate's ``save_state`` deletes first, which loses everything on a crash at the wrong moment).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune import lora as lora_io
from pickloop.atomic import fsync_dir, fsync_file
from pickloop.errors import UserError
from pickloop.integrity import parse_safetensors, read_verified

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class Resumed:
    """What :func:`load_checkpoint` gives back besides the restored objects."""

    step: int  # optimizer steps done
    data_position: int  # samples (or batches, as the trainer counts) already consumed
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


# ---------------------------------------------------------------- state <-> tensors

def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state split into tensors (``opt.<param>.<key>``) and JSON (param groups, scalars)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{idx}.{key}"] = val.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if name.startswith("opt."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = val
    for idx, vals in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(vals)
    groups = meta["param_groups"]
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and python RNG states."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
                     "python": [py_version, list(py_state), py_gauss]}


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


# ---------------------------------------------------------------- writing

def step_dir(root: Path | str, step: int) -> Path:
    return Path(root) / f"step-{step:06d}"


def save_checkpoint(root: Path | str, *, step: int, unet: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    lr_scheduler: Any = None, data_position: int, extra: dict[str, Any] | None = None,
                    lora_metadata: dict[str, Any] | None = None, sdxl: bool = False, keep: int = 1) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and keep the newest ``keep`` complete ones.

    ``data_position`` is how far the trainer's data order has been consumed (it decides what to skip
    on resume); ``extra`` is any JSON-able trainer state (running metrics, config hash...).
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = getattr(unet, "module", unet)
    lora_io.save_lora(model, tmp, metadata={"step": step, **(lora_metadata or {})}, sdxl=sdxl)
    opt_t, opt_meta = optimizer_state(optimizer)
    rng_t, rng_meta = rng_state()
    tensors = {**{f"lora.{k}": v for k, v in lora_io.lora_tensors(model).items()}, **opt_t, **rng_t}
    save_file(tensors, str(tmp / STATE_TENSORS))
    meta = {"step": step, "data_position": data_position, "optimizer": opt_meta, "rng": rng_meta,
            "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None, "extra": extra or {}}
    (tmp / STATE_JSON).write_text(json.dumps(meta, default=_jsonable))
    files = sorted(p.name for p in tmp.iterdir() if p.is_file() and p.name != lora_io.MANIFEST_NAME)
    for name in files:
        fsync_file(tmp / name)
    if final.exists():  # a rerun of the same step: the old copy goes only once the new one is complete
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    lora_manifest = lora_io.read_manifest(final) or {}
    lora_io.write_manifest(final, files, {"step": step, "checkpoint": True,
                                          **lora_manifest.get("metadata", {})})
    fsync_dir(final)
    verify_checkpoint(final)
    prune_checkpoints(root, keep=keep)
    return final


def _jsonable(v: Any) -> Any:
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    if torch.is_tensor(v):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


# ---------------------------------------------------------------- finding, verifying, loading

def verify_checkpoint(path: Path | str) -> bool:
    """True when the folder has a manifest and every file in it matches its sha256."""
    path = Path(path)
    try:
        manifest = lora_io.read_manifest(path)
    except UserError:
        return False
    if manifest is None or STATE_TENSORS not in manifest["files"] or STATE_JSON not in manifest["files"]:
        return False
    for name, sha in manifest["files"].items():
        f = path / name
        if not f.is_file() or lora_io.file_sha256(f) != sha:
            return False
    return True


def list_checkpoints(root: Path | str) -> list[Path]:
    """Checkpoint folders under ``root``, oldest step first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_complete_checkpoint(root: Path | str) -> Path | None:
    """The newest checkpoint whose manifest verifies, or None."""
    for path in reversed(list_checkpoints(root)):
        if verify_checkpoint(path):
            return path
    return None


def prune_checkpoints(root: Path | str, *, keep: int = 1) -> None:
    """Remove all but the newest ``keep`` complete checkpoints, plus stale temporary folders and any
    incomplete folder older than the newest complete one. Never removes the newest complete one."""
    root = Path(root)
    complete = [p for p in list_checkpoints(root) if verify_checkpoint(p)]
    if not complete:
        return
    newest = complete[-1]
    keep_set = set(complete[-max(1, keep):])
    for p in list_checkpoints(root):
        if p not in keep_set and int(p.name.split("-")[1]) <= int(newest.name.split("-")[1]):
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".tmp-step-*"):
        shutil.rmtree(p, ignore_errors=True)


def _read_recorded(path: Path, name: str) -> bytes:
    """The bytes of checkpoint file ``name``, read once and checked against the sha256 its manifest recorded."""
    manifest = lora_io.read_manifest(path)
    sha = (manifest or {}).get("files", {}).get(name)
    if sha is None:
        raise UserError(f"checkpoint {path} is incomplete: its manifest records no {name}")
    return read_verified(path / name, sha, what="checkpoint file", source=str(path / lora_io.MANIFEST_NAME))


def _state_json(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(_read_recorded(path, STATE_JSON))
    except ValueError as e:
        raise UserError(f"checkpoint file {path / STATE_JSON} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise UserError(f"checkpoint file {path / STATE_JSON} is not a JSON object")
    return meta


def checkpoint_extra(path: Path | str) -> dict[str, Any]:
    """The trainer's ``extra`` of a checkpoint (config hash, parent...), read before anything is restored
    and checked against the checkpoint's manifest."""
    return _state_json(Path(path)).get("extra", {})


def load_checkpoint(path: Path | str, *, unet: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    lr_scheduler: Any = None, restore_rng_state: bool = True) -> Resumed:
    """Restore LoRA weights, optimizer, scheduler and RNG from a checkpoint folder; each file is read once
    and must match the sha256 the checkpoint's manifest recorded (one UserError line naming it otherwise)."""
    path = Path(path)
    if lora_io.read_manifest(path) is None:
        raise UserError(f"checkpoint {path} is incomplete or corrupted (manifest missing)")
    tensors, _ = parse_safetensors(_read_recorded(path, STATE_TENSORS), path / STATE_TENSORS, what="checkpoint file")
    meta = _state_json(path)
    model = getattr(unet, "module", unet)
    lora_io.set_lora_tensors(model, {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")})
    if optimizer is not None:
        restore_optimizer(optimizer, tensors, meta["optimizer"])
    if lr_scheduler is not None and meta.get("lr_scheduler") is not None:
        lr_scheduler.load_state_dict(meta["lr_scheduler"])
    if restore_rng_state:
        restore_rng(tensors, meta["rng"])
    return Resumed(step=int(meta["step"]), data_position=int(meta["data_position"]),
                   extra=meta.get("extra", {}), path=path)

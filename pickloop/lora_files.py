"""Reading a LoRA file safely: every reader in pickloop (the generator, fine-tuning, the registry) goes through here.

A LoRA folder holds ``pytorch_lora_weights.safetensors`` and, when pickloop wrote it, a ``manifest.json``
of sha256 sums; the registry records the same sha256 (``ModelVersion.lora_sha256``). :func:`verify_lora`
reads the file once and refuses, in one ``UserError`` line naming the file, anything that is not
exactly what was recorded or not a sound LoRA:

- a sha256 that differs from the manifest's or the registry's (a flipped bit, weights scaled, a
  different file swapped in), a manifest that is not JSON or lists no sha256 for the file;
- a file that is not safetensors (truncated, a pickle renamed), a malformed adapter-metadata header;
- non-finite values; a key that is not a LoRA matrix or has no partner; a rank that differs from
  the header's.

:func:`check_fits` then checks every LoRA matrix against the layer it names in a model (so a LoRA for
another base, or of a wrong shape, is one line and not a hundred lines of size mismatches), and
:func:`load_into_pipeline` loads a verified file into a diffusers pipeline and checks that what
landed in the model is exactly what was verified. Pickle is never loaded.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pickloop.errors import DamagedFileError
from pickloop.integrity import parse_safetensors, read_verified, sha256_hex

__all__ = ["LORA_WEIGHT_NAME", "MANIFEST_NAME", "VerifiedLora", "check_fits", "load_into_pipeline", "read_manifest",
           "verify_lora"]

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes; loaded by name, never guessed
MANIFEST_NAME = "manifest.json"
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header entry holding the peft config (rank, alpha)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

# LoRA file key prefixes (diffusers and kohya spellings) -> pipeline component they belong to.
COMPONENT_PREFIXES = (
    ("unet.", "unet"), ("lora_unet_", "unet"), ("transformer.", "transformer"),
    ("text_encoder_2.", "text_encoder_2"), ("lora_te2_", "text_encoder_2"),
    ("text_encoder.", "text_encoder"), ("lora_te1_", "text_encoder"), ("lora_te_", "text_encoder"),
)
# (down/A marker, up/B marker) pairs: peft, diffusers, kohya spellings.
_MATRIX_MARKERS = ((".lora_A.", ".lora_B."), (".lora.down.", ".lora.up."), (".lora_down.", ".lora_up."))


# ---------------------------------------------------------------- the manifest

def read_manifest(folder: Path | str) -> dict[str, Any] | None:
    """``manifest.json`` of ``folder`` (None when absent), checked: a JSON object whose ``files`` maps
    file names to 64-hex sha256 sums and whose ``metadata``, when present, is an object."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DamagedFileError(f"LoRA manifest {path} is unreadable: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise DamagedFileError(f"LoRA manifest {path} is malformed (no 'files' mapping)")
    bad = [n for n, s in data["files"].items() if not isinstance(s, str) or not _SHA256.match(s)]
    if bad:
        raise DamagedFileError(f"LoRA manifest {path} is malformed: the sha256 of {str(bad[0])[:80]!r} "
                               "is not 64 hex digits")
    if not isinstance(data.get("metadata", {}), dict):
        raise DamagedFileError(f"LoRA manifest {path} is malformed ('metadata' is not an object)")
    return data


# ---------------------------------------------------------------- the LoRA itself

@dataclass
class VerifiedLora:
    """A LoRA file whose bytes matched every recorded sha256 and whose contents are sound."""

    path: Path
    sha256: str
    data: bytes  # the exact bytes verified (export writes these, never a second read)
    tensors: dict[str, Any]
    header: dict[str, str]
    config: dict[str, Any] = field(default_factory=dict)  # the U-Net adapter config from the header (r, lora_alpha...)


def matrix_pair(key: str) -> tuple[str, str, str] | None:
    """(component, layer path, "A" or "B") of a LoRA matrix key in dotted (peft/diffusers) spelling,
    e.g. ``unet.down_blocks.0.attn1.to_q.lora.down.weight`` -> ("unet", "down_blocks.0.attn1.to_q", "A").
    None for kohya spellings (``lora_unet_*``), whose layer paths are mangled."""
    comp = next((c for prefix, c in COMPONENT_PREFIXES if key.startswith(prefix)), None)
    if comp is None or key.startswith("lora_"):
        return None
    rest = key[len(next(p for p, c in COMPONENT_PREFIXES if key.startswith(p))):]
    for down, up in _MATRIX_MARKERS:
        for marker, which in ((down, "A"), (up, "B")):
            if marker in rest and rest.endswith(".weight"):
                return comp, rest.split(marker, 1)[0], which
    return None


_ANY_MATRIX = ("lora_A.", "lora_B.", "lora.down.", "lora.up.", "lora_down.", "lora_up.")  # any spelling, old ones too
_NOT_MATRIX_OK = (".alpha", "lora_magnitude_vector")  # kohya/diffusers alphas, DoRA magnitudes


def _is_matrix(key: str) -> bool:
    return any(m in key for m in _ANY_MATRIX)


def _adapter_config(header: dict[str, str], path: Path) -> dict[str, Any]:
    if ADAPTER_METADATA_KEY not in header:
        return {}
    try:
        flat = json.loads(header[ADAPTER_METADATA_KEY])  # {"unet.r": 8, "unet.lora_alpha": 8.0, ...}
        if not isinstance(flat, dict):
            raise ValueError
        config = {k.removeprefix("unet."): v for k, v in flat.items() if k.startswith("unet.")}
        if "r" in config and (not isinstance(config["r"], int) or config["r"] < 1):
            raise ValueError
    except (ValueError, TypeError):
        raise DamagedFileError(f"LoRA file {path} has a malformed adapter-metadata header ({ADAPTER_METADATA_KEY} "
                               "is not a valid peft config): corrupted") from None
    return config


def _check_structure(tensors: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Every key is a LoRA matrix (or an alpha), every A has its B, and the rank matches the header."""
    odd = [k for k in tensors if not _is_matrix(k) and not any(m in k for m in _NOT_MATRIX_OK)]
    if odd:
        raise DamagedFileError(f"LoRA file {path}: key {odd[0]!r} is not a LoRA weight (renamed or foreign; "
                               f"{len(odd)} such key(s))")
    halves: dict[tuple[str, str], dict[str, Any]] = {}
    for key, t in tensors.items():
        where = matrix_pair(key)
        if where is not None:
            halves.setdefault(where[:2], {})[where[2]] = (key, t)
    uniform = config.get("r") if not config.get("rank_pattern") else None
    for (comp, _layer), ab in halves.items():
        if set(ab) != {"A", "B"}:
            key = next(iter(ab.values()))[0]
            raise DamagedFileError(f"LoRA file {path}: {key} has no matching {'up/B' if 'A' in ab else 'down/A'} "
                                   "matrix (a renamed or missing key)")
        (ka, a), (_, b) = ab["A"], ab["B"]
        if a.dim() < 2 or b.dim() < 2 or a.shape[0] != b.shape[1]:
            raise DamagedFileError(f"LoRA file {path}: {ka} has shape {tuple(a.shape)} but its up/B matrix "
                                   f"{tuple(b.shape)}: the ranks differ")
        if comp == "unet" and uniform is not None and a.shape[0] != uniform:
            raise DamagedFileError(f"LoRA file {path}: {ka} has rank {a.shape[0]} but the file's header says rank "
                                   f"{uniform} (wrong rank)")


def verify_lora(folder: Path | str, *, expected_sha256: str | None = None, weight_name: str = LORA_WEIGHT_NAME,
                require_manifest: bool = False) -> VerifiedLora:
    """Read and verify a LoRA (a folder, or a file path); see the module docstring for what is refused.

    ``expected_sha256`` is what the registry recorded; the folder's manifest, when present (required
    with ``require_manifest``), must record the same sum. Raises one UserError line naming the file.
    """
    folder = Path(folder).expanduser()
    if folder.is_file():
        folder, weight_name = folder.parent, folder.name
    path = folder / weight_name
    if path.suffix != ".safetensors":
        raise DamagedFileError(f"refusing to load {path}: only .safetensors LoRA files are loaded (never pickle)")
    if not folder.is_dir():
        raise DamagedFileError(f"LoRA folder not found: {folder}")
    if not path.is_file():
        raise DamagedFileError(f"LoRA folder {folder} has no {weight_name}")
    manifest = read_manifest(folder)
    if manifest is None and require_manifest:
        raise DamagedFileError(f"LoRA folder {folder} has no {MANIFEST_NAME} to check {weight_name} against")
    recorded = manifest["files"].get(weight_name) if manifest is not None else None
    if manifest is not None and recorded is None:
        raise DamagedFileError(f"LoRA manifest {folder / MANIFEST_NAME} records no sha256 for {weight_name}")
    if expected_sha256 is not None and recorded is not None and recorded != expected_sha256:
        raise DamagedFileError(f"LoRA manifest {folder / MANIFEST_NAME} records sha256 {recorded[:12]}... for "
                               f"{weight_name} but the registry {expected_sha256[:12]}...: the folder was modified "
                               "or replaced")
    data = read_verified(path, expected_sha256 or recorded, what="LoRA file",
                         source="the model registry" if expected_sha256 else str(folder / MANIFEST_NAME))
    tensors, header = parse_safetensors(data, path, what="LoRA file")
    if not tensors:
        raise DamagedFileError(f"LoRA file {path} holds no LoRA weights")
    config = _adapter_config(header, path)
    _check_structure(tensors, config, path)
    return VerifiedLora(path, sha256_hex(data), data, tensors, header, config)


# ---------------------------------------------------------------- against a model

def _base_weight(module: Any) -> Any:
    base = getattr(module, "base_layer", module)  # a peft LoRA layer wraps the original one
    return getattr(base, "weight", None)


def check_fits(lora: VerifiedLora, components: dict[str, Any], model_name: str) -> None:
    """Every dotted-spelling LoRA matrix names a layer of ``components`` (name -> torch module) whose
    input (A) or output (B) size it matches; one UserError line for the first that does not."""
    misfits: list[str] = []
    total = 0
    for key, t in lora.tensors.items():
        where = matrix_pair(key)
        if where is None or where[0] not in components:
            continue
        total += 1
        comp, layer, which = where
        try:
            module = components[comp].get_submodule(layer)
        except AttributeError:
            misfits.append(f"{key} names no layer of the {comp}")
            continue
        w = _base_weight(module)
        if w is None or w.dim() != t.dim():
            misfits.append(f"{key} names a {type(module).__name__}, not a layer a LoRA adapts")
            continue
        size, want = (t.shape[1], w.shape[1]) if which == "A" else (t.shape[0], w.shape[0])
        if size != want:
            misfits.append(f"{key} has shape {tuple(t.shape)}; the layer's {'input' if which == 'A' else 'output'} "
                           f"size is {want} (size mismatch)")
    if misfits:
        raise DamagedFileError(f"LoRA {lora.path} does not fit base model {model_name}: {len(misfits)} of {total} "
                               f"weights do not fit, e.g. {misfits[0]} (made for another base?)")


def _lora_layers(pipe: Any, components: Any, adapter: str) -> dict[str, int]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for comp in components:
        module = getattr(pipe, comp, None)
        n = 0
        if module is not None:
            for layer in module.modules():
                if isinstance(layer, BaseTunerLayer) and adapter in getattr(layer, "lora_A", {}):
                    n += 2  # one A (down) and one B (up) matrix
        out[comp] = n
    return out


def _check_landed(pipe: Any, lora: VerifiedLora, adapter: str, model_name: str) -> None:
    """What diffusers put into the pipeline is exactly the verified tensors (dotted keys: value by value;
    kohya keys: every matrix found a layer)."""
    import torch

    expected: dict[str, int] = {}
    for key, t in lora.tensors.items():
        if not _is_matrix(key):
            continue
        comp = next((c for prefix, c in COMPONENT_PREFIXES if key.startswith(prefix)), "unet")
        expected[comp] = expected.get(comp, 0) + 1
        where = matrix_pair(key)
        if where is None:
            continue
        if getattr(pipe, where[0], None) is None:
            continue
        layer = getattr(pipe, where[0]).get_submodule(where[1])
        param = getattr(layer, "lora_A" if where[2] == "A" else "lora_B")[adapter].weight
        if not torch.equal(param.detach().cpu(), t.to(param.dtype)):
            raise DamagedFileError(f"LoRA file {lora.path} changed while it was being loaded ({key} differs from the "
                                   "verified file); load it again")
    loaded = _lora_layers(pipe, expected, adapter)
    for comp, n in expected.items():
        if loaded.get(comp, 0) != n:
            raise DamagedFileError(f"LoRA {lora.path}: {n - loaded.get(comp, 0)} of {n} weights for {comp} found "
                                   f"no layer in base model {model_name} (made for another base?)")


def load_into_pipeline(pipe: Any, lora: VerifiedLora, *, adapter_name: str) -> None:
    """Load a LoRA verified by :func:`verify_lora` into a diffusers pipeline as adapter ``adapter_name``:
    it must fit the pipeline layer by layer (:func:`check_fits`) before diffusers (which reads rank and
    alpha from the header) loads it, and what lands must be exactly the verified tensors."""
    name = getattr(pipe, "name_or_path", None) or "?"
    components = {c: getattr(pipe, c) for _, c in COMPONENT_PREFIXES if getattr(pipe, c, None) is not None}
    check_fits(lora, components, name)
    try:
        pipe.load_lora_weights(str(lora.path.parent), weight_name=lora.path.name, use_safetensors=True,
                               adapter_name=adapter_name)
    except (RuntimeError, ValueError, KeyError) as e:  # what check_fits cannot foresee (kohya keys)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        why = next((ln for ln in lines if "mismatch" in ln), lines[-1])
        raise DamagedFileError(f"LoRA {lora.path} does not fit base model {name} (made for another base?): "
                               f"{why[:300]}") from None
    _check_landed(pipe, lora, adapter_name, name)

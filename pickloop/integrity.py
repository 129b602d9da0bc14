"""Reading a file against the sha256 recorded when it was written, and safetensors without pickle.

Every reader of a stored artifact (LoRA, checkpoint, reward model) reads the bytes once, checks them
against the recorded sum and parses those same bytes, so what is used is exactly what was checked.
Each failure is one ``UserError`` line naming the file.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pickloop.errors import DamagedFileError


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_verified(path: Path | str, expected_sha256: str | None, *, what: str = "file",
                  source: str = "its manifest") -> bytes:
    """The bytes of ``path``, read once and checked against ``expected_sha256`` (None: unchecked)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise DamagedFileError(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if expected_sha256 is not None:
        sha = sha256_hex(data)
        if sha != expected_sha256:
            raise DamagedFileError(f"{what} {path} is corrupted: its sha256 {sha[:12]}... does not match the "
                                   f"{expected_sha256[:12]}... recorded in {source} (truncated or modified; "
                                   "re-export or retrain it)")
    return data


def parse_safetensors(data: bytes, path: Path | str, *, what: str = "safetensors file") -> tuple[dict, dict[str, str]]:
    """(tensors, header metadata) of safetensors ``data`` read from ``path``; anything else is a UserError.

    A pickle or torch archive is recognised by its first bytes and refused; non-finite values are refused.
    """
    import torch
    from safetensors.torch import load as load_tensors

    # safetensors: 8-byte little-endian header length, then a JSON header starting with "{".
    n = int.from_bytes(data[:8], "little") if len(data) >= 8 else 0
    if len(data) < 9 or data[8:9] != b"{" or n > len(data) - 8:
        if data[:1] == b"\x80" or data[:2] == b"PK":  # pickle protocol 2+ / a torch zip archive
            raise DamagedFileError(f"{what} {path} is a pickle/torch archive renamed to .safetensors; "
                                   "refusing to load it")
        raise DamagedFileError(f"{what} {path} is corrupt or not safetensors (truncated or corrupted header)")
    try:
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict):
            raise ValueError("__metadata__ is not an object")
        tensors = load_tensors(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a bad header or a short file
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DamagedFileError(f"{what} {path} is corrupt or not safetensors (truncated or corrupted): "
                               f"{why[:200]}") from None
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DamagedFileError(f"{what} {path} holds non-finite values (NaN or inf) in {bad[0]}: corrupted")
    return tensors, {str(k): str(v) for k, v in meta.items()}


def tensors_sha256(tensors: dict, text: str = "") -> str:
    """sha256 over ``text`` and every tensor's name, dtype, shape and bytes (sorted by name): a sum a
    safetensors file can carry in its own header, since it does not depend on how the file is laid out."""
    import torch

    h = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

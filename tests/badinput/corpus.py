"""The bad-input corpus, built at test time (nothing binary is committed): damaged copies of a LoRA made
on the shipped shapes model, and images that must never be decoded or trusted.

Each LoRA damage takes a copy of a good LoRA folder and returns the sha256 the registry would hold for
it: the good file's when the damage happened after training (a flipped bit, an edited file), the
damaged file's when the writer itself recorded the damage (a NaN trained in, a broken header), so
that only the content check, not the sha256, can catch it.
"""
from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from finetune import lora as lora_io

LORA = lora_io.LORA_WEIGHT_NAME


def make_good_lora(out: Path, *, rank: int = 4) -> tuple[Path, str]:
    """A LoRA (rank 4, non-zero weights) on the shipped shapes U-Net, saved by pickloop; (folder, sha256)."""
    from diffusers import UNet2DConditionModel

    from pickloop.shapes.models import default_pipeline_dir

    unet = UNet2DConditionModel.from_pretrained(default_pipeline_dir(), subfolder="unet", use_safetensors=True)
    lora_io.add_lora(unet, rank=rank, alpha=float(rank))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in lora_io.lora_parameters(unet):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return out, lora_io.save_lora(unet, out, metadata={"method": "test"})


def _read(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(folder / LORA), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _rewrite(folder: Path, tensors: dict[str, torch.Tensor], header: dict[str, str], *, record: bool) -> str:
    """Write the weights file again; with ``record`` the manifest records the new sum (a writer that
    saved the damage itself). Returns the new file's sha256."""
    save_file(tensors, str(folder / LORA), metadata=header)
    sha = lora_io.file_sha256(folder / LORA)
    if record:
        manifest = json.loads((folder / lora_io.MANIFEST_NAME).read_text())
        manifest["files"][LORA] = sha
        (folder / lora_io.MANIFEST_NAME).write_text(json.dumps(manifest))
    return sha


def flipped_bit(folder: Path, good: str) -> str:
    data = bytearray((folder / LORA).read_bytes())
    data[-101] ^= 0x04  # inside the tensor data: the file still parses, only the sha256 can tell
    (folder / LORA).write_bytes(bytes(data))
    return good


def nan_weight(folder: Path, good: str) -> str:
    tensors, header = _read(folder)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = float("nan")
    return _rewrite(folder, tensors, header, record=True)


def scaled_x3(folder: Path, good: str) -> str:
    tensors, header = _read(folder)
    _rewrite(folder, {k: v * 3 for k, v in tensors.items()}, header, record=False)
    return good


def wrong_manifest(folder: Path, good: str) -> str:
    manifest = json.loads((folder / lora_io.MANIFEST_NAME).read_text())
    manifest["files"][LORA] = manifest["files"][lora_io.KOHYA_WEIGHT_NAME]  # another file's sum
    (folder / lora_io.MANIFEST_NAME).write_text(json.dumps(manifest))
    return good


def garbage_manifest(folder: Path, good: str) -> str:
    (folder / lora_io.MANIFEST_NAME).write_bytes(b'{"files": {"pytorch_lora\x00\xff garbage')
    return good


def wrong_rank(folder: Path, good: str) -> str:
    """Rank-2 matrices under a header that says rank 4."""
    tensors, header = _read(folder)
    cut = {k: (v[:2] if ".lora.down." in k else v[:, :2]).contiguous() for k, v in tensors.items()}
    return _rewrite(folder, cut, header, record=True)


def broken_header(folder: Path, good: str) -> str:
    tensors, header = _read(folder)
    header["lora_adapter_metadata"] = header["lora_adapter_metadata"][:-7]  # cut mid-JSON
    return _rewrite(folder, tensors, header, record=True)


def renamed_key(folder: Path, good: str) -> str:
    tensors, header = _read(folder)
    key = sorted(k for k in tensors if ".lora.down." in k)[0]
    tensors[key.replace(".lora.down.", ".lora.dwn.")] = tensors.pop(key)
    return _rewrite(folder, tensors, header, record=True)


def renamed_layer(folder: Path, good: str) -> str:
    """Both matrices of one layer moved to a layer the U-Net does not have (a file for another base)."""
    tensors, header = _read(folder)
    stem = sorted(k for k in tensors if ".lora.down." in k)[0].split(".lora.down.")[0]
    for k in [k for k in tensors if k.startswith(stem + ".")]:
        tensors[k.replace(stem, stem + "_v2")] = tensors.pop(k)
    return _rewrite(folder, tensors, header, record=True)


def truncated(folder: Path, good: str) -> str:
    data = (folder / LORA).read_bytes()
    (folder / LORA).write_bytes(data[: len(data) // 2])
    return good


def pickle_renamed(folder: Path, good: str) -> str:
    (folder / LORA).write_bytes(pickle.dumps({"unet.x.lora.down.weight": [1.0]}))
    (folder / lora_io.MANIFEST_NAME).unlink()  # nothing to compare with: the first bytes must tell
    return good


# damage -> (builder, what the one line must say)
LORA_DAMAGES: dict[str, tuple[Callable[[Path, str], str], str]] = {
    "flipped-bit": (flipped_bit, r"is corrupted: its sha256 .* does not match"),
    "nan": (nan_weight, r"non-finite values"),
    "scaled-x3": (scaled_x3, r"is corrupted: its sha256 .* does not match"),
    "wrong-manifest": (wrong_manifest, r"records sha256 .* but the registry"),
    "garbage-manifest": (garbage_manifest, r"manifest .* is unreadable"),
    "wrong-rank": (wrong_rank, r"has rank 2 but the file's header says rank 4"),
    "broken-header": (broken_header, r"malformed adapter-metadata header"),
    "renamed-key": (renamed_key, r"is not a LoRA weight"),
    "truncated": (truncated, r"is corrupted: its sha256"),
    "pickle": (pickle_renamed, r"is corrupted: its sha256|pickle/torch archive|has no manifest.json"),
}
# damages the file alone cannot show: only a model tells that a layer does not exist
FIT_DAMAGES = {"renamed-layer": (renamed_layer, r"2 of \d+ weights do not fit, e.g. .* names no layer of the unet")}
ALL_DAMAGES = {**LORA_DAMAGES, **FIT_DAMAGES}


def damaged_copy(good: Path, good_sha: str, damage: str, dest: Path) -> tuple[Path, str]:
    """A copy of the good LoRA folder with ``damage`` applied; (folder, sha256 the registry holds)."""
    shutil.copytree(good, dest)
    return dest, ALL_DAMAGES[damage][0](dest, good_sha)


# ---------------------------------------------------------------- images

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels in about 100 kB (900 megapixels once decoded).

    The zlib stream is built from one compressed block of rows repeated (each block ends in a full
    flush, so it does not depend on the one before), with the real adler32 of all rows at the end.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0, then side bits
    rows_per_block = 100
    assert side % rows_per_block == 0
    block, n = row * rows_per_block, side // rows_per_block
    co = zlib.compressobj(9)
    head = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)  # carries the zlib header
    body = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    idat = head + body * (n - 1) + b"\x03\x00" + struct.pack(">I", adler)  # an empty final block, then the sum
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def plant_in_store(images, data: bytes, sha256: str | None = None) -> str:  # ImageStore
    """Write ``data`` straight into the image store's folder under ``sha256`` (default: its own sum),
    as a damaged disk or another program would, bypassing every check of ``put``."""
    import hashlib

    sha = sha256 or hashlib.sha256(data).hexdigest()
    target = Path(images.path(sha))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return sha

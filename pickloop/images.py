"""Content-addressed image store: images live as ``<root>/ab/cd/<sha256>.png``, reached through fsspec.

Nothing a user types names a path: images are put by content and opened by a 64-hex sha256, so
``..`` or an absolute path can never reach outside the root. The root is a local folder by default
and any fsspec URL (``s3://bucket/pickloop``) when configured.

Every read checks the bytes against the sha256 in the name (hashed once, as they are read): a file
corrupted on disk, or another picture swapped in under the name, is refused with one line naming the
file, so it is never exported, shown, trained on or scored as the image the store recorded. Putting
the right image again repairs the file. Every image decoded anywhere in pickloop goes through
:func:`decode_image`, which refuses more than ``MAX_IMAGE_PIXELS`` before decoding a pixel (a
decompression bomb: a small PNG that claims 30000x30000 pixels).
"""
from __future__ import annotations

import hashlib
import io
import re
import uuid
import warnings
from pathlib import Path

import fsspec
from PIL import Image, UnidentifiedImageError

from pickloop.errors import DamagedFileError, UserError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096  # width x height; 16 SDXL images' worth, and 48 MiB once decoded as RGB


def decode_image(data: bytes, *, what: str = "image") -> Image.Image:
    """Decode and fully load ``data``; empty, truncated, oversized or non-image bytes are one clear error."""
    img = open_image_header(data, what=what)
    try:
        img.load()  # decode every byte now: a truncated file fails here, not later
    except (OSError, SyntaxError, ValueError) as e:
        raise DamagedFileError(f"{what} is not a readable image: {e}") from None
    return img


def open_image_header(data: bytes, *, what: str = "image") -> Image.Image:
    """``data`` opened but not decoded (PIL reads the header only), refused when it is empty, not an
    image, or has more than ``MAX_IMAGE_PIXELS`` pixels."""
    if not data:
        raise DamagedFileError(f"{what} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():  # PIL's own bomb warning; our limit below is lower and an error
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise Image.DecompressionBombError(f"{width}x{height} pixels")
    except Image.DecompressionBombError as e:  # ours above, or PIL's own (beyond twice its default limit)
        raise DamagedFileError(f"{what} has more than the {MAX_IMAGE_PIXELS:,} pixels allowed, refused before decoding "
                               f"(a decompression bomb?): {str(e).split(', could be')[0]}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DamagedFileError(f"{what} is not a readable image: {e}") from None
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class ImageStore:
    def __init__(self, url: str):
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.fs.makedirs(self.root, exist_ok=True)

    def path(self, sha256: str) -> str:
        if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
            raise UserError(f"not an image id (64 hex digits): {str(sha256)[:80]!r}")
        return f"{self.root}/{sha256[:2]}/{sha256[2:4]}/{sha256}.png"

    def put(self, image: Image.Image | bytes) -> str:
        """Store an image (PIL or encoded bytes, re-encoded as PNG); return its sha256. Idempotent."""
        if isinstance(image, (bytes, bytearray)):
            image = decode_image(bytes(image))
        data = png_bytes(image)
        sha = hashlib.sha256(data).hexdigest()
        target = self.path(sha)
        if not self._holds(target, sha):  # absent, or damaged: (re)written
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            tmp = f"{target}.{uuid.uuid4().hex}.tmp"  # write then rename: no half-written image is ever named
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, target)
        return sha

    def put_file(self, user_path: str, *, base: str | Path) -> str:
        """Store the image file ``user_path``, which must lie inside ``base`` (no ``..``, no absolute path)."""
        return self.put(read_user_image_bytes(user_path, base=base))

    def _holds(self, target: str, sha256: str) -> bool:
        try:
            with self.fs.open(target, "rb") as f:
                return hashlib.sha256(f.read()).hexdigest() == sha256
        except FileNotFoundError:
            return False

    def read_bytes(self, sha256: str) -> bytes:
        """The stored bytes, checked against the sha256 they are stored under."""
        target = self.path(sha256)
        try:
            with self.fs.open(target, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise DamagedFileError(f"image {sha256[:12]}… is not in the store (file {target} missing)") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise DamagedFileError(f"image file {target} does not match the sha256 it is stored under (corrupted or "
                                   "replaced); refusing to use it")
        return data

    def open(self, sha256: str) -> Image.Image:
        return decode_image(self.read_bytes(sha256), what=f"image file {self.path(sha256)}").convert("RGB")

    def verify(self, sha256s) -> None:  # noqa: ANN001 - any iterable of ids
        """Read each image once and check it against its name and the pixel limit, without decoding it:
        what a long job runs before it loads any model, so that a bad file is one line at once."""
        for sha in dict.fromkeys(sha256s):
            open_image_header(self.read_bytes(sha), what=f"image file {self.path(sha)}")

    def exists(self, sha256: str) -> bool:
        return self.fs.exists(self.path(sha256))

    def local_path(self, sha256: str) -> str | None:
        """A filesystem path when the store is local (for serving), else None."""
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        return self.path(sha256) if {"file", "local"} & set(protocols) else None


def safe_relative_path(user_path: str, *, base: str | Path) -> Path:
    """``base / user_path`` if it stays inside base; absolute paths and ``..`` are refused."""
    p = Path(user_path)
    if p.is_absolute() or user_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", user_path):
        raise UserError(f"image path must be relative to {base}: {user_path!r}")
    if ".." in p.parts:
        raise UserError(f"image path may not contain '..': {user_path!r}")
    full = (Path(base) / p).resolve()
    if not full.is_relative_to(Path(base).resolve()):
        raise UserError(f"image path leaves {base}: {user_path!r}")
    return full


def read_user_image_bytes(user_path: str, *, base: str | Path) -> bytes:
    full = safe_relative_path(user_path, base=base)
    if not full.is_file():
        raise UserError(f"no such image file: {user_path}")
    if full.stat().st_size > MAX_IMAGE_BYTES:
        raise UserError(f"image file too large (> {MAX_IMAGE_BYTES // 2**20} MiB): {user_path}")
    data = full.read_bytes()
    decode_image(data, what=f"image file {user_path}")
    return data

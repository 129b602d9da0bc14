"""The content-addressed image store and user-given image paths."""
from __future__ import annotations

import hashlib

import pytest
from PIL import Image

from pickloop.errors import UserError
from pickloop.images import ImageStore, png_bytes, read_user_image_bytes


def test_put_is_content_addressed_and_idempotent(tmp_path):
    store = ImageStore(str(tmp_path / "img"))
    img = Image.new("RGB", (16, 16), (10, 200, 30))
    sha = store.put(img)
    assert sha == hashlib.sha256(png_bytes(img)).hexdigest()
    assert store.put(img) == sha and store.put(png_bytes(img)) == sha
    assert store.open(sha).getpixel((0, 0)) == (10, 200, 30)
    assert not list((tmp_path / "img").rglob("*.tmp"))  # no half-written file left behind


def test_image_ids_cannot_name_paths(tmp_path):
    store = ImageStore(str(tmp_path / "img"))
    for bad in ["../../etc/passwd", "/etc/passwd", "a" * 63, "A" * 64, "0" * 64 + "/.."]:
        with pytest.raises(UserError, match="not an image id"):
            store.open(bad)
    with pytest.raises(UserError, match="not in the store"):
        store.open("0" * 64)


def test_user_paths_stay_inside_base(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(Image.new("RGB", (4, 4))))
    assert read_user_image_bytes("ok.png", base=tmp_path)
    with pytest.raises(UserError, match=r"may not contain '\.\.'"):
        read_user_image_bytes("../ok.png", base=tmp_path / "sub")
    with pytest.raises(UserError, match="must be relative"):
        read_user_image_bytes(str(tmp_path / "ok.png"), base=tmp_path)


def test_empty_and_truncated_images_refused(tmp_path):
    store = ImageStore(str(tmp_path / "img"))
    data = png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    with pytest.raises(UserError, match="empty"):
        store.put_file("empty.png", base=tmp_path)
    for name in ["cut.png", "text.png"]:
        with pytest.raises(UserError, match="not a readable image"):
            store.put_file(name, base=tmp_path)
    assert not any(p.is_file() for p in (tmp_path / "img").rglob("*"))  # nothing half-stored

"""Images that must never be decoded or trusted: a decompression bomb, and store files that are not
what their sha256 name says (corrupted on disk, or another valid picture swapped in)."""
from __future__ import annotations

import io
import os
import struct

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlmodel import select

from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.images import MAX_IMAGE_PIXELS, decode_image, png_bytes
from pickloop.schema import Candidate, Judgement
from tests.badinput.corpus import bomb_png, plant_in_store


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png()


def _one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pickloop: error: "), err
    assert all(n in err[0] for n in needles), err
    return err[0]


def _first_candidate(ctx) -> Candidate:
    with read_session(ctx.engine) as s:
        return s.exec(select(Candidate).order_by(Candidate.id)).first()


def _other_png(colour=(1, 2, 3)) -> bytes:
    return png_bytes(Image.new("RGB", (64, 64), colour))


def test_bomb_is_refused_from_its_header(bomb):
    assert len(bomb) < 200_000 and struct.unpack(">II", bomb[16:24]) == (30000, 30000) > (4096, 4096)
    assert 30000 * 30000 > MAX_IMAGE_PIXELS
    with pytest.raises(Image.DecompressionBombError):  # PIL's own judgement: a genuine bomb
        Image.open(io.BytesIO(bomb))
    with pytest.raises(UserError, match="more than the 16,777,216 pixels allowed.*decompression bomb") as e:
        decode_image(bomb, what="image file x.png")
    assert "\n" not in str(e.value) and "x.png" in str(e.value)
    with pytest.raises(UserError, match="more than the 16,777,216 pixels allowed.*4100x4100"):
        decode_image(bomb_png(4100))  # over our limit, under PIL's own: the same one line
    assert decode_image(bomb_png(4000)).size == (4000, 4000)  # under the limit: decoded


def test_bomb_in_reward_score(bomb, home, tmp_path, capsys, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(bomb)
    monkeypatch.chdir(tmp_path)
    assert main(["reward", "score", "--prompt", "a red circle", "bomb.png"]) == 2
    _one_error_line(capsys, "bomb.png", "decompression bomb")


def _pickapic_file(path, jpg_0: bytes, jpg_1: bytes) -> None:
    pq.write_table(pa.Table.from_pylist([{
        "caption": "a red circle", "jpg_0": jpg_0, "jpg_1": jpg_1, "image_0_uid": "u0", "image_1_uid": "u1",
        "model_0": "m", "model_1": "m", "label_0": 1.0, "label_1": 0.0, "has_label": True, "ranking_id": 1,
        "user_id": "ann"}]), path)


def _judgements(ctx) -> int:
    with read_session(ctx.engine) as s:
        return len(s.exec(select(Judgement)).all())


def test_bomb_in_import(bomb, ctx, tmp_path, capsys):
    _pickapic_file(tmp_path / "bomb.parquet", bomb, _other_png())
    assert main(["import", str(tmp_path / "bomb.parquet")]) == 2
    _one_error_line(capsys, "decompression bomb")
    assert _judgements(ctx) == 0


@pytest.mark.parametrize("method", ["auto", "dpo"])
@pytest.mark.parametrize("bad", ["bomb", "swapped"])
def test_finetune_run_refuses_bad_store_image(bad, method, bomb, labelled, capsys):
    cand = _first_candidate(labelled)
    if bad == "bomb":  # stored under its own sha256, as an import before the pixel limit would have left it
        sha = plant_in_store(labelled.images, bomb)
        with write_session(labelled.engine) as s:
            row = s.get(Candidate, cand.id)
            row.image_sha256 = sha
            s.add(row)
    else:  # another valid picture under the candidate's name
        sha = plant_in_store(labelled.images, _other_png(), cand.image_sha256)
    config = '{"dpo": {"steps": 1}}' if method == "auto" else '{"steps": 1}'
    assert main(["finetune", "run", "--method", method, "--config", config]) == 2
    _one_error_line(capsys, sha[:12] if bad == "bomb" else labelled.images.path(sha))
    assert not list(labelled.settings.lora_dir.glob("*"))  # nothing trained, nothing half-written


def test_swapped_or_corrupted_store_file_is_refused_and_put_repairs_it(ctx):
    good = Image.new("RGB", (16, 16), (200, 10, 10))
    sha = ctx.images.put(good)
    path = ctx.images.path(sha)
    for damage in (_other_png(), open(path, "rb").read()[:-20]):  # another PNG; a truncated file
        with open(path, "wb") as f:
            f.write(damage)
        for read in (ctx.images.read_bytes, ctx.images.open):
            with pytest.raises(UserError, match="does not match the sha256 it is stored under") as e:
                read(sha)
            assert str(e.value).count("\n") == 0 and path in str(e.value)
        assert ctx.images.put(good) == sha  # putting the right picture again repairs the file
        assert ctx.images.open(sha).getpixel((0, 0)) == (200, 10, 10)


@pytest.fixture
def swapped(labelled):
    """The labelled home with another valid PNG under its first candidate's sha256 name."""
    cand = _first_candidate(labelled)
    plant_in_store(labelled.images, _other_png(), cand.image_sha256)
    return labelled, labelled.images.path(cand.image_sha256)


def test_export_refuses_swapped_image(swapped, tmp_path, capsys):
    ctx, path = swapped
    out = tmp_path / "labels.parquet"
    assert main(["export", str(out)]) == 2
    _one_error_line(capsys, path)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".labels")]


def test_reward_train_refuses_swapped_image(swapped, capsys):
    ctx, path = swapped
    assert main(["reward", "train"]) == 2
    _one_error_line(capsys, path)


def test_import_refuses_swapped_image_in_a_pickloop_export(labelled, tmp_path, capsys, monkeypatch):
    out = tmp_path / "labels.parquet"
    assert main(["export", str(out)]) == 0
    table = pq.read_table(out).to_pylist()
    table[0]["jpg_0"] = _other_png()  # another picture under the first image's sha256
    pq.write_table(pa.Table.from_pylist(table), out)
    monkeypatch.setenv("PICKLOOP_HOME", str(tmp_path / "other-home"))
    capsys.readouterr()
    assert main(["import", str(out)]) == 2
    _one_error_line(capsys, str(out), "column jpg_0", "not the image image_0_uid names")
    from pickloop.context import Context

    assert _judgements(Context()) == 0

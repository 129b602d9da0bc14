"""Pick-a-Pic export then import into an empty store gives the same judgements."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from sqlmodel import select

from pickloop.db import make_engine, read_session, upgrade, write_session
from pickloop.errors import UserError
from pickloop.exchange import PICKAPIC_COLUMNS, export_parquet, import_parquet
from pickloop.images import ImageStore
from pickloop.schema import Candidate, Judgement, Prompt, Rater
from pickloop.store import add_rater, candidates_of, preference_pairs, record_judgement
from tests.core.helpers import make_ready_set


def _summary(engine):
    with read_session(engine) as s:
        out = []
        for j in s.exec(select(Judgement).order_by(Judgement.id)):
            cands = {c.id: c for c in candidates_of(session=s, comparison_id=j.comparison_id)}
            out.append((s.get(Rater, j.rater_id).name, j.choice,
                        cands[j.winner_id].image_sha256 if j.winner_id else None,
                        [cands[i].image_sha256 for i in j.shown_order], j.time_ms,
                        s.get(Prompt, next(iter(cands.values())).prompt_id).text))
        pairs = sorted((p.a.image_sha256, p.b.image_sha256, p.label) for p in preference_pairs(session=s))
        return out, pairs


def test_round_trip_keeps_every_label(tmp_path):
    src = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(src)
    imgs = ImageStore(str(tmp_path / "img_a"))
    with write_session(src) as s:
        r1, _ = add_rater(session=s, name="ann")
        r2, _ = add_rater(session=s, name="بوب")
        for i, choice in enumerate(["pick", "tie", "none", "skip", "pick"]):
            comp = make_ready_set(s, imgs, prompt=f"prompt {i % 3} — ✓", n=2 + i % 3, raters_wanted=1 + i % 2)
            ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)][::-1]
            for r in (r1, r2)[: 1 + i % 2]:
                record_judgement(session=s, comparison_id=comp.id, rater_id=r.id, choice=choice,
                                 winner_id=ids[-1] if choice == "pick" else None, shown_order=ids,
                                 idempotency_key=f"{comp.key}:{r.id}", time_ms=100 * i)
    out = tmp_path / "labels.parquet"
    with read_session(src) as s:
        n = export_parquet(session=s, images=imgs, path=out)
    table = pq.read_table(out)
    assert set(PICKAPIC_COLUMNS) <= set(table.column_names) and table.num_rows == n
    assert sorted(set(table.column("label_0").to_pylist())) == [0.0, 0.5, 1.0]

    dst = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    upgrade(dst)
    imgs_b = ImageStore(str(tmp_path / "img_b"))
    with write_session(dst) as s:
        assert import_parquet(session=s, images=imgs_b, path=out) == (7, 0)
    with write_session(dst) as s:  # importing again adds nothing
        assert import_parquet(session=s, images=imgs_b, path=out) == (0, 7)
    assert _summary(dst) == _summary(src)
    with read_session(dst) as s:
        for c in s.exec(select(Candidate)):
            assert imgs_b.exists(c.image_sha256)


def test_public_layout_without_pickloop_columns(tmp_path):
    import io

    import pyarrow as pa
    from PIL import Image

    def png(color):
        b = io.BytesIO()
        Image.new("RGB", (4, 4), color).save(b, format="PNG")
        return b.getvalue()

    rows = [dict(caption="a cat", jpg_0=png((255, 0, 0)), jpg_1=png((0, 0, 255)), image_0_uid="u0",
                 image_1_uid="u1", model_0="sdxl", model_1="sd15", label_0=l0, label_1=1 - l0, ranking_id=k,
                 user_id=7, has_label=True) for k, l0 in enumerate([1.0, 0.0, 0.5])]
    f = tmp_path / "pub.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    e = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    upgrade(e)
    with write_session(e) as s:
        assert import_parquet(session=s, images=ImageStore(str(tmp_path / "i")), path=f) == (3, 0)
    with read_session(e) as s:
        assert sorted(p.label for p in preference_pairs(session=s)) == [0.5, 1.0, 1.0]


def test_bad_file_is_one_line(tmp_path):
    f = tmp_path / "x.parquet"
    f.write_bytes(b"not parquet")
    e = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    upgrade(e)
    with pytest.raises(UserError, match="cannot read parquet"):
        with write_session(e) as s:
            import_parquet(session=s, images=ImageStore(str(tmp_path / "i")), path=f)

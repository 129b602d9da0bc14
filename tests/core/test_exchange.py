"""Pick-a-Pic export then import into an empty store gives the same judgements."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from sqlmodel import select

from pickloop.db import make_engine, read_session, upgrade, write_session
from pickloop.errors import UserError
from pickloop.exchange import PICKAPIC_COLUMNS, export_parquet, import_parquet, undecided_path
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
    table, side = pq.read_table(out), pq.read_table(undecided_path(out))
    assert set(PICKAPIC_COLUMNS) <= set(table.column_names) and table.num_rows + side.num_rows == n
    assert sorted(set(table.column("label_0").to_pylist())) == [0.0, 1.0]  # decided pairs only
    assert set(table.column("pl_choice").to_pylist()) == {"pick"}
    assert set(side.column("pl_choice").to_pylist()) == {"tie", "none", "skip"}
    ties = [r for r in side.to_pylist() if r["pl_choice"] == "tie"]
    assert ties and all(r["label_0"] == r["label_1"] == 0.5 and r["has_label"] for r in ties)
    assert not any(r["has_label"] for r in side.to_pylist() if r["pl_choice"] != "tie")

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


def _diffusers_dpo_reader(rows: list[dict]) -> list[tuple[str, str]]:
    """(preferred, other) image uid per row as the diffusers DPO example (train_diffusion_dpo.py,
    ``preprocess_train``) reads them: it keeps every row, swaps the images only when label_0 == 0, and
    trains the first as the winner."""
    return [(r["image_1_uid"], r["image_0_uid"]) if r["label_0"] == 0 else (r["image_0_uid"], r["image_1_uid"])
            for r in rows]


def _official_dpo_reader(rows: list[dict]) -> list[tuple[str, str]]:
    """The official Diffusion-DPO code: rows with label_0 in (0, 1) only, then the same swap."""
    return _diffusers_dpo_reader([r for r in rows if r["label_0"] in (0, 1)])


def test_dpo_readers_read_every_exported_row_right(tmp_path):
    """Ties and unlabelled answers stay out of the file DPO readers train on, and the winner's position is
    balanced: the readers' pairs are exactly the raters' (winner, loser) pairs, half with the winner second."""
    e = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(e)
    imgs = ImageStore(str(tmp_path / "img"))
    truth = set()
    with write_session(e) as s:
        r, _ = add_rater(session=s, name="ann")
        for i in range(40):
            choice = ["pick", "pick", "tie", "none", "skip"][i % 5]
            comp = make_ready_set(s, imgs, prompt=f"prompt {i % 7}", n=2 + i % 3)
            cands = candidates_of(session=s, comparison_id=comp.id)
            winner = cands[i % len(cands)]
            record_judgement(session=s, comparison_id=comp.id, rater_id=r.id, choice=choice,
                             winner_id=winner.id if choice == "pick" else None,
                             shown_order=[c.id for c in cands], idempotency_key=f"k{i}", time_ms=10)
            if choice == "pick":
                truth |= {(winner.image_sha256, c.image_sha256, f"k{i}") for c in cands if c.id != winner.id}
    out = tmp_path / "labels.parquet"
    with read_session(e) as s:
        export_parquet(session=s, images=imgs, path=out)
    rows = pq.read_table(out).to_pylist()
    keyed = {(w, l_, r["pl_key"]) for (w, l_), r in zip(_diffusers_dpo_reader(rows), rows)}
    assert keyed == truth and len(rows) == len(truth)
    assert sorted(_official_dpo_reader(rows)) == sorted(_diffusers_dpo_reader(rows))
    second = sum(r["label_0"] == 0 for r in rows)
    assert abs(2 * second - len(rows)) <= 1  # the winner sits in each position half the time
    assert all(r["best_image_uid"] == (r["image_0_uid"] if r["label_0"] == 1 else r["image_1_uid"]) for r in rows)
    assert all(r["num_example_per_prompt"] == sum(q["caption"] == r["caption"] for q in rows) for r in rows)
    with read_session(e) as s:  # a rerun writes the same file
        export_parquet(session=s, images=imgs, path=tmp_path / "again.parquet")
    assert pq.read_table(tmp_path / "again.parquet").to_pylist() == rows


def test_export_without_undecided_answers_leaves_no_sibling(tmp_path):
    e = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(e)
    imgs = ImageStore(str(tmp_path / "img"))
    out = tmp_path / "labels.parquet"
    undecided_path(out).write_bytes(b"stale")
    with write_session(e) as s:
        r, _ = add_rater(session=s, name="ann")
        comp = make_ready_set(s, imgs, n=3)
        ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
        record_judgement(session=s, comparison_id=comp.id, rater_id=r.id, choice="pick", winner_id=ids[1],
                         shown_order=ids, idempotency_key="k", time_ms=1)
    with read_session(e) as s:
        assert export_parquet(session=s, images=imgs, path=out) == 2
    assert not undecided_path(out).exists()

"""Bad-input corpus for ``pickloop import``: each damaged Pick-a-Pic file is refused in one line naming
its row and column, exit 2, and nothing is written (no row, no image); ``pickloop export`` still works.

The corpus is generated here from a good export (no binaries are committed): each case changes one
column of it the way a hand-edited, truncated or hostile file would.
"""
from __future__ import annotations

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from sqlalchemy import func
from sqlmodel import select

from pickloop.cli import main
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.schema import Candidate, Comparison, Judgement, ModelVersion, Prompt, Rater
from pickloop.store import add_rater, candidates_of, record_judgement
from tests.core.helpers import make_ready_set

OTHER_SHA = hashlib.sha256(b"an image that is not in the file").hexdigest()


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_rows(tmp_path_factory) -> list[dict]:
    """The rows of a good pickloop export: a pick among 3 candidates, a tie of 2, a skip on an overlap set."""
    from pickloop.settings import get_settings

    home = tmp_path_factory.mktemp("source")
    ctx = Context(settings=get_settings(home=home, database_url=f"sqlite:///{home / 'p.db'}",
                                        image_store_url=str(home / "images")))
    with write_session(ctx.engine) as s:
        ann, _ = add_rater(session=s, name="ann")
        for i, (choice, n) in enumerate([("pick", 3), ("tie", 2), ("skip", 2)]):
            comp = make_ready_set(s, ctx.images, prompt=f"a red circle {i}", n=n, raters_wanted=1 + (i == 2))
            ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
            record_judgement(session=s, comparison_id=comp.id, rater_id=ann.id, choice=choice,
                             winner_id=ids[1] if choice == "pick" else None, shown_order=ids[::-1],
                             idempotency_key=f"{comp.key}:{ann.id}", time_ms=120 + i)
    out = home / "good.parquet"
    from pickloop.exchange import export_parquet

    with read_session(ctx.engine) as s:
        export_parquet(session=s, images=ctx.images, path=out)
    return _exported_rows(out)


def _exported_rows(path) -> list[dict]:
    """The rows of an export: its decided pairs, then the ties and unlabelled rows of its sibling file (one
    file holding both imports the same)."""
    from pickloop.exchange import undecided_path

    side = undecided_path(path)
    return pq.read_table(path).to_pylist() + (pq.read_table(side).to_pylist() if side.is_file() else [])


def _set(col, value, rows=(0,)):
    """A change: ``col`` := ``value`` in the given rows (all rows when ``rows`` is None)."""
    def change(table: list[dict]) -> None:
        for i, r in enumerate(table):
            if rows is None or i in rows:
                r[col] = value(r) if callable(value) else value
    return change


def _both(col_a, value_a, col_b, value_b):
    """A change of two columns of the first row."""
    def change(table: list[dict]) -> None:
        table[0][col_a], table[0][col_b] = value_a, value_b
    return change


def _candidates(edit):
    """A change to the first row's pl_candidates JSON."""
    def change(table: list[dict]) -> None:
        specs = json.loads(table[0]["pl_candidates"])
        edit(specs)
        table[0]["pl_candidates"] = json.dumps(specs)
    return change


# (case, change, row, column named in the message)
CORPUS = [
    ("jpg_0 is text", _set("jpg_0", "not bytes", None), 1, "jpg_0"),
    ("jpg_1 is empty", _set("jpg_1", b""), 1, "jpg_1"),
    ("pl_candidates is not JSON", _set("pl_candidates", "{not json"), 1, "pl_candidates"),
    ("pl_candidates is a JSON object", _set("pl_candidates", "{}"), 1, "pl_candidates"),
    ("pl_shown_slots names slot 9", _set("pl_shown_slots", "[0, 1, 9]"), 1, "pl_shown_slots"),
    ("pl_shown_slots misses a slot", _set("pl_shown_slots", "[0, 1]"), 1, "pl_shown_slots"),
    ("pl_raters_wanted is text", _set("pl_raters_wanted", "abc", None), 1, "pl_raters_wanted"),
    ("pl_raters_wanted is negative", _set("pl_raters_wanted", -5, (3,)), 4, "pl_raters_wanted"),
    ("pl_time_ms is text", _set("pl_time_ms", "fast", None), 1, "pl_time_ms"),
    ("pl_time_ms is below -1", _set("pl_time_ms", -7, (2,)), 3, "pl_time_ms"),
    ("candidate image id is a path", _candidates(lambda c: c[0].update(sha="../../../../etc/passwd")), 1,
     "pl_candidates"),
    ("candidate image is not in the file", _candidates(lambda c: c[0].update(sha=OTHER_SHA)), 1, "pl_candidates"),
    ("candidate slot twice", _candidates(lambda c: c[1].update(slot=c[0]["slot"])), 1, "pl_candidates"),
    ("candidate slot out of range", _candidates(lambda c: c[0].update(slot=99)), 1, "pl_candidates"),
    ("candidate seed is text", _candidates(lambda c: c[0].update(seed="x")), 1, "pl_candidates"),
    ("candidate params not an object", _candidates(lambda c: c[0].update(params=[1])), 1, "pl_candidates"),
    ("image id is a path", _set("image_0_uid", "../../../../etc/passwd"), 1, "image_0_uid"),
    ("image bytes swapped for another image", _set("jpg_0", _png((1, 2, 3))), 1, "jpg_0"),
    ("image bytes are not an image", _set("jpg_1", b"GIF89a not really", (1,)), 2, "jpg_1"),
    ("image bytes are not an image but match their id",
     _both("jpg_1", b"\x89PNG garbage", "image_1_uid", hashlib.sha256(b"\x89PNG garbage").hexdigest()), 1, "jpg_1"),
    ("label is 2", _set("label_0", 2.0, (1,)), 2, "label_0"),
    ("label is NaN", _set("label_1", float("nan"), (1,)), 2, "label_1"),
    ("choice unknown", _set("pl_choice", "maybe"), 1, "pl_choice"),
    ("pick names a slot not in the set", _set("pl_winner_slot", 7), 1, "pl_winner_slot"),
    ("caption is only zero-width characters", _set("caption", "\u200b\u200d\ufeff"), 1, "caption"),
    ("caption holds a NUL", _set("caption", "a\x00b"), 1, "caption"),
    ("caption is null", _set("caption", None, (2,)), 3, "caption"),
    ("model is null", _set("model_1", None, (1,)), 2, "model_1"),
    ("model name is 200 characters", _set("model_0", "m" * 200), 1, "model_0"),
    ("ranking_id is null", _set("ranking_id", None, (0,)), 1, "ranking_id"),
    ("set key is 100 characters", _set("pl_set_key", "k" * 100), 1, "pl_set_key"),
    ("idempotency key is 300 characters", _set("pl_key", "k" * 300), 1, "pl_key"),
    ("user_id holds a control character", _set("user_id", "ann\x1b[31m"), 1, "user_id"),
]


def _state(ctx: Context) -> tuple:
    """Every table's row count and every file under the image store."""
    with read_session(ctx.engine) as s:
        counts = tuple(s.exec(select(func.count()).select_from(t)).one()
                       for t in (Prompt, Rater, ModelVersion, Comparison, Candidate, Judgement))
    return counts, sorted(p.name for p in (ctx.home / "images").rglob("*") if p.is_file())


def _use_home(mp: pytest.MonkeyPatch, home) -> None:
    mp.setenv("PICKLOOP_HOME", str(home))
    mp.delenv("PICKLOOP_DATABASE_URL", raising=False)
    mp.delenv("PICKLOOP_CONFIG", raising=False)


@pytest.fixture(scope="module")
def labelled_home(good_rows, tmp_path_factory):
    """A data home holding the good file's labels, imported through the command line. Shared by the
    corpus: each case checks that its refused import left the home exactly as it found it."""
    home = tmp_path_factory.mktemp("store") / "home"
    good = home.parent / "good.parquet"
    pq.write_table(pa.Table.from_pylist(good_rows), good)
    with pytest.MonkeyPatch.context() as mp:
        _use_home(mp, home)
        assert main(["import", str(good)]) == 0
    return home


@pytest.fixture
def store_with_labels(labelled_home, monkeypatch, capsys):
    _use_home(monkeypatch, labelled_home)
    capsys.readouterr()
    return Context()


@pytest.mark.parametrize("case,change,row,column", CORPUS, ids=[c[0] for c in CORPUS])
def test_damaged_file_is_refused_in_one_line_and_nothing_is_written(store_with_labels, good_rows, tmp_path,
                                                                     capsys, case, change, row, column):
    ctx = store_with_labels
    rows = [dict(r) for r in good_rows]
    change(rows)
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    before = _state(ctx)
    assert main(["import", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"row {row}, column {column}:" in err, err
    assert _state(ctx) == before
    out = tmp_path / "after.parquet"
    assert main(["export", str(out)]) == 0  # the store is whole: export still works
    assert len(_exported_rows(out)) == len(good_rows)


def test_import_of_good_rows_into_a_fresh_store_keeps_counts(store_with_labels, good_rows):
    counts, files = _state(store_with_labels)
    assert counts[4:] == (3 + 2 + 2, 3)  # candidates, judgements
    assert len(files) == 3  # the solid colours of make_ready_set (sets of 3 and 2 share them)


def _public_rows(uids: list[tuple[str, str]], user_ids: list) -> list[dict]:
    return [dict(caption="a cat", jpg_0=_png((255, 0, 0)), jpg_1=_png((0, 0, 255)), image_0_uid=u0,
                 image_1_uid=u1, model_0="sdxl", model_1="sd15", label_0=1.0, label_1=0.0, ranking_id=k,
                 user_id=user, has_label=True) for k, ((u0, u1), user) in enumerate(zip(uids, user_ids))]


def test_public_file_with_sha256_image_ids_and_null_user_imports_once(home, tmp_path, capsys):
    """64-hex image ids make the old key 139 characters: it is hashed, deterministically, so a re-import is
    a no-op; short keys keep their old form; a null user_id becomes the rater ``unknown``, not ``None``."""
    sha = [hashlib.sha256(f"img{i}".encode()).hexdigest() for i in range(4)]
    rows = _public_rows([(sha[0], sha[1]), (sha[2], sha[3]), ("u0", "u1")], [None, "7", "bob"])
    f = tmp_path / "pub.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    assert main(["import", str(f)]) == 0
    assert main(["import", str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["3 judgements imported, 0 already present", "0 judgements imported, 3 already present"]
    with read_session(Context().engine) as s:
        keys = sorted(j.idempotency_key for j in s.exec(select(Judgement)))
        names = sorted(r.name for r in s.exec(select(Rater)))
    assert "pickapic:2:u0:u1" in keys and all(len(k) <= 128 for k in keys)
    assert sum(k.startswith("pickapic-sha256:") for k in keys) == 2
    assert names == ["7", "bob", "unknown"]


def test_public_file_with_an_unreadable_image_writes_no_image(home, tmp_path, capsys):
    rows = _public_rows([("a", "b"), ("c", "d")], ["x", "y"])
    rows[1]["jpg_1"] = b"\xff\xd8\xff not a jpeg"
    f = tmp_path / "pub.parquet"
    pq.write_table(pa.Table.from_pylist(rows), f)
    assert main(["import", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "row 2, column jpg_1: the image is not a readable image" in err, err
    assert not list((home / "images").rglob("*.png"))  # the first row's good images were not written either

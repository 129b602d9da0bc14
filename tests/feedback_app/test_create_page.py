"""The Create page under Streamlit's AppTest, driven as its panel's script drives it: a request for
candidates, then keeps, replays and undos in the outbox. The model is replaced by solid colours here
(the real drawing: test_create.py and the Chromium test)."""
from __future__ import annotations

import base64
import io
import json
import uuid

import pytest
from PIL import Image
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from feedback_app import create
from pickloop.db import write_session
from pickloop.schema import Comparison, Judgement, Prompt
from pickloop.store import ensure_base_version
from tests.feedback_app.helpers import APP_DIR, count, judgements
from tests.feedback_app.test_create import FakeDraw

KEY = "create_panel"


@pytest.fixture
def draw(ctx, monkeypatch):
    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
    fake = FakeDraw()
    monkeypatch.setattr(create, "draw_candidates", fake)
    monkeypatch.setattr(create, "warm_up", lambda ctx, rater_id: None)  # no model to load
    return fake


def page(ident=None) -> AppTest:
    at = AppTest.from_file(str(APP_DIR / "pages" / "create.py"), default_timeout=60)
    if ident is not None:
        at.session_state["identity"] = ident
    return at.run()


def data(at) -> dict | None:
    found = [e for e in at.get("bidi_component") if e.proto.component_name == "pickloop.create_panel"]
    return json.loads(found[0].proto.json) if found else None


def send(at, *, request=None, outbox=None, held=None):
    """Set the component's state as the panel's script does, and rerun."""
    prev = at.session_state[KEY] if KEY in at.session_state else {}
    value = {"request": prev.get("request"), "outbox": prev.get("outbox", []), "held": prev.get("held")}
    if request is not None:
        value["request"] = {"id": uuid.uuid4().hex, "prompt": request} if isinstance(request, str) else request
    if outbox is not None:
        value["outbox"] = outbox
    if held is not None:
        value["held"] = held
    at.session_state[KEY] = value
    return at.run()


def entry(token: str, choice: str, winner_id: int | None = None) -> dict:
    return {"id": uuid.uuid4().hex, "token": token, "choice": choice, "winner_id": winner_id, "ms": 700}


def test_create_keep_replay_undo_and_keep_again(ctx, alice, draw):
    at = page(alice[0])
    assert not at.exception and data(at)["set"] is None and data(at)["n"] == 4
    send(at, request="a large red circle")
    shown = data(at)["set"]
    assert shown["prompt"] == "a large red circle" and len(shown["candidates"]) == 4 and shown["answer"] is None
    first = shown["candidates"][0]
    img = Image.open(io.BytesIO(base64.b64decode(first["src"].split(",", 1)[1])))
    assert img.text["prompt"] == "a large red circle" and img.text["seed"] == first["name"].rsplit("-", 1)[1][:-4]
    at.run()  # a rerun replays the request: nothing is drawn again; the images come until the page holds them
    assert draw.calls == 1 and count(ctx, Comparison) == 1 and "src" in data(at)["set"]["candidates"][0]
    token, ids = shown["token"], [c["id"] for c in shown["candidates"]]
    send(at, held=token)
    assert "src" not in data(at)["set"]["candidates"][0]
    send(at, held="none:1")  # a panel mounted afresh (back from another page) holds none
    assert data(at)["set"]["candidates"][0]["src"] == first["src"]
    send(at, held=token)
    keep1 = entry(token, "pick", ids[1])
    send(at, outbox=[keep1])
    send(at, outbox=[keep1, keep1])  # the same answer delivered again (replayed state, reconnect)
    (j,) = judgements(ctx)
    assert (j.choice, j.winner_id, j.time_ms) == ("pick", ids[1], 700)
    assert data(at)["set"]["answer"] == {"choice": "pick", "winner_id": ids[1]} and keep1["id"] in data(at)["acked"]
    send(at, outbox=[entry(token, "undo")])
    assert count(ctx, Judgement) == 0 and data(at)["set"]["answer"] is None
    send(at, outbox=[entry(token, "pick", ids[3])])
    (j,) = judgements(ctx)
    assert j.winner_id == ids[3]
    with write_session(ctx.engine) as s:
        comp = s.get(Comparison, j.comparison_id)
        assert (comp.source, comp.status) == ("create", "done")
        assert s.get(Prompt, comp.prompt_id).written_by == alice[0].rater_id


def test_bad_input_gets_one_line_and_writes_nothing(ctx, alice, draw):
    at = page(alice[0])
    for text, line in (("x" * 301, "Your prompt is 301 characters; the limit is 300."),
                       ("   ", "Type a prompt first.")):
        send(at, request=text)
        assert data(at)["status"]["text"] == line
    assert draw.calls == 0 and count(ctx, Prompt) == 0 and data(at)["set"] is None


def test_an_answer_for_a_set_this_session_never_sent_writes_nothing(ctx, alice, draw):
    from feedback_app.create import create_offer
    from tests.feedback_app.helpers import make_rater

    bob, _ = make_rater(ctx, "bob")
    other = create_offer(ctx, identity=bob, text="bob's own", request_id="b")
    at = page(alice[0])
    forged = entry(f"{other.view.key}.0", "pick", other.view.candidates[0].id)
    send(at, outbox=[forged, entry("nonsense", "none"), {"garbage": True}])
    assert not at.exception and count(ctx, Judgement) == 0 and forged["id"] in data(at)["acked"]


def test_switched_off_the_page_says_so(ctx, alice, draw):
    with write_session(ctx.engine) as s:
        create.save_create_settings(session=s, enabled=False, max_prompt_chars=300)
    at = page(alice[0])
    assert data(at) is None and "switched off" in at.info[0].value and draw.calls == 0


def test_signed_out_the_page_asks_to_sign_in(ctx):
    at = page()
    assert "sign in" in at.warning[0].value and data(at) is None


def test_admins_switch_create_off_cap_prompts_and_hide_one(ctx, alice, admin, draw):
    from pickloop.db import read_session

    create.create_offer(ctx, identity=alice[0], text="something rude", request_id="r", draw=draw)
    at = AppTest.from_file(str(APP_DIR / "app.py"), default_timeout=60)
    at.session_state["identity"] = alice[0]
    at.run().switch_page("pages/create.py").run()  # in a rater's navigation while Create is on
    assert not at.exception
    page = AppTest.from_file(str(APP_DIR / "pages" / "admin.py"), default_timeout=60)
    page.session_state["identity"] = admin[0]
    page.run()
    page.toggle(key="admin_create_on").set_value(False)
    page.number_input(key="admin_create_max").set_value(120)
    page.button(key="admin_save_create").click().run()
    assert not page.exception
    with read_session(ctx.engine) as s:
        assert create.create_settings(session=s) == create.CreateSettings(False, 120)
        prompt_id = s.exec(select(Prompt.id).where(Prompt.text == "something rude")).one()
    page.selectbox(key="admin_hide_prompt").set_value(prompt_id)
    page.button(key="admin_hide").click().run()
    assert not page.exception and "hidden" in page.success[0].value
    with read_session(ctx.engine) as s:
        assert not s.get(Prompt, prompt_id).active
    rater = AppTest.from_file(str(APP_DIR / "app.py"), default_timeout=60)
    rater.session_state["identity"] = alice[0]
    with pytest.raises(ValueError, match="Could not find a navigation page"):  # gone from a rater's navigation
        rater.run().switch_page("pages/create.py")


def test_admins_make_groups_and_serve_a_version_to_one(ctx, alice, admin, draw):
    from pickloop import audiences
    from pickloop.db import read_session
    from pickloop.schema import ModelVersion

    with write_session(ctx.engine) as s:
        s.add(ModelVersion(name="v-design", base_model=ctx.base_model, method="dpo"))
    page = AppTest.from_file(str(APP_DIR / "pages" / "admin.py"), default_timeout=60)
    page.session_state["identity"] = admin[0]
    page.run()
    page.text_input(key="admin_group_name").input("designers")
    page.button(key="admin_add_group").click().run()
    page.selectbox(key="admin_group").set_value("designers")
    page.multiselect(key="admin_group_raters").set_value(["alice"])
    page.button(key="admin_group_join").click().run()
    page.selectbox(key="admin_serve_version").set_value("v-design")
    page.text_input(key="admin_serve_audience").input("group:designers")
    page.button(key="admin_serve").click().run()
    assert not page.exception and "v-design now serves group:designers" in page.success[0].value
    with read_session(ctx.engine) as s:
        assert audiences.groups(session=s) == {"designers": ["alice"]}
    got = create.create_offer(ctx, identity=alice[0], text="a red circle", request_id="r", draw=draw)
    assert got.version == "v-design"
    page.run()  # the Audiences tab: which version serves whom, and each audience's win rate and labels
    rates = next(d.value for d in page.dataframe if {"audience", "win rate vs parent"} <= set(d.value.columns))
    assert rates[["audience", "version", "raters served", "labels"]].values.tolist() == [
        ["everyone", "base-1", 1, 0], ["group:designers", "v-design", 1, 0]]

"""The Create page's logic on SQLite and PostgreSQL: one set per request, one judgement per answer, undo,
the source ``create``, rater-written prompts, hidden prompts, the length cap; and the download's chunks."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from sqlmodel import select

from feedback_app import create, logic
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import Candidate, Comparison, Judgement, Prompt
from pickloop.settings import get_settings
from pickloop.store import add_prompts, ensure_base_version, set_prompt_hidden
from tests.feedback_app.helpers import PALETTE, count, judgements, make_rater, make_sets


@pytest.fixture(params=["sqlite", "postgresql"])
def cctx(request, tmp_path, monkeypatch):
    """A Context with the base version registered, on SQLite and on PostgreSQL."""
    monkeypatch.setenv("PICKLOOP_HOME", str(tmp_path / "home"))
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    ctx = Context(get_settings(home=tmp_path / "home", database_url=url, overlap_share=0.0))
    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
    return ctx


class FakeDraw:
    """Solid-colour candidates instead of the model (the drawing itself is tested below); counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ctx, *, prompt: str, n: int, version_id: int) -> list[dict]:
        self.calls += 1
        out = []
        for slot in range(n):
            colour = PALETTE[(self.calls * n + slot) % len(PALETTE)]
            sha = ctx.images.put(Image.new("RGB", (16, 16), colour))
            params = {"prompt": prompt, "num_inference_steps": 10, "guidance_scale": 4.0, "width": 16, "height": 16,
                      "scheduler": {"class": "DDIMScheduler", "config": {}}, "slot": slot, "batch_seeds": [7, 8]}
            out.append(dict(slot=slot, seed=100 * self.calls + slot, params=params, image_sha256=sha))
        return out


def offer(ctx, ident, text="a large red circle", request_id="r1", draw=None):
    return create.create_offer(ctx, identity=ident, text=text, request_id=request_id, draw=draw or FakeDraw())


def keep(ctx, ident, view, choice="pick", pos=0):
    with write_session(ctx.engine) as s:
        row, created = create.keep(session=s, identity=ident, view=view, choice=choice,
                                   winner_id=view.candidates[pos].id if choice == "pick" else None, time_ms=900)
        return row.id, created


def the_set(ctx, key: str) -> Comparison:
    with read_session(ctx.engine) as s:
        return s.exec(select(Comparison).where(Comparison.key == key)).one()


def test_a_request_draws_one_set_and_a_keep_is_one_judgement(cctx):
    alice, _ = make_rater(cctx, "alice")
    draw = FakeDraw()
    first = offer(cctx, alice, draw=draw)
    again = offer(cctx, alice, draw=draw)  # the same request once more (a rerun, a double click on Create)
    assert draw.calls == 1 and first.created and not again.created
    assert again.view == first.view and len(first.view.candidates) == cctx.settings.create_candidates == 4
    comp = the_set(cctx, first.view.key)
    assert (comp.source, comp.status, comp.raters_wanted) == ("create", "offered", 1)
    assert keep(cctx, alice, first.view, pos=2)[1] is True
    assert keep(cctx, alice, first.view, pos=2)[1] is False  # replayed outbox, second tab
    assert keep(cctx, alice, first.view, pos=1)[1] is False  # a different second answer changes nothing
    (j,) = judgements(cctx)
    assert (j.choice, j.winner_id, j.rater_id) == ("pick", first.view.candidates[2].id, alice.rater_id)
    assert j.idempotency_key == f"create:{first.view.key}:{alice.rater_id}" and j.time_ms == 900
    assert j.shown_order == first.view.shown_order
    assert the_set(cctx, first.view.key).status == "done"
    second = offer(cctx, alice, request_id="r2", draw=draw)  # a new request: a new set
    assert draw.calls == 2 and second.view.key != first.view.key


def test_none_good_and_undo_put_the_set_back_to_its_rater(cctx):
    alice, _ = make_rater(cctx, "alice")
    view = offer(cctx, alice).view
    keep(cctx, alice, view, choice="none")
    with write_session(cctx.engine) as s:
        assert logic.undo_answer(session=s, identity=alice, comparison_id=view.comparison_id, within_s=8)
    assert count(cctx, Judgement) == 0 and the_set(cctx, view.key).status == "offered"
    keep(cctx, alice, view, pos=3)  # answered again after the undo: recorded anew
    (j,) = judgements(cctx)
    assert (j.choice, j.winner_id) == ("pick", view.candidates[3].id)
    with write_session(cctx.engine) as s:  # too late: the answer stands
        assert not logic.undo_answer(session=s, identity=alice, comparison_id=view.comparison_id, within_s=0)
    assert count(cctx, Judgement) == 1
    with pytest.raises(UserError, match="pick or none"):
        keep(cctx, alice, view, choice="tie")


def test_a_create_set_is_its_raters_alone_and_never_in_the_rate_queue(cctx):
    alice, _ = make_rater(cctx, "alice")
    bob, _ = make_rater(cctx, "bob")
    view = offer(cctx, alice).view
    for ident in (alice, bob):
        with write_session(cctx.engine) as s:
            assert logic.next_set_for(session=s, rater_id=ident.rater_id, settings=cctx.settings) is None
    with pytest.raises(UserError, match="drawn for another rater"):
        keep(cctx, bob, view)
    with read_session(cctx.engine) as s:
        assert create.find_offer(session=s, key=view.key, rater_id=bob.rater_id) is None
        counts = logic.queue_counts(session=s)
    assert counts["ready_unanswered"] == 0 and counts["ready"] == 0  # the worker and the pace never count it
    keep(cctx, alice, view)
    with write_session(cctx.engine) as s:  # bob cannot add an answer to the done set either
        with pytest.raises(UserError, match="drawn for another rater"):
            create.keep(session=s, identity=bob, view=view, choice="none")
    assert count(cctx, Judgement) == 1


def test_the_prompt_joins_the_pool_marked_rater_written(cctx):
    from generator.queue import missing_sets

    alice, _ = make_rater(cctx, "alice")
    with write_session(cctx.engine) as s:
        add_prompts(session=s, texts=["a blue square"])  # an admin's prompt
    offer(cctx, alice, text="  a small green triangle  ", request_id="r1")
    offer(cctx, alice, text="a blue square", request_id="r2")
    with read_session(cctx.engine) as s:
        rows = {p.text: p for p in s.exec(select(Prompt))}
        version_id = the_set(cctx, create.offer_key(alice.rater_id, "r1")).model_version_id
        missing = missing_sets(session=s, pool="default", depth=1, version_id=version_id)
    mine = rows["a small green triangle"]  # stored without the surrounding spaces
    assert (mine.written_by, mine.pool, mine.active) == (alice.rater_id, "default", True)
    assert rows["a blue square"].written_by is None  # already in the pool: it keeps its author
    assert missing == 2  # the worker draws Rate sets of both (a Create set holds no place in the queue)


def test_a_hidden_prompt_is_not_served(cctx):
    from generator.queue import missing_sets

    alice, _ = make_rater(cctx, "alice")
    bob, _ = make_rater(cctx, "bob")
    view = offer(cctx, alice, text="something rude").view
    prompt_id = the_set(cctx, view.key).prompt_id
    make_sets(cctx, 1)  # a Rate set of another prompt
    with write_session(cctx.engine) as s:  # a Rate set of the rater's prompt, as the worker would draw it
        comp = Comparison(key="r" * 32, prompt_id=prompt_id, model_version_id=the_set(cctx, view.key).model_version_id,
                          status="ready", source="queue")
        s.add(comp)
        s.flush()
        for slot in range(2):
            s.add(Candidate(comparison_id=comp.id, slot=slot, prompt_id=prompt_id,
                            model_version_id=comp.model_version_id, seed=slot, params={},
                            image_sha256=view.candidates[slot].image_sha256))
    with write_session(cctx.engine) as s:
        set_prompt_hidden(session=s, prompt_id=prompt_id)
    with pytest.raises(UserError, match="An admin has hidden this prompt"):
        offer(cctx, bob, text="something rude", request_id="b1")
    with write_session(cctx.engine) as s:
        got = logic.next_set_for(session=s, rater_id=bob.rater_id, settings=cctx.settings)
        assert got is not None and got.prompt != "something rude"
        after = logic.next_set_for(session=s, rater_id=bob.rater_id, settings=cctx.settings, skip=[got.comparison_id])
        assert after is None
    with read_session(cctx.engine) as s:  # the worker draws for the other prompt only
        assert missing_sets(session=s, pool="default", depth=2, version_id=comp.model_version_id) == 1
    with write_session(cctx.engine) as s:
        set_prompt_hidden(session=s, prompt_id=prompt_id, hidden=False)
    with read_session(cctx.engine) as s:
        assert missing_sets(session=s, pool="default", depth=2, version_id=comp.model_version_id) == 2
    assert offer(cctx, bob, text="something rude", request_id="b2").created


@pytest.mark.parametrize("text,line", [
    ("", "Type a prompt first."),
    ("   \u200b ", "Type a prompt first."),
    ("x" * 41, "Your prompt is 41 characters; the limit is 40."),
    ("a red\x07circle", "That prompt cannot be used: prompt contains control character"),
])
def test_bad_input_is_one_line_and_writes_nothing(cctx, text, line):
    alice, _ = make_rater(cctx, "alice")
    with write_session(cctx.engine) as s:
        create.save_create_settings(session=s, enabled=True, max_prompt_chars=40)
    draw = FakeDraw()
    with pytest.raises(UserError) as e:
        offer(cctx, alice, text=text, draw=draw)
    assert line in str(e.value) and "\n" not in str(e.value)
    assert draw.calls == 0 and count(cctx, Prompt) == 0 and count(cctx, Comparison) == 0
    assert offer(cctx, alice, text="x" * 40, request_id="ok", draw=draw).created  # at the cap: accepted


def test_admin_settings_switch_create_off_and_are_checked(cctx):
    alice, _ = make_rater(cctx, "alice")
    with read_session(cctx.engine) as s:
        assert create.create_settings(session=s) == create.CreateSettings(True, create.DEFAULT_MAX_PROMPT_CHARS)
    with write_session(cctx.engine) as s:
        create.save_create_settings(session=s, enabled=False, max_prompt_chars=100)
    with pytest.raises(UserError, match="switched off"):
        offer(cctx, alice)
    for bad in (0, 2001, 1.5, True):
        with pytest.raises(UserError, match="1-2000 characters"):
            with write_session(cctx.engine) as s:
                create.save_create_settings(session=s, enabled=True, max_prompt_chars=bad)
    with read_session(cctx.engine) as s:
        assert create.create_settings(session=s) == create.CreateSettings(False, 100)
    assert count(cctx, Comparison) == 0


def test_the_shipped_model_draws_and_the_download_carries_its_settings(ctx, home):
    """The real drawing (the promoted version, the model's own steps and size) and the PNG offered."""
    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=ctx.base_model)
    alice, _ = make_rater(ctx, "alice")
    got = create.create_offer(ctx, identity=alice, text="a large red circle on a blue background", request_id="x")
    assert len(got.view.candidates) == 4 and got.version == version.name
    assert len(set(got.seeds)) == 4 and all(p["model_version_id"] == version.id for p in got.params)
    c, seed, params = got.view.candidates[1], got.seeds[1], got.params[1]
    png = create.download_png(ctx.images.read_bytes(c.image_sha256), prompt=got.view.prompt, seed=seed,
                              params=params, version=got.version, set_key=got.view.key)
    img = Image.open(io.BytesIO(png))
    assert img.size == (64, 64) and img.text["prompt"] == "a large red circle on a blue background"
    assert img.text["seed"] == str(seed) and img.text["model_version"] == version.name
    sampler = json.loads(img.text["sampler"])
    assert sampler == {"scheduler": "DDIMScheduler", "steps": 10, "guidance_scale": 4.0, "width": 64, "height": 64,
                       "negative_prompt": None}
    assert f"Seed: {seed}" in img.text["parameters"] and json.loads(img.text["pickloop"])["slot"] == 1
    stored = Image.open(io.BytesIO(ctx.images.read_bytes(c.image_sha256)))
    assert (img.mode, img.tobytes()) == (stored.mode, stored.tobytes())  # the same pixels
    assert create.download_name(got.view.key, seed) == f"pickloop-{got.view.key[:8]}-{seed}.png"


def test_a_prompt_in_any_script_survives_the_download():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    text = "دائرة حمراء 🟥 中文"
    png = create.download_png(buf.getvalue(), prompt=text, seed=5, params={"model": "/srv/models/sd15"},
                              version="v1", set_key="k" * 32)
    img = Image.open(io.BytesIO(png))
    assert img.text["prompt"] == text and img.text["base_model"] == "sd15"  # a folder's name, not a server path

"""Audiences on SQLite and PostgreSQL: a version promoted for a group or one rater serves them, everyone
else keeps the shared version; the command line; Create and load_pipeline draw with the rater's version."""
from __future__ import annotations

import pytest
from sqlmodel import select

from pickloop import audiences
from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.schema import ModelVersion
from pickloop.store import add_rater, ensure_base_version, find_version, parse_audience, promote, promoted_version


def version(s, name: str) -> ModelVersion:  # a fine-tuned candidate, as the registry keeps one
    row = ModelVersion(name=name, base_model="embedded:shapes", method="dpo")
    s.add(row)
    s.flush()
    return row


@pytest.fixture
def world(engine):
    """base (shared, promoted), v-group and v-alice (candidates); alice and bob in designers, carol alone."""
    with write_session(engine) as s:
        base = ensure_base_version(session=s, base_model="embedded:shapes")
        ids = {n: add_rater(session=s, name=n)[0].id for n in ("alice", "bob", "carol")}
        audiences.add_group(session=s, name="designers")
        audiences.set_membership(session=s, group="designers", raters=["alice", "bob"])
        vg, va = version(s, "v-group"), version(s, "v-alice")
        return {"base": base.id, "v-group": vg.id, "v-alice": va.id, **ids}


def served(engine, rater_id: int) -> str:
    with write_session(engine) as s:
        return audiences.serving_version(session=s, rater_id=rater_id, base_model="embedded:shapes").name


def test_a_version_serves_its_audience_and_everyone_else_keeps_the_shared_one(engine, world):
    assert {served(engine, world[r]) for r in ("alice", "bob", "carol")} == {"base-1"}
    with write_session(engine) as s:
        audiences.serve(session=s, ref="v-group", audience="group:designers")
    assert [served(engine, world[r]) for r in ("alice", "bob", "carol")] == ["v-group", "v-group", "base-1"]
    with write_session(engine) as s:
        audiences.serve(session=s, ref="v-alice", audience="rater:alice")  # one's own comes before the group's
        assert promoted_version(session=s).name == "base-1"  # the shared version is untouched
        assert [(r.audience, r.version) for r in audiences.serving_table(session=s)] == [
            ("everyone", "base-1"), ("group:designers", "v-group"), ("rater:alice", "v-alice")]
        assert audiences.audiences_of(session=s, rater_id=world["alice"]) == [
            "rater:alice", "group:designers", "everyone"]
    assert [served(engine, world[r]) for r in ("alice", "bob", "carol")] == ["v-alice", "v-group", "base-1"]
    with write_session(engine) as s:  # a new version for the group retires the group's old one, no other
        promote(session=s, version=_group2(s))
        rows = {v.name: (v.status, v.audience) for v in s.exec(select(ModelVersion))}
    assert rows["v-group"] == ("retired", "group:designers") and rows["v-group-2"] == ("promoted", "group:designers")
    assert rows["base-1"] == ("promoted", "everyone") and rows["v-alice"] == ("promoted", "rater:alice")
    with write_session(engine) as s:
        audiences.set_membership(session=s, group="designers", raters=["bob"], member=False)
    assert served(engine, world["bob"]) == "base-1"


def _group2(s) -> ModelVersion:
    row = version(s, "v-group-2")
    row.audience = "group:designers"
    return row


def test_latest_for_an_audience_falls_back_to_the_shared_version(engine, world):
    with read_session(engine) as s:
        assert find_version(session=s, ref="latest", audience="group:designers").name == "base-1"
    with write_session(engine) as s:
        audiences.serve(session=s, ref="v-group", audience="group:designers")
    with read_session(engine) as s:
        assert find_version(session=s, ref="latest", audience="group:designers").name == "v-group"
        assert find_version(session=s, ref="latest", audience="rater:carol").name == "base-1"
        assert find_version(session=s, ref="latest").name == "base-1"


@pytest.mark.parametrize("call,msg", [
    (lambda s: parse_audience("team:x"), "audience must be everyone, group:NAME or rater:NAME"),
    (lambda s: parse_audience("group:"), "audience must be"),
    (lambda s: audiences.serve(session=s, ref="v-group", audience="group:nobody"), "no group 'nobody'"),
    (lambda s: audiences.serve(session=s, ref="v-group", audience="rater:nobody"), "unknown rater"),
    (lambda s: audiences.serve(session=s, ref="base-1", audience="rater:carol"), "already serves everyone"),
    (lambda s: audiences.add_group(session=s, name="designers"), "already exists"),
    (lambda s: audiences.add_group(session=s, name="a:b"), "without a colon"),
    (lambda s: audiences.set_membership(session=s, group="designers", raters=["zed"]), "unknown rater"),
])
def test_mistakes_are_one_line(engine, world, call, msg):
    with pytest.raises(UserError, match=msg):
        with write_session(engine) as s:
            call(s)


def test_the_command_line(home, capsys):
    def run(*argv):
        rc = main(list(argv))
        out, err = capsys.readouterr()
        return rc, out + err

    assert run("raters", "add", "alice")[0] == 0 and run("raters", "add", "bob")[0] == 0
    assert run("groups", "add", "designers") == (0, "group designers added\n")
    assert run("groups", "join", "designers", "alice", "bob")[1] == "2 rater(s) joined designers\n"
    assert run("groups", "leave", "designers", "bob")[1] == "1 rater(s) left designers\n"
    assert run("groups", "list")[1] == "designers\talice\n"
    from pickloop.context import Context

    ctx = Context()
    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
        version(s, "v-group")
    assert run("models", "serve", "v-group", "--audience", "group:designers")[1] == \
        "v-group now serves group:designers\n"
    rc, out = run("models", "serve", "v-group", "--audience", "club:x")
    assert rc == 2 and out.count("\n") == 1 and "audience must be" in out
    assert "\tpromoted\tgroup:designers\t" in run("models", "list")[1]


def test_create_and_load_pipeline_draw_with_the_raters_version(ctx, home):
    from feedback_app import create
    from feedback_app.logic import identity_of
    from generator.pipeline import _resolve_lora
    from tests.feedback_app.test_create import FakeDraw

    with write_session(ctx.engine) as s:
        ensure_base_version(session=s, base_model=ctx.base_model)
        alice, _ = add_rater(session=s, name="alice")
        bob, _ = add_rater(session=s, name="bob")
        ident_a, ident_b = identity_of(alice), identity_of(bob)
        version(s, "v-alice")
        audiences.serve(session=s, ref="v-alice", audience="rater:alice")
    a = create.create_offer(ctx, identity=ident_a, text="a red circle", request_id="1", draw=FakeDraw())
    b = create.create_offer(ctx, identity=ident_b, text="a red circle", request_id="1", draw=FakeDraw())
    assert (a.version, b.version) == ("v-alice", "base-1")
    assert _resolve_lora("latest", None, ctx, "rater:alice")[2].name == "v-alice"
    assert _resolve_lora("latest", None, ctx, "rater:bob")[2].name == "base-1"

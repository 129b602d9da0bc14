"""The Rate page's worker per audience, with a real (tiny) pipeline, on SQLite and PostgreSQL: it draws the
sets of a group with the group's version (its LoRA), each version's pipeline loaded once and kept, and a
rater of the group is handed only those; `pickloop stats` lists the audiences."""
from __future__ import annotations

from datetime import timedelta

from sqlmodel import select

import generator.pipeline
from feedback_app import logic
from generator.pipeline import LORA_WEIGHT_NAME, file_sha256
from generator.queue import QueueWatch, fill_queue
from pickloop import audiences
from pickloop.cli import main as cli_main
from pickloop.db import read_session, write_session
from pickloop.schema import Candidate, Comparison, ModelVersion, utcnow
from pickloop.store import add_prompts, add_rater, ensure_base_version


def test_the_worker_draws_each_audiences_sets_with_its_version(db_url, home, tiny_sd_dir, tiny_lora_dir,
                                                               monkeypatch, capsys):
    from pickloop.context import Context
    from pickloop.settings import get_settings

    pg = None if db_url.startswith("sqlite") else db_url
    if pg:
        monkeypatch.setenv("PICKLOOP_DATABASE_URL", pg)
    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_sd_dir))
    ctx = Context(settings=get_settings(home=home, base_model=str(tiny_sd_dir), database_url=pg, noise_memory=False,
                                        queue_min_sets=2, overlap_share=0.0))
    opened = []
    real_open = generator.pipeline.open_pipeline
    monkeypatch.setattr(generator.pipeline, "open_pipeline", lambda *a, **kw: opened.append(a) or real_open(*a, **kw))
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=["a red circle", "a blue square"])
        base = ensure_base_version(session=s, base_model=ctx.base_model)
        alice, bob = (add_rater(session=s, name=n)[0] for n in ("alice", "bob"))
        audiences.add_group(session=s, name="designers")
        audiences.set_membership(session=s, group="designers", raters=["alice"])
        v = ModelVersion(name="dpo-designers", base_model=ctx.base_model, lora_path=str(tiny_lora_dir),
                         lora_sha256=file_sha256(tiny_lora_dir / LORA_WEIGHT_NAME), method="dpo", parent_id=base.id)
        s.add(v)
        s.flush()
        audiences.serve(session=s, ref=v.name, audience="group:designers")
        ids = {"base": base.id, "group": v.id, "alice": alice.id, "bob": bob.id}
        who = {r.id: logic.identity_of(r) for r in (alice, bob)}
    assert fill_queue(ctx=ctx, depth=1, n=2, worker_id="w", progress=False, per_audience=True) == 4
    with read_session(ctx.engine) as s:
        sets = list(s.exec(select(Comparison)))
        assert sorted((c.prompt_id, c.model_version_id) for c in sets) == [
            (1, ids["base"]), (1, ids["group"]), (2, ids["base"]), (2, ids["group"])]
        for c in s.exec(select(Candidate)):  # each candidate drawn by its set's version, the group's with its LoRA
            comp = s.get(Comparison, c.comparison_id)
            assert c.model_version_id == comp.model_version_id == c.params["model_version_id"]
            assert (c.params.get("lora_path") == str(tiny_lora_dir)) == (comp.model_version_id == ids["group"])
    assert len(opened) == 2  # one pipeline per version, loaded once

    # The watching worker sizes each audience's queue by the raters it serves: alice online wants her
    # browser's four sets of the group's version; nobody the shared version serves is online.
    with write_session(ctx.engine) as s:
        view = logic.next_set_for(session=s, rater_id=ids["alice"], settings=ctx.settings)
        assert s.get(Comparison, view.comparison_id).model_version_id == ids["group"]
        logic.submit_choice(session=s, identity=who[ids["alice"]], view=view, choice="pick",
                            winner_id=view.candidates[0].id)
    now = utcnow()
    watch = QueueWatch(ctx, worker_id="w", clock=lambda: now)
    watch.loaded = True  # its first step would load the shared model: it is loaded already
    assert watch.step() == 3  # 4 wanted, 1 open; the shared version keeps its 2 (the floor)
    assert len(opened) == 2  # the pipelines were kept: no reload
    now = utcnow() + timedelta(hours=1)  # nobody online: nothing more
    assert watch.step() == 0
    with read_session(ctx.engine) as s:
        by_version = {vid: 0 for vid in (ids["base"], ids["group"])}
        for c in s.exec(select(Comparison)):
            by_version[c.model_version_id] += 1
        assert by_version == {ids["base"]: 2, ids["group"]: 5}
    with write_session(ctx.engine) as s:  # bob, in no group, gets the shared version's sets only
        view = logic.next_set_for(session=s, rater_id=ids["bob"], settings=ctx.settings)
        assert s.get(Comparison, view.comparison_id).model_version_id == ids["base"]
    ctx.engine.dispose()
    assert cli_main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "  group:designers: dpo-designers vs base-1, 1 rater(s), 1 labels; won 0, lost 0, tied 0 of 0 pairs (-)" \
        in out and "  everyone: base-1 vs -, 1 rater(s), 0 labels;" in out


def test_an_audience_version_that_cannot_draw_leaves_the_others_drawing(gen_ctx, tmp_path, capsys):
    with write_session(gen_ctx.engine) as s:
        add_prompts(session=s, texts=["a red circle"])
        ensure_base_version(session=s, base_model=gen_ctx.base_model)
        add_rater(session=s, name="bob")
        s.add(ModelVersion(name="broken", base_model=gen_ctx.base_model, lora_path=str(tmp_path / "missing")))
        s.flush()
        audiences.serve(session=s, ref="broken", audience="rater:bob")
    assert fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False, per_audience=True) == 1
    assert "cannot draw, skipped: LoRA folder of model version broken not found" in capsys.readouterr().out
    with read_session(gen_ctx.engine) as s:
        assert sorted((s.get(ModelVersion, c.model_version_id).name, c.status) for c in s.exec(select(Comparison))) \
            == [("base-1", "ready"), ("broken", "failed")]

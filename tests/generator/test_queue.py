"""The ready queue: depth per prompt, version changes, failures, dead claims, and two workers at once."""
from __future__ import annotations

import multiprocessing as mp
import uuid
from datetime import timedelta

import pytest
from sqlmodel import func, select

from generator.pipeline import LORA_WEIGHT_NAME, file_sha256
from generator.queue import claim_set, fill_queue, keep_claim, queue_counts
from generator.sampling import redraw
from pickloop.cli import main as cli_main
from pickloop.db import read_session, write_session
from pickloop.errors import UserError
from pickloop.images import png_bytes
from pickloop.schema import Candidate, Comparison, ModelVersion, utcnow
from pickloop.store import add_prompts, candidates_of, ensure_base_version, promote

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def _open_sets(ctx) -> list[tuple[int, int, str]]:
    with read_session(ctx.engine) as s:
        return [(c.prompt_id, c.model_version_id, c.status) for c in s.exec(select(Comparison).order_by(Comparison.id))]


def _setup(ctx, prompts=PROMPTS, pool="default") -> None:
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=prompts, pool=pool)
        ensure_base_version(session=s, base_model=ctx.base_model)


def test_fills_each_prompt_to_depth_and_stops(gen_ctx):
    _setup(gen_ctx)
    assert fill_queue(ctx=gen_ctx, depth=2, n=2, worker_id="w", progress=False) == 6
    assert fill_queue(ctx=gen_ctx, depth=2, n=2, worker_id="w", progress=False) == 0  # full: nothing to do
    with read_session(gen_ctx.engine) as s:
        sets = list(s.exec(select(Comparison)))
        assert sorted(c.prompt_id for c in sets) == [1, 1, 2, 2, 3, 3]
        assert {c.status for c in sets} == {"ready"}
        for comp in sets:
            cands = candidates_of(session=s, comparison_id=comp.id)
            assert [c.slot for c in cands] == [0, 1] and len({c.seed for c in cands}) == 2
            assert all(gen_ctx.images.exists(c.image_sha256) for c in cands)
            assert all(c.params["model_version_id"] == comp.model_version_id for c in cands)
        row = s.exec(select(Candidate).order_by(Candidate.id.desc())).first()
    # a stored candidate redrawn from its row alone gives the very same PNG
    from generator.pipeline import load_pipeline

    pipe = load_pipeline(lora=row.model_version_id, ctx=gen_ctx)
    assert gen_ctx.images.put(redraw(pipe, row)) == row.image_sha256
    assert png_bytes(redraw(pipe, row)) == gen_ctx.images.read_bytes(row.image_sha256)


def test_new_sets_come_from_the_newly_promoted_version(gen_ctx, tiny_lora_dir):
    _setup(gen_ctx, PROMPTS[:2])
    fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False)
    with write_session(gen_ctx.engine) as s:
        v = ModelVersion(name="dpo-1", base_model=gen_ctx.base_model, lora_path=str(tiny_lora_dir),
                         lora_sha256=file_sha256(tiny_lora_dir / LORA_WEIGHT_NAME), method="dpo")
        s.add(v)
        s.flush()
        promote(session=s, version=v)
        new_id = v.id
    assert fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False) == 2
    sets = _open_sets(gen_ctx)
    assert [(p, st) for p, vid, st in sets if vid == new_id] == [(1, "ready"), (2, "ready")]
    assert len([s for s in sets if s[1] != new_id]) == 2  # the old version's sets stay as they were
    with read_session(gen_ctx.engine) as s:
        newest = s.exec(select(Candidate).where(Candidate.model_version_id == new_id)).first()
    assert newest.params["lora_path"] == str(tiny_lora_dir) and newest.params["model_version"] == "dpo-1"


def test_a_failed_draw_leaves_a_failed_set_not_a_half_ready_one(gen_ctx, tmp_path):
    _setup(gen_ctx, PROMPTS[:1])
    with write_session(gen_ctx.engine) as s:
        v = ModelVersion(name="broken", base_model=gen_ctx.base_model, lora_path=str(tmp_path / "missing"))
        s.add(v)
        s.flush()
        promote(session=s, version=v)
    with pytest.raises(UserError, match="not found"):
        fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False)
    with read_session(gen_ctx.engine) as s:
        assert [c.status for c in s.exec(select(Comparison))] == ["failed"]
        assert s.exec(select(func.count()).select_from(Candidate)).one() == 0


def test_a_dead_workers_claim_is_taken_over(gen_ctx):
    _setup(gen_ctx, PROMPTS[:2])
    with write_session(gen_ctx.engine) as s:
        vid = ensure_base_version(session=s, base_model=gen_ctx.base_model).id
        dead = Comparison(key=uuid.uuid4().hex, prompt_id=1, model_version_id=vid, status="drawing",
                          claimed_by="dead", claimed_at=utcnow() - timedelta(hours=1))
        alive = Comparison(key=uuid.uuid4().hex, prompt_id=2, model_version_id=vid, status="drawing",
                           claimed_by="slow", claimed_at=utcnow())
        s.add(dead)
        s.add(alive)
        s.flush()
        dead_id, alive_id = dead.id, alive.id
    assert fill_queue(ctx=gen_ctx, depth=2, n=2, worker_id="w", progress=False, stale_after_s=60) == 3
    with read_session(gen_ctx.engine) as s:
        assert s.get(Comparison, dead_id).status == "ready" and s.get(Comparison, dead_id).claimed_by == "w"
        assert s.get(Comparison, alive_id).status == "drawing"  # a live claim is left alone
        assert queue_counts(session=s) == {"drawing": 1, "ready": 3, "done": 0, "failed": 0}


def test_a_sampling_seed_makes_the_candidates_repeat(home, tiny_sd_dir):
    from pickloop.context import Context
    from pickloop.settings import get_settings

    def seeds(folder, **kw):
        ctx = Context(settings=get_settings(home=folder, base_model=str(tiny_sd_dir), noise_memory=False, **kw))
        _setup(ctx, PROMPTS[:2])
        fill_queue(ctx=ctx, depth=2, n=3, worker_id="w", progress=False)
        with read_session(ctx.engine) as s:
            return [c.seed for c in s.exec(select(Candidate).order_by(Candidate.id))]

    a = seeds(home / "a", sampling_seed=7)
    assert len(a) == 12 and len(set(a)) == 12  # every image its own seed
    assert seeds(home / "b", sampling_seed=7) == a  # the same run again: the same images
    assert seeds(home / "c", sampling_seed=8) != a
    assert seeds(home / "d") != seeds(home / "e")  # unset: fresh randomness every time


def test_an_overlap_set_answered_once_no_longer_holds_a_place(gen_ctx):
    from pickloop.store import add_rater, record_judgement

    _setup(gen_ctx, PROMPTS[:1])
    gen_ctx.settings.overlap_share = 1.0  # every set wants two raters
    assert fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False) == 1
    with write_session(gen_ctx.engine) as s:
        comp = s.exec(select(Comparison)).one()
        assert comp.raters_wanted == 2
        rater, _ = add_rater(session=s, name="alone")
        cands = candidates_of(session=s, comparison_id=comp.id)
        record_judgement(session=s, comparison_id=comp.id, rater_id=rater.id, choice="pick",
                         winner_id=cands[0].id, shown_order=[c.id for c in cands], idempotency_key="k1")
    # The lone rater has answered it: a new set is drawn for them, the first still waits for a second rater.
    assert fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False) == 1
    with read_session(gen_ctx.engine) as s:
        assert [c.status for c in s.exec(select(Comparison).order_by(Comparison.id))] == ["ready", "ready"]


def test_a_slow_draw_keeps_its_claim_alive(gen_ctx):
    """No race with the wall clock: the claim is aged by hand in the store (as if the draw had run for twice
    the stale limit), and only the heartbeat can make it fresh again."""
    import threading

    _setup(gen_ctx, PROMPTS[:1])
    with write_session(gen_ctx.engine) as s:
        vid = ensure_base_version(session=s, base_model=gen_ctx.base_model).id
        claim = claim_set(session=s, pool="default", depth=1, version_id=vid, worker_id="slow")
    stale = 60.0

    def other_worker_claims():
        with write_session(gen_ctx.engine) as s:
            return claim_set(session=s, pool="default", depth=1, version_id=vid, worker_id="other",
                             stale_after_s=stale)

    def claimed_at():
        with read_session(gen_ctx.engine) as s:
            return s.get(Comparison, claim.comparison_id).claimed_at

    def age_claim():
        with write_session(gen_ctx.engine) as s:
            s.get(Comparison, claim.comparison_id).claimed_at = utcnow() - timedelta(seconds=2 * stale)
        return claimed_at()

    with keep_claim(gen_ctx, claim, worker_id="slow", every_s=0.01):
        aged = age_claim()
        renewed = threading.Event()
        for _ in range(6000):  # the heartbeat renews within a beat; a minute at most on a loaded machine
            if claimed_at() > aged:
                renewed.set()
                break
            renewed.wait(0.01)
        assert renewed.is_set(), "the heartbeat never renewed the claim"
        assert other_worker_claims() is None  # renewed: still "slow"'s claim, not taken over
    age_claim()  # the heartbeat has stopped (a dead worker): its claim ages, and now it is taken over
    taken = other_worker_claims()
    assert taken is not None and taken.comparison_id == claim.comparison_id
    with read_session(gen_ctx.engine) as s:
        assert s.get(Comparison, claim.comparison_id).claimed_by == "other"


def test_cli_generate_with_a_prompt_file(gen_ctx, tiny_sd_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_sd_dir))
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\na blue square\n\n")
    assert cli_main(["generate", "--prompts", str(f), "--pool", "mine", "--n", "2", "--sets", "2", "--quiet"]) == 0
    assert "4 sets drawn for pool mine" in capsys.readouterr().out
    assert cli_main(["stats", "--pool", "mine"]) == 0
    out = capsys.readouterr().out
    assert "sets: drawing=0 ready=4 done=0 failed=0" in out and "prompts: 2 active in pool mine" in out
    assert cli_main(["generate", "--prompts", str(tmp_path / "missing.txt")]) == 2
    assert "cannot read prompt file" in capsys.readouterr().err


# ---------------------------------------------------------------- two workers at once

def _worker(settings_kw: dict, version_id: int, name: str, barrier, out) -> None:
    try:
        import torch

        torch.set_num_threads(1)
        from pickloop.context import Context
        from pickloop.settings import get_settings
        from generator.pipeline import load_pipeline

        ctx = Context(settings=get_settings(**settings_kw))
        load_pipeline(lora=version_id, ctx=ctx)  # warm, so that both start drawing at once
        barrier.wait(timeout=300)
        out.put(("ok", name, fill_queue(ctx=ctx, pool="race", depth=2, n=2, worker_id=name, progress=False)))
    except Exception as e:  # noqa: BLE001 - report, don't hang the parent
        out.put(("error", name, repr(e)))


@pytest.mark.slow
def test_two_workers_make_no_duplicate_and_lose_no_set(db_url, home, tiny_sd_dir):
    from pickloop.context import Context
    from pickloop.settings import get_settings

    kw = dict(home=str(home), base_model=str(tiny_sd_dir), database_url=None if db_url.startswith("sqlite")
              else db_url, noise_memory=False)
    ctx = Context(settings=get_settings(**kw))
    prompts = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square")]
    _setup(ctx, prompts, pool="race")
    with read_session(ctx.engine) as s:
        vid = s.exec(select(ModelVersion.id)).one()
    ctx.engine.dispose()
    spawn = mp.get_context("spawn")
    barrier, out = spawn.Barrier(2), spawn.Queue()
    procs = [spawn.Process(target=_worker, args=(kw, vid, f"w{i}", barrier, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join(60)
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert sum(r[2] for r in results) == len(prompts) * 2
    assert all(r[2] > 0 for r in results), f"one worker did everything; no race was tested: {results}"
    with read_session(ctx.engine) as s:
        sets = list(s.exec(select(Comparison)))
        per_prompt = {}
        for c in sets:
            per_prompt[c.prompt_id] = per_prompt.get(c.prompt_id, 0) + 1
            assert c.status == "ready" and len(candidates_of(session=s, comparison_id=c.id)) == 2
        assert sorted(per_prompt.values()) == [2] * len(prompts)  # none duplicated, none lost
        assert {c.claimed_by for c in sets} == {"w0", "w1"}
    ctx.engine.dispose()


def test_the_watching_worker_loads_its_model_when_a_rater_comes_not_while_init_s_sets_wait(gen_ctx, monkeypatch):
    """On a home whose first sets `pickloop init` drew, the worker leaves the model unloaded (its load
    would compete with the app's start) until a rater is online; on a home short of sets, at once."""
    import generator.queue
    from generator.queue import QueueWatch
    from pickloop.schema import Assignment
    from pickloop.store import add_rater

    loads = []
    monkeypatch.setattr(generator.queue, "load_pipeline", lambda **kw: loads.append(kw))
    first = gen_ctx.settings.first_sets
    _setup(gen_ctx, [f"prompt {i}" for i in range(first)])
    with write_session(gen_ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=gen_ctx.base_model)
        sets = [Comparison(key=uuid.uuid4().hex, prompt_id=i + 1, model_version_id=version.id, status="ready")
                for i in range(first)]
        s.add_all(sets)
        rater, _ = add_rater(session=s, name="alice")
    watch = QueueWatch(gen_ctx, worker_id="w")
    assert watch.step() == 0 and watch.step() == 0
    assert loads == []  # init's sets wait and no rater is online: nothing to draw, no model needed yet
    with write_session(gen_ctx.engine) as s:
        s.add(Assignment(comparison_id=sets[0].id, rater_id=rater.id))  # the first rater's page hands a set out
    assert watch.step() == 0  # the queue is still long enough for one rater: nothing drawn yet
    assert len(loads) == 1
    watch.step()
    assert len(loads) == 1  # loaded once, kept


def test_the_watching_worker_loads_its_model_at_once_on_a_home_short_of_sets(gen_ctx, monkeypatch):
    import generator.queue
    from generator.queue import QueueWatch

    loads = []
    monkeypatch.setattr(generator.queue, "load_pipeline", lambda **kw: loads.append(kw))
    with write_session(gen_ctx.engine) as s:  # no prompts: the fill itself draws nothing
        ensure_base_version(session=s, base_model=gen_ctx.base_model)
    assert QueueWatch(gen_ctx, worker_id="w").step() == 0
    assert len(loads) == 1


def test_the_worker_draws_with_the_threads_its_setting_names(gen_ctx, tiny_sd_dir, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_sd_dir))
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\n")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setenv("PICKLOOP_WORKER_THREADS", "1")  # the default, named: a worker beside the app and training
        assert cli_main(["generate", "--prompts", str(f), "--n", "2", "--sets", "1", "--quiet"]) == 0
        assert torch.get_num_threads() == 1
        assert cli_main(["generate", "--n", "2", "--sets", "1", "--threads", "3", "--quiet"]) == 0
        assert torch.get_num_threads() == 3  # the flag wins over the setting
        with pytest.raises(SystemExit) as refused:  # refused while the arguments are read, before any drawing
            cli_main(["generate", "--threads", "-1"])
        assert refused.value.code == 2 and "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)

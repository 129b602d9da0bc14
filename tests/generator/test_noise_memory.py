"""Noise memory: winning seeds come back for similar prompts, marked, and their win rate is queryable."""
from __future__ import annotations

from sqlmodel import select

from generator.noise_memory import Winner, memory_count, noise_memory_stats, pick_memory_seeds, winning_seeds
from generator.pipeline import load_pipeline
from generator.queue import fill_queue
from pickloop.cli import main as cli_main
from pickloop.context import Context
from pickloop.db import read_session, write_session
from pickloop.schema import Comparison
from pickloop.settings import get_settings
from pickloop.store import add_prompts, add_rater, candidates_of, record_judgement


def test_memory_count_follows_the_share():
    assert [memory_count(4, s, True) for s in (0.0, 0.25, 0.5, 1.0)] == [0, 1, 2, 4]
    assert memory_count(4, 0.5, False) == 0


def test_seeds_of_the_most_similar_prompt_come_first(tiny_sd_dir):
    pipe = load_pipeline(str(tiny_sd_dir))
    winners = [Winner("zq xv kk", 222, 5), Winner("a red circle", 111, 1), Winner("a red circle", 333, 1)]
    assert pick_memory_seeds(pipe, "a red circle", winners, 2) == [111, 333]  # same prompt: similarity 1
    assert pick_memory_seeds(pipe, "a red circle", winners, 3)[2] == 222
    assert pick_memory_seeds(pipe, "a red circle", [], 2) == []


def _judge(ctx, rater_id: int, comp_id: int, pick_slot: int | None) -> None:
    with write_session(ctx.engine) as s:
        ids = [c.id for c in candidates_of(session=s, comparison_id=comp_id)]
        record_judgement(session=s, comparison_id=comp_id, rater_id=rater_id,
                         choice="tie" if pick_slot is None else "pick",
                         winner_id=None if pick_slot is None else ids[pick_slot], shown_order=ids,
                         idempotency_key=f"{comp_id}:{rater_id}")


def _sets(ctx) -> list[tuple[Comparison, list]]:
    with read_session(ctx.engine) as s:
        return [(c, candidates_of(session=s, comparison_id=c.id))
                for c in s.exec(select(Comparison).order_by(Comparison.id))]


def test_winning_seeds_return_for_new_sets_and_their_win_rate_is_counted(home, tiny_sd_dir, monkeypatch, capsys):
    monkeypatch.setenv("PICKLOOP_BASE_MODEL", str(tiny_sd_dir))
    monkeypatch.setenv("PICKLOOP_NOISE_MEMORY_SHARE", "0.5")
    monkeypatch.setenv("PICKLOOP_OVERLAP_SHARE", "0")  # every set done after one answer: fixed queue counts
    ctx = Context(settings=get_settings())
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=["a red circle", "a blue square"])
        rater = add_rater(session=s, name="ann")[0].id
    fill_queue(ctx=ctx, depth=1, n=2, worker_id="w", progress=False)
    first = _sets(ctx)
    assert not any(c.from_noise_memory for _, cands in first for c in cands)  # nothing has won yet
    _judge(ctx, rater, first[0][0].id, pick_slot=0)  # one winner: its seed is remembered
    _judge(ctx, rater, first[1][0].id, pick_slot=None)  # a tie names no winner
    won_seed = first[0][1][0].seed
    with read_session(ctx.engine) as s:
        assert winning_seeds(session=s) == [Winner("a red circle", won_seed, 1)]

    fill_queue(ctx=ctx, depth=2, n=2, worker_id="w", progress=False)
    second = _sets(ctx)[2:]
    assert len(second) == 4
    for _, cands in second:  # share 0.5 of 2 candidates: one from memory, the only winning seed
        assert [c.seed for c in cands if c.from_noise_memory] == [won_seed]
        assert sum(c.from_noise_memory for c in cands) == 1
    red = next(x for x in second if x[0].prompt_id == first[0][0].prompt_id)
    blue = next(x for x in second if x[0].prompt_id != first[0][0].prompt_id)
    mem_slot = {id(x): next(c.slot for c in x[1] if c.from_noise_memory) for x in (red, blue)}
    _judge(ctx, rater, red[0].id, pick_slot=mem_slot[id(red)])  # the memory seed wins
    _judge(ctx, rater, blue[0].id, pick_slot=1 - mem_slot[id(blue)])  # a fresh seed wins
    with read_session(ctx.engine) as s:
        st = noise_memory_stats(session=s)
    # picked sets: first[0] (2 fresh, 1 win), second[0] and second[1] (1 memory + 1 fresh each)
    assert (st.memory_shown, st.memory_wins, st.fresh_shown, st.fresh_wins) == (2, 1, 4, 2)
    assert st.memory_win_rate == 0.5 and st.fresh_win_rate == 0.5

    assert cli_main(["stats"]) == 0
    out = capsys.readouterr().out
    assert "memory seeds won 1/2 (0.500), fresh seeds won 2/4 (0.500)" in out
    assert f"seed {won_seed} won 2x for 'a red circle'" in out
    assert "labels: pick=3 tie=1 none=0 skip=0" in out


def test_memory_off_draws_only_fresh_seeds(home, tiny_sd_dir):
    ctx = Context(settings=get_settings(home=home, base_model=str(tiny_sd_dir), noise_memory=False,
                                        noise_memory_share=1.0, overlap_share=0.0))
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=["a red circle"])
        rater = add_rater(session=s, name="bob")[0].id
    fill_queue(ctx=ctx, depth=1, n=2, worker_id="w", progress=False)
    _judge(ctx, rater, _sets(ctx)[0][0].id, pick_slot=0)
    fill_queue(ctx=ctx, depth=2, n=2, worker_id="w", progress=False)
    assert not any(c.from_noise_memory for _, cands in _sets(ctx) for c in cands)

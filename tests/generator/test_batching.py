"""The worker draws several sets in one pipeline call, and draws only as many as it is told to."""
from __future__ import annotations

from sqlmodel import select

import generator.sampling as sampling
from generator.pipeline import load_pipeline
from generator.queue import fill_queue
from generator.sampling import redraw
from pickloop.db import read_session, write_session
from pickloop.schema import Candidate, Comparison
from pickloop.store import add_prompts, ensure_base_version

PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def _setup(ctx) -> None:
    with write_session(ctx.engine) as s:
        add_prompts(session=s, texts=PROMPTS)
        ensure_base_version(session=s, base_model=ctx.base_model)


def _count_calls(monkeypatch) -> list:
    calls = []
    real = sampling._draw

    def counting(pipe, prompt, seeds, *args):
        calls.append((prompt, list(seeds)))
        return real(pipe, prompt, seeds, *args)

    monkeypatch.setattr(sampling, "_draw", counting)
    return calls


def test_three_sets_in_one_pipeline_call_each_redrawn_from_its_row(gen_ctx, monkeypatch):
    _setup(gen_ctx)
    calls = _count_calls(monkeypatch)
    assert fill_queue(ctx=gen_ctx, depth=1, n=2, worker_id="w", progress=False, batch_sets=3) == 3
    assert len(calls) == 1 and sorted(calls[0][0]) == sorted(PROMPTS) and len(calls[0][1]) == 6
    with read_session(gen_ctx.engine) as s:
        sets = list(s.exec(select(Comparison)))
        rows = list(s.exec(select(Candidate).order_by(Candidate.id)))
    assert sorted(c.prompt_id for c in sets) == [1, 2, 3] and {c.status for c in sets} == {"ready"}
    assert len({r.seed for r in rows}) == 6  # every image its own seed
    pipe = load_pipeline(lora=sets[0].model_version_id, ctx=gen_ctx)
    for row in (rows[1], rows[4]):  # a row of the first set and one of another set of the batch
        assert row.params["batch_prompts"] == calls[0][0]
        assert row.params["prompt"] == calls[0][0][row.params["batch_index"] // 2]
        assert gen_ctx.images.put(redraw(pipe, row)) == row.image_sha256  # bit-identical


def test_the_fill_draws_what_its_target_asks_and_no_more(gen_ctx, monkeypatch):
    _setup(gen_ctx)
    calls = _count_calls(monkeypatch)
    asked = iter([1, 2, 0])  # one set (nothing is ready yet), then two, then the queue is big enough
    made = fill_queue(ctx=gen_ctx, depth=5, n=2, worker_id="w", progress=False, batch_sets=4,
                      target=lambda version_id: next(asked))
    assert made == 3 and [len(seeds) for _, seeds in calls] == [2, 4]

"""The scheduled job: no-op without new labels, distinct exit code when busy, keyed reruns, stale takeover."""
from __future__ import annotations

import json
from datetime import timedelta

from sqlmodel import select

from finetune.jobs import EXIT_BUSY, file_lock, method_config
from pickloop.cli import main
from pickloop.db import read_session, write_session
from pickloop.schema import Job, ModelVersion, utcnow
from pickloop.store import data_snapshot

TINY = {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "log_every": 0}


def _run(*extra: str) -> int:
    return main(["finetune", "run", "--method", "dpo", "--config", json.dumps(TINY), *extra])


def _jobs(ctx) -> list[Job]:
    with read_session(ctx.engine) as s:
        return list(s.exec(select(Job)))


def _versions(ctx, method="dpo") -> list[ModelVersion]:
    with read_session(ctx.engine) as s:
        return list(s.exec(select(ModelVersion).where(ModelVersion.method == method)))


def test_too_few_labels_is_a_noop_exit_0(labelled, capsys):
    assert _run("--min-new-labels", "10") == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "3 new labels" in out[0] and "nothing to do" in out[0]
    assert _jobs(labelled) == [] and _versions(labelled) == []


def test_concurrent_call_exits_75_with_one_line(labelled, capsys):
    with file_lock(labelled.home / "locks" / "finetune.lock") as held:
        assert held
        assert _run("--min-new-labels", "0") == EXIT_BUSY
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 1 and "another fine-tuning run" in captured.out
    assert _jobs(labelled) == []


def test_fresh_job_row_held_elsewhere_is_busy(labelled, capsys):
    with read_session(labelled.engine) as s:
        snap = data_snapshot(session=s)
    chash = method_config("dpo", TINY).config_hash()
    with write_session(labelled.engine) as s:
        s.add(Job(kind="finetune-dpo", run_key=f"finetune-dpo:{snap}:{chash}", data_snapshot=snap,
                  config_hash=chash, owner="otherhost:1", heartbeat_at=utcnow()))
    assert _run() == EXIT_BUSY
    assert "otherhost:1" in capsys.readouterr().out


def test_run_then_rerun_same_snapshot_is_a_noop(labelled, capsys):
    assert _run() == 0
    first = capsys.readouterr().out
    assert "registered as a candidate" in first
    versions = _versions(labelled)
    assert len(versions) == 1 and versions[0].status == "candidate" and versions[0].data_snapshot == 3
    assert versions[0].parent_id is not None and len(versions[0].lora_sha256) == 64
    assert _run() == 0  # no new labels since the run
    assert "0 new labels" in capsys.readouterr().out
    assert _run("--min-new-labels", "0") == 0  # same snapshot + config: the run key is done
    assert "already done" in capsys.readouterr().out
    assert len(_versions(labelled)) == 1
    [job] = _jobs(labelled)
    assert job.status == "done" and job.output["version"] == versions[0].name


def test_stale_job_is_taken_over(labelled, capsys):
    with read_session(labelled.engine) as s:
        snap = data_snapshot(session=s)
    chash = method_config("dpo", TINY).config_hash()
    old = utcnow() - timedelta(seconds=labelled.settings.finetune_stale_seconds + 60)
    with write_session(labelled.engine) as s:
        s.add(Job(kind="finetune-dpo", run_key=f"finetune-dpo:{snap}:{chash}", data_snapshot=snap,
                  config_hash=chash, owner="deadhost:1", heartbeat_at=old, started_at=old))
    assert _run() == 0
    assert "taking over stale run" in capsys.readouterr().out
    [job] = _jobs(labelled)
    assert job.status == "done" and job.output["taken_over_from"] == "deadhost:1"
    assert job.heartbeat_at.replace(tzinfo=old.tzinfo) > old + timedelta(seconds=60)
    assert len(_versions(labelled)) == 1

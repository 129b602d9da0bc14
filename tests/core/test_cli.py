"""The command line: --help, the foundation commands, and one clear line for user mistakes."""
from __future__ import annotations

import subprocess
import sys

import pytest

from pickloop.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "pickloop", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for cmd in ("init", "db", "prompts", "raters", "bench"):
        assert cmd in r.stdout


def test_prompts_and_raters(home, capsys, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\n\na blue square\r\na red circle\n", encoding="utf-8")
    rc, out, _ = run(capsys, "prompts", "add", "--file", str(f), "a green triangle")
    assert rc == 0 and "3 prompts added" in out
    rc, out, _ = run(capsys, "prompts", "list")
    assert [line.split("\t")[-1] for line in out.splitlines()] == ["a green triangle", "a red circle", "a blue square"]
    rc, out, _ = run(capsys, "raters", "add", "ann", "--admin")
    assert rc == 0 and "Token" in out
    rc, out, _ = run(capsys, "raters", "list")
    assert "ann\tadmin" in out


@pytest.mark.parametrize("argv,env,msg", [
    (["prompts", "add", "x" * 10_000], {}, "limit is 2000"),
    (["prompts", "add", "--file", "/nonexistent/p.txt"], {}, "cannot read prompt file"),
    (["raters", "add", ""], {}, "rater name"),
    (["prompts", "list"], {"PICKLOOP_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}, "failed"),
    (["prompts", "list"], {"PICKLOOP_DATABASE_URL": "notaurl"}, "bad database URL"),
    (["prompts", "list"], {"PICKLOOP_QUEUE_DEPTH": "-3"}, "bad setting queue_depth"),
])
def test_user_mistakes_are_one_line(home, capsys, monkeypatch, argv, env, msg):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from pickloop.db import _cached_engine

    _cached_engine.cache_clear()
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and msg in err and "Traceback" not in err


def test_config_file_is_read_and_env_wins(home, tmp_path, monkeypatch):
    from pickloop.settings import get_settings

    cfg = tmp_path / "c.yaml"
    cfg.write_text("queue_depth: 7\ncandidates_per_set: 2\n")
    monkeypatch.setenv("PICKLOOP_CONFIG", str(cfg))
    monkeypatch.setenv("PICKLOOP_QUEUE_DEPTH", "3")
    s = get_settings()
    assert (s.queue_depth, s.candidates_per_set) == (3, 2)
    assert s.app_host == "127.0.0.1"


def test_init_creates_the_first_admin_once(home, capsys):
    rc, out, _ = run(capsys, "init", "--no-prompts")
    assert rc == 0 and "first rater 'admin'" in out
    token = out.split("token ", 1)[1].split(" ", 1)[0]
    from pickloop.context import Context
    from pickloop.db import read_session
    from pickloop.store import authenticate

    with read_session(Context().engine) as s:
        assert authenticate(session=s, name="admin", token=token).role == "admin"
    rc, out, _ = run(capsys, "init", "--no-prompts")
    assert rc == 0 and "first rater" not in out

"""Every user mistake on the command line is one line on stderr and exit 2, before any model loads.

1. Every ``pickloop`` command, found by walking the argparse tree, is run with wrong arguments (an
   unknown option, a value its type refuses, a value outside its choices, a required argument or
   subcommand left out):
   one line, exit 2, no traceback, nothing written to the data home, no torch imported.
2. The mistakes users actually made (issue 16's list: bad config types and values, seeds, scorers,
   export paths, data homes, revisions, tastes, prompts) the same way.
3. Through real processes: a non-UTF-8 byte in a prompt on the command line, and a second
   ``finetune run`` that finds the lock taken before it imports torch.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


from pickloop.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _run_all(cases: list[dict], cwd: Path) -> list[dict]:
    """Run the cases in one fresh process (tests/core/cli_runner.py)."""
    proc = subprocess.run([sys.executable, "-m", "tests.core.cli_runner"], input=json.dumps(cases), text=True,
                          capture_output=True, cwd=cwd, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("PICKLOOP_")}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(argv prefix, parser, is a group of subcommands) for every command in the tree."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    yield prefix, parser, bool(subs)
    for action in subs:
        seen = set()
        for name, sub in action.choices.items():
            if id(sub) not in seen:
                seen.add(id(sub))
                yield from _commands(sub, prefix + (name,))


def _refuses(type_fn, value: str) -> bool:
    try:
        type_fn(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        return True
    return False


def wrong_argvs() -> list[list[str]]:
    """Wrong command lines for every command of the tree."""
    out = []
    for prefix, parser, group in _commands(build_parser()):
        if group:
            out += [list(prefix), list(prefix) + ["no-such-command"]]
            continue
        out.append(list(prefix) + ["--no-such-option"])
        if any(a.required for a in parser._actions):
            out.append(list(prefix))  # a required argument left out
        for a in parser._actions:
            if not a.option_strings or a.nargs == 0:
                continue
            flag = a.option_strings[-1]
            if a.type is not None:
                out += [list(prefix) + [flag, v] for v in ("abc", "0", "-1") if _refuses(a.type, v)]
            if a.choices is not None:
                out.append(list(prefix) + [flag, "no-such-choice"])
    return out


def _assert_one_line(result: dict, argv: list[str]) -> None:
    err = result["err"]
    assert result["rc"] == 2, (argv, result)
    assert err.endswith("\n") and err.count("\n") == 1, (argv, err)
    assert err.startswith("pickloop") and "Traceback" not in err, (argv, err)
    assert result["modules"] == [], (argv, result["modules"])  # nothing heavy imported, no model loaded


def test_every_command_with_wrong_arguments_is_one_line(tmp_path):
    argvs = wrong_argvs()
    commands = {tuple(a[:2]) for a in argvs}
    assert len(argvs) > 60 and ("finetune", "run") in commands and ("bench", "loop") in commands
    home = tmp_path / "home"
    results = _run_all([{"argv": a, "home": str(home)} for a in argvs], tmp_path)
    for argv, result in zip(argvs, results):
        _assert_one_line(result, argv)
    assert not home.exists() and list(tmp_path.iterdir()) == []  # nothing written, in the data home or beside it


# (argv, the data home to use: "fresh" (must stay unwritten), "file" (a file) or "under-file", words in the line)
MISTAKES = [
    (["finetune", "run", "--method", "dpo", "--config", '{"steps": "abc"}'], "fresh", "steps must be an integer"),
    (["finetune", "run", "--method", "dpo", "--config", '{"targets": 5}'], "fresh", "targets must be a list of text"),
    (["finetune", "run", "--method", "dpo", "--config", '{"lr": "fast"}'], "fresh", "lr must be a finite number"),
    (["finetune", "run", "--method", "dpo", "--config", '{"steps": 1e999}'], "fresh",
     "steps must be an integer, not inf"),
    (["finetune", "run", "--method", "dpo", "--config", '{"rank": 1.5}'], "fresh", "rank must be an integer, not 1.5"),
    (["finetune", "run", "--method", "dpo", "--config", '{"since_parent": "no"}'], "fresh",
     "since_parent must be true or false"),
    (["finetune", "run", "--method", "dpo", "--config", '{"stepz": 3}'], "fresh", "unknown dpo setting"),
    (["finetune", "run", "--method", "ddpo", "--config", '{"epochs": "x"}'], "fresh", "epochs must be an integer"),
    (["finetune", "run", "--method", "ddpo", "--config", '{"eta": 0}'], "fresh", "eta must be in"),
    (["finetune", "run", "--config", '{"dpo": {"steps": "abc"}}'], "fresh", "dpo setting steps must be an integer"),
    (["finetune", "run", "--config", '{"dpo": {"steps": 1e999}}'], "fresh", "steps must be an integer, not inf"),
    (["finetune", "run", "--config", '{"ddpo": {"epochs": "x"}}'], "fresh", "ddpo setting epochs must be an integer"),
    (["finetune", "run", "--config", '{"steps": "abc"}'], "fresh", "--method auto takes --config"),
    (["finetune", "run", "--config", "[1]"], "fresh", "JSON object"),
    (["finetune", "run", "--config", "{steps: 1}"], "fresh", "must be a JSON object"),
    (["finetune", "run", "--config", "no/such/run.yaml"], "fresh", "cannot be read"),
    (["finetune", "run", "--min-new-labels", "-1"], "fresh", "whole number >= 0"),
    (["models", "promote", "v1", "--force", "--seeds", "a,b"], "fresh", "comma-separated whole numbers"),
    (["models", "promote", "v1", "--scorer", "nosuchmodule:f"], "fresh", "cannot import nosuchmodule"),
    (["models", "promote", "v1", "--scorer", "missing.py:f"], "fresh", "missing.py not found"),
    (["models", "promote", "v1", "--scorer", "nocolon"], "fresh", "MODULE:FUNC"),
    (["export", "outdir"], "fresh", "is a folder"),
    (["export", "no/such/x.parquet"], "fresh", "does not exist"),
    (["import", "no/such/x.parquet"], "fresh", "no such file"),
    (["prompts", "list"], "file", "is not a folder"),
    (["prompts", "list"], "under-file", "is a file"),
    (["prompts", "list"], "/dev/null", "is not a folder"),
    (["reward", "train", "--threads", "0"], "fresh", "whole number >= 1"),
    (["init", "--starter-prompts", "-5"], "fresh", "whole number >= 0"),
    (["reward", "train", "--lr", "fast"], "fresh", "invalid float value"),
    (["reward", "score", "--prompt", "a red circle", "nosuch.png"], "fresh", "nosuch.png"),
    (["db", "upgrade", "nosuchrev"], "fresh", "no migration 'nosuchrev'"),
    (["bench", "loop", "--taste", "nosuch"], "fresh", "unknown taste 'nosuch'"),
    (["bench", "loop", "--taste", "missing.py:f"], "fresh", "not found"),
    (["bench", "loop", "--labels", "1", "--rounds", "2"], "fresh", "one label per round"),
    (["demo", "--taste", "nosuch"], "fresh", "unknown taste"),
    (["prompts", "add", "\u200b\u200d\u2060"], "fresh", "invisible"),
    (["prompts", "add", "a \udcff circle"], "fresh", "not valid UTF-8"),
    (["prompts", "add"], "fresh", "give prompt text"),
]


def test_listed_mistakes_are_one_line_before_any_model_loads(tmp_path):
    (tmp_path / "outdir").mkdir()
    (tmp_path / "afile").write_text("x")
    homes = {"file": str(tmp_path / "afile"), "under-file": str(tmp_path / "afile" / "home"),
             "/dev/null": "/dev/null"}
    cases = [{"argv": argv, "home": homes.get(kind, str(tmp_path / f"home{i}"))}
             for i, (argv, kind, _) in enumerate(MISTAKES)]
    results = _run_all(cases, tmp_path)
    for i, ((argv, kind, words), result) in enumerate(zip(MISTAKES, results)):
        _assert_one_line(result, argv)
        assert words in result["err"], (argv, result["err"])
        if kind == "fresh":
            assert not (tmp_path / f"home{i}").exists(), argv  # nothing written to the data home
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("afile", "outdir")]
    assert leftovers == [] and list((tmp_path / "outdir").iterdir()) == []  # no temporary export file


def test_non_utf8_prompt_on_the_real_command_line(tmp_path):
    env = {**_env(), "PICKLOOP_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-m", "pickloop", "prompts", "add", b"a \xff circle"],
                          capture_output=True, cwd=tmp_path, env=env, timeout=120)
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2 and err.count("\n") == 1 and "not valid UTF-8" in err, err
    assert not (tmp_path / "home").exists()


def test_second_finetune_run_finds_the_lock_before_importing_torch(tmp_path):
    from finetune.jobs import EXIT_BUSY, file_lock

    home = tmp_path / "home"
    code = ("import sys; from pickloop.cli import main; rc = main(['finetune', 'run']); "
            "print('torch' in sys.modules); sys.exit(rc)")
    with file_lock(home / "locks" / "finetune.lock") as held:
        assert held
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                              env={**_env(), "PICKLOOP_HOME": str(home)}, timeout=120)
    assert proc.returncode == EXIT_BUSY, proc.stderr
    assert proc.stdout.splitlines()[-1] == "False"  # found the lock taken without importing torch
    assert "holds" in proc.stdout

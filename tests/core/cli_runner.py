"""Run many ``pickloop`` command lines in one fresh process and report each outcome as JSON.

``python -m tests.core.cli_runner < cases.json`` where each case is ``{"argv": [...], "home": PATH}``;
prints one JSON list of ``{"rc", "err", "modules"}``: the exit code, stderr, and which heavy modules
(torch, diffusers, transformers) were imported by then. One process for all cases keeps the test fast
while still starting from nothing loaded, which is how "refused before any model loads" is checked.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import traceback

HEAVY = ("torch", "diffusers", "transformers", "peft")


def run_case(argv: list[str], home: str) -> dict:
    from pickloop.cli import main

    os.environ["PICKLOOP_HOME"] = home
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc()
            rc = 1
    return {"rc": rc, "err": err.getvalue(), "modules": [m for m in HEAVY if m in sys.modules]}


if __name__ == "__main__":
    for k in ("PICKLOOP_DATABASE_URL", "PICKLOOP_CONFIG", "PICKLOOP_IMAGE_STORE_URL"):
        os.environ.pop(k, None)
    cases = json.load(sys.stdin)
    print(json.dumps([run_case(c["argv"], c["home"]) for c in cases]))

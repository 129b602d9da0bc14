"""The one entry point, ``pickloop``. Every stage adds its commands through ``register(sub, bench_sub)``.

A user mistake (``UserError``) prints one line on stderr and exits 2; nothing else is caught here.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pickloop.errors import UserError, one_line
from pickloop.typed_config import non_negative_int

# Modules that add commands; each has register(sub, bench_sub). Imports inside handlers stay lazy so
# that `pickloop --help` does not load torch.
COMMAND_MODULES = (
    "pickloop.shapes.commands",
    "generator.commands",
    "feedback_app.commands",
    "reward.commands",
    "finetune.commands",
    "pickloop.loop.commands",
)

EXIT_USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An argument mistake is one line on stderr and exit 2 (argparse's default adds the usage block).
    Sub-parsers inherit the class, so every command behaves the same."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _ctx(args):  # noqa: ANN001, ANN202
    from pickloop.context import Context

    return Context()


def cmd_init(args) -> None:  # noqa: ANN001
    from pickloop.bootstrap import describe, initialize_home

    ctx = _ctx(args)
    ready = initialize_home(ctx, starter_prompts=args.starter_prompts, prompts=not args.no_prompts,
                            first_admin=not args.no_admin)
    print(describe(ctx, ready))
    first_sets = ctx.settings.first_sets if args.first_sets is None else args.first_sets
    if first_sets:
        from generator import draw_first_sets

        draw_first_sets(ctx, first_sets, progress=True)


def cmd_db_upgrade(args) -> None:  # noqa: ANN001
    from pickloop.db import check_revision, make_engine, upgrade
    from pickloop.settings import get_settings

    check_revision(args.revision)  # before the database file is made
    s = get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(s.db_url), args.revision)
    print(f"database at {args.revision}")


def cmd_prompts_add(args) -> None:  # noqa: ANN001
    from pickloop.db import write_session
    from pickloop.store import add_prompts, list_prompts, validate_prompt

    texts = list(args.text)
    if args.file:
        try:
            raw = Path(args.file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read prompt file {args.file}: {e}") from None
        texts += [line.rstrip("\r") for line in raw.split("\n") if line.strip()]
    if not texts:
        raise UserError("give prompt text or --file FILE (one prompt per line)")
    texts = [validate_prompt(t) for t in texts]  # before the data home is touched
    ctx = _ctx(args)
    with write_session(ctx.engine) as s:
        before = {p.id for p in list_prompts(session=s, active=None)}
        rows = add_prompts(session=s, texts=texts, pool=args.pool)
        new = sum(r.id not in before for r in rows)
    print(f"{new} prompts added, {len(rows) - new} already present (pool {args.pool})")


def cmd_prompts_list(args) -> None:  # noqa: ANN001
    from pickloop.db import read_session
    from pickloop.store import list_prompts

    ctx = _ctx(args)
    with read_session(ctx.engine) as s:
        for p in list_prompts(session=s, pool=args.pool, split=args.split):
            print(f"{p.id}\t{p.pool}\t{p.split}\t{p.text}")


def cmd_raters_add(args) -> None:  # noqa: ANN001
    from pickloop.db import write_session
    from pickloop.store import add_rater

    ctx = _ctx(args)
    with write_session(ctx.engine) as s:
        rater, token = add_rater(session=s, name=args.name, role="admin" if args.admin else "rater")
    print(f"rater {rater.name} ({rater.role}) added. Token (shown once, keep it): {token}")


def cmd_raters_list(args) -> None:  # noqa: ANN001
    from pickloop.db import read_session
    from pickloop.store import list_raters

    ctx = _ctx(args)
    with read_session(ctx.engine) as s:
        for r in list_raters(session=s):
            print(f"{r.id}\t{r.name}\t{r.role}\t{r.kind}\t{'active' if r.active else 'inactive'}")


def cmd_groups(args) -> None:  # noqa: ANN001
    """``groups add NAME``, ``groups join|leave GROUP RATER...``, ``groups list``."""
    from pickloop import audiences
    from pickloop.db import read_session, write_session

    ctx = _ctx(args)
    if args.groups_cmd == "list":
        with read_session(ctx.engine) as s:
            for name, members in audiences.groups(session=s).items():
                print(f"{name}\t{', '.join(members) or '-'}")
        return
    with write_session(ctx.engine) as s:
        if args.groups_cmd == "add":
            audiences.add_group(session=s, name=args.name)
            print(f"group {args.name.strip()} added")
        else:
            n = audiences.set_membership(session=s, group=args.group, raters=args.raters,
                                         member=args.groups_cmd == "join")
            print(f"{n} rater(s) {'joined' if args.groups_cmd == 'join' else 'left'} {args.group}")


def cmd_export(args) -> None:  # noqa: ANN001
    from pickloop.db import read_session
    from pickloop.exchange import check_export_path, export_parquet, undecided_path

    check_export_path(args.out)  # before the data home is touched
    ctx = _ctx(args)
    with read_session(ctx.engine) as s:
        n = export_parquet(session=s, images=ctx.images, path=args.out)
    side = undecided_path(args.out)
    extra = f" (ties, none good and skips in {side}; DPO readers take {args.out} alone)" if side.exists() else ""
    print(f"{n} Pick-a-Pic rows written to {args.out}{extra}")


def cmd_import(args) -> None:  # noqa: ANN001
    from pickloop.db import write_session
    from pickloop.exchange import import_parquet

    if not Path(args.file).is_file():
        raise UserError(f"no such file: {args.file}")
    ctx = _ctx(args)
    with write_session(ctx.engine) as s:  # all or nothing
        added, present = import_parquet(session=s, images=ctx.images, path=args.file)
    print(f"{added} judgements imported, {present} already present")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="pickloop", description="Rate images, learn a reward, fine-tune a LoRA, repeat.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("init", help="create the data home, migrate the database, add starter prompts")
    q.add_argument("--no-prompts", action="store_true", help="do not add the starter prompt pool")
    q.add_argument("--starter-prompts", type=non_negative_int, default=200,
                   help="how many starter prompts (embedded model)")
    q.add_argument("--no-admin", action="store_true", help="do not create the first admin rater on a fresh home")
    q.add_argument("--first-sets", type=non_negative_int, default=None,
                   help="candidate sets to draw now when none is ready, so that the first rater rates while the "
                        "app's worker starts (default: setting first_sets, 24; 0: leave it to the worker)")
    q.set_defaults(func=cmd_init)

    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_cmd", required=True)
    q = db.add_parser("upgrade", help="apply migrations (alembic)")
    q.add_argument("revision", nargs="?", default="head")
    q.set_defaults(func=cmd_db_upgrade)

    pr = sub.add_parser("prompts", help="the prompt pool").add_subparsers(dest="prompts_cmd", required=True)
    q = pr.add_parser("add", help="add prompts: text arguments and/or --file (one per line)")
    q.add_argument("text", nargs="*")
    q.add_argument("--file", help="UTF-8 text file, one prompt per line")
    q.add_argument("--pool", default="default", help="prompt pool name")
    q.set_defaults(func=cmd_prompts_add)
    q = pr.add_parser("list", help="list prompts")
    q.add_argument("--pool")
    q.add_argument("--split", choices=["train", "heldout"])
    q.set_defaults(func=cmd_prompts_list)

    ra = sub.add_parser("raters", help="raters and their tokens").add_subparsers(dest="raters_cmd", required=True)
    q = ra.add_parser("add", help="add a rater; prints its token once")
    q.add_argument("name")
    q.add_argument("--admin", action="store_true", help="may use the admin page")
    q.set_defaults(func=cmd_raters_add)
    q = ra.add_parser("list", help="list raters")
    q.set_defaults(func=cmd_raters_list)

    gr = sub.add_parser("groups", help="groups of raters: audiences a model version can serve").add_subparsers(
        dest="groups_cmd", required=True)
    q = gr.add_parser("add", help="add a group")
    q.add_argument("name")
    q.set_defaults(func=cmd_groups)
    for verb, what in (("join", "put raters in a group"), ("leave", "take raters out of a group")):
        q = gr.add_parser(verb, help=what)
        q.add_argument("group")
        q.add_argument("raters", nargs="+", metavar="RATER")
        q.set_defaults(func=cmd_groups)
    q = gr.add_parser("list", help="groups and their raters")
    q.set_defaults(func=cmd_groups)

    q = sub.add_parser("export", help="export every label as Pick-a-Pic parquet: decided pairs in OUT, "
                                      "ties/none good/skips in OUT's .undecided.parquet sibling")
    q.add_argument("out", help="output .parquet file")
    q.set_defaults(func=cmd_export)
    q = sub.add_parser("import", help="import labels from Pick-a-Pic parquet (pickloop's own, with its "
                                      ".undecided.parquet sibling when present, or public)")
    q.add_argument("file", help="input .parquet file")
    q.set_defaults(func=cmd_import)

    bench_sub = sub.add_parser("bench", help="measured figures; last line is key=value").add_subparsers(
        dest="bench_cmd", required=True, metavar="BENCH")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is not None and name.startswith(e.name):
                continue  # that stage is not part of this install
            raise
        mod.register(sub, bench_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)  # a handler may return a distinct exit code (e.g. "another run holds the lock")
    except UserError as e:
        print(f"pickloop: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("pickloop: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())

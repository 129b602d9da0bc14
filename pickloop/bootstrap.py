"""What a fresh data home needs before anyone can rate: a promoted base version, starter prompts on the
embedded model, and a first admin who can sign in. ``pickloop init`` and ``pickloop app`` both call it."""
from __future__ import annotations

from dataclasses import dataclass

from pickloop.context import Context
from pickloop.db import write_session
from pickloop.store import add_prompts, add_rater, ensure_base_version, list_prompts, list_raters


@dataclass
class HomeReady:
    version: str  # name of the promoted version
    prompts_added: int
    admin_token: str | None  # the first admin's token, only when it was just created (shown once)


def initialize_home(ctx: Context, *, starter_prompts: int = 200, prompts: bool = True,
                    first_admin: bool = True) -> HomeReady:
    """Idempotent: only what is missing is added, in one transaction."""
    token = None
    added = 0
    with write_session(ctx.engine) as s:
        version = ensure_base_version(session=s, base_model=ctx.base_model)
        if prompts and ctx.base_model.startswith("embedded:") and not list_prompts(session=s):
            from pickloop.shapes.world import prompt_pool

            added = len(add_prompts(session=s, texts=prompt_pool("train", n=starter_prompts), pool="default"))
        if first_admin and not list_raters(session=s):
            _, token = add_rater(session=s, name="admin", role="admin")
        return HomeReady(version.name, added, token)


def describe(ctx: Context, ready: HomeReady) -> str:
    """The lines a person reads after setup."""
    lines = [f"data home {ctx.home.resolve()} ready; promoted model {ready.version}; "
             f"{ready.prompts_added} starter prompts added"]
    if ready.admin_token:
        lines.append(f"first rater 'admin' (admin role) created; sign in with token {ready.admin_token} "
                     "(shown once; add more with `pickloop raters add NAME`)")
    return "\n".join(lines)

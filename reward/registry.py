"""Saved reward models in the store: find one by id, path or "latest"."""
from __future__ import annotations

from pathlib import Path

from pickloop.errors import UserError
from pickloop.integrity import file_sha256
from reward.model import WEIGHTS_FILE, RewardModel


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a saved reward model's weights file."""
    return file_sha256(Path(folder) / WEIGHTS_FILE)


def reward_audience(row) -> str:  # noqa: ANN001 - RewardModelRow
    """The audience whose labels a registered reward model was trained on (``everyone`` before audiences)."""
    return (row.metrics or {}).get("audience") or "everyone"


def find_reward_model(*, session, ref: str | int = "latest", audience: str = "everyone"):  # noqa: ANN001, ANN201
    """The registered reward model (a RewardModelRow) with id ``ref``, or for ``latest`` the newest one trained
    on ``audience``'s labels (``everyone``: the shared one, on every label)."""
    from sqlmodel import select

    from pickloop.schema import RewardModelRow

    if ref == "latest":
        for row in session.exec(select(RewardModelRow).order_by(RewardModelRow.id.desc())):
            if reward_audience(row) == audience:
                return row
        if audience != "everyone":
            raise UserError(f"no reward model trained for {audience} yet: run `pickloop reward train --audience "
                            f"{audience}`")
        raise UserError("no reward model trained yet: run `pickloop reward train`")
    if isinstance(ref, int) or str(ref).isdigit():
        row = session.get(RewardModelRow, int(ref))
        if row is not None:
            return row
    raise UserError(f"no reward model {ref!r} in the registry (use an id or latest)")


def latest_reward_model_id(*, session, audience: str = "everyone") -> int | None:  # noqa: ANN001
    """The registry id of the newest reward model of ``audience``, or None when it has none."""
    try:
        return int(find_reward_model(session=session, audience=audience).id)
    except UserError:
        return None


def resolve_reward_path(*, ctx, ref: str = "latest") -> Path:  # noqa: ANN001
    """A saved reward model folder: an existing folder path as given, else a registry id or ``latest``."""
    return resolve_reward_model(ctx=ctx, ref=ref)[0]


def resolve_reward_model(*, ctx, ref: str = "latest",  # noqa: ANN001
                         audience: str = "everyone") -> tuple[Path, str | None]:
    """(folder, the weights' sha256 the registry recorded, or None for a folder it does not know);
    ``latest`` is ``audience``'s newest."""
    from sqlmodel import select

    from pickloop.db import read_session
    from pickloop.schema import RewardModelRow

    if not (isinstance(ref, str) and (ref == "latest" or ref.isdigit())):
        path = Path(ref)
        if not (path / "config.json").is_file():
            raise UserError(f"no saved reward model at {ref} (give a folder, a registry id or latest)")
        with read_session(ctx.engine) as s:
            row = s.exec(select(RewardModelRow).where(RewardModelRow.path == str(path.resolve()))
                         .order_by(RewardModelRow.id.desc())).first()
        return path, row.sha256 if row is not None else None
    with read_session(ctx.engine) as s:
        row = find_reward_model(session=s, ref=ref, audience=audience)
        return Path(row.path), row.sha256


def load_reward_model(*, ctx, ref: str = "latest", audience: str = "everyone"):  # noqa: ANN001, ANN201
    """A saved reward model (folder, registry id or ``latest``: ``audience``'s newest), its weights checked
    against the sha256 the registry recorded when it was trained."""
    path, sha = resolve_reward_model(ctx=ctx, ref=ref, audience=audience)
    return RewardModel.load(path, expected_sha256=sha)


def load_latest(*, ctx, audience: str = "everyone"):  # noqa: ANN001, ANN201 - RewardModel
    """The newest registered reward model of ``audience``, loaded (for the loop, DDPO and the promotion gate)."""
    return load_reward_model(ctx=ctx, ref="latest", audience=audience)

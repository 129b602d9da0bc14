"""Saved reward models in the store: find one by id, path or "latest"."""
from __future__ import annotations

import hashlib
from pathlib import Path

from pickloop.errors import UserError
from reward.model import WEIGHTS_FILE


def weights_sha256(folder: str | Path) -> str:
    """sha256 of a saved reward model's weights file."""
    h = hashlib.sha256()
    with (Path(folder) / WEIGHTS_FILE).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_reward_model(*, session, ref: str | int = "latest"):  # noqa: ANN001, ANN201 - RewardModelRow
    """The registered reward model with id ``ref``, or the newest one for ``latest``."""
    from sqlmodel import select

    from pickloop.schema import RewardModelRow

    if ref == "latest":
        row = session.exec(select(RewardModelRow).order_by(RewardModelRow.id.desc())).first()
        if row is None:
            raise UserError("no reward model trained yet: run `pickloop reward train`")
        return row
    if isinstance(ref, int) or str(ref).isdigit():
        row = session.get(RewardModelRow, int(ref))
        if row is not None:
            return row
    raise UserError(f"no reward model {ref!r} in the registry (use an id or latest)")


def latest_reward_model_id(*, session) -> int | None:  # noqa: ANN001
    """The registry id of the newest reward model, or None when none is registered."""
    try:
        return int(find_reward_model(session=session).id)
    except UserError:
        return None


def resolve_reward_path(*, ctx, ref: str = "latest") -> Path:  # noqa: ANN001
    """A saved reward model folder: an existing folder path as given, else a registry id or ``latest``."""
    from pickloop.db import read_session

    if not (isinstance(ref, str) and (ref == "latest" or ref.isdigit())):
        path = Path(ref)
        if not (path / "config.json").is_file():
            raise UserError(f"no saved reward model at {ref} (give a folder, a registry id or latest)")
        return path
    with read_session(ctx.engine) as s:
        return Path(find_reward_model(session=s, ref=ref).path)


def load_latest(*, ctx):  # noqa: ANN001, ANN201 - RewardModel
    """The newest registered reward model, loaded (for the loop, DDPO and the promotion gate)."""
    from reward.model import RewardModel

    return RewardModel.load(resolve_reward_path(ctx=ctx, ref="latest"))

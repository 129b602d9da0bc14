"""What each row of an imported Pick-a-Pic file must hold, checked for every row before anything is written.

``parse_rows`` turns the file's rows into checked rows (JSON columns parsed, nulls defaulted) or raises
one ``UserError`` naming the file, the row (counting from 1) and the column. A row with a ``pl_key`` is in
pickloop's own layout and must carry every ``pl_*`` column; its image ids are the sha256 of the image
bytes beside them (as ``pickloop export`` writes them), so a damaged image or a made-up id (``../../x``,
a sha256 of no image in the file) is refused. Other rows are public Pick-a-Pic data: image ids are any
short text, used only to pair each image with its bytes. Every image must decode
(``pickloop.images.decode_image``), so no image is written before a later one is found unreadable.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable

from pickloop.errors import UserError
from pickloop.images import SHA256_RE, decode_image
from pickloop.schema import CHOICES
from pickloop.store import validate_prompt

MAX_SLOTS = 64  # slots of one candidate set (the app shows 2-4; AI-ranked sets have up to 16)
MAX_NAME_CHARS = 128  # model version names, image ids of public files
UNKNOWN_RATER = "unknown"  # the rater of rows whose user_id is null


class BadValue(ValueError):
    """A value that does not fit its column; the message says what was expected."""


def _shown(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _choice(v: Any) -> str:
    if v not in CHOICES:
        raise BadValue(f"must be one of {', '.join(CHOICES)}, not {_shown(v)}")
    return v


def _text(v: Any, *, limit: int = MAX_NAME_CHARS) -> str:
    if not isinstance(v, str) or not v:
        raise BadValue(f"must be non-empty text, not {_shown(v)}")
    if len(v) > limit:
        raise BadValue(f"is {len(v)} characters; the limit is {limit}")
    return v


def _int(v: Any, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadValue(f"must be a whole number, not {_shown(v)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise BadValue(f"must be {lo}..{hi}, not {v}" if hi is not None else f"must be >= {lo}, not {v}")
    return v


def _label(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v not in (0, 0.5, 1):
        raise BadValue(f"must be 0, 0.5 or 1, not {_shown(v)}")
    return float(v)


def _image_bytes(v: Any) -> bytes:
    if not isinstance(v, (bytes, bytearray)) or not v:
        raise BadValue(f"must hold the image's bytes, not {_shown(v)}")
    return bytes(v)


def _sha(v: Any) -> str:
    if not isinstance(v, str) or not SHA256_RE.match(v):
        raise BadValue(f"must be an image id of 64 hex digits, not {_shown(v)}")
    return v


def _json(v: Any, kind: type) -> Any:
    if not isinstance(v, str):
        raise BadValue(f"must be JSON text, not {_shown(v)}")
    try:
        data = json.loads(v)
    except ValueError:
        raise BadValue(f"is not JSON: {_shown(v)}") from None
    if not isinstance(data, kind):
        raise BadValue(f"must be a JSON {'list' if kind is list else 'object'}, not {_shown(v)}")
    return data


def _candidate(v: Any) -> dict:
    if not isinstance(v, dict):
        raise BadValue(f"must list candidates as JSON objects, not {_shown(v)}")
    try:
        params = v.get("params", {})
        if not isinstance(params, dict):
            raise BadValue("params must be a JSON object")
        noise_memory = v.get("noise_memory", False)
        if not isinstance(noise_memory, bool):
            raise BadValue("noise_memory must be true or false")
        return {"slot": _int(v.get("slot"), 0, MAX_SLOTS - 1), "seed": _int(v.get("seed")), "params": params,
                "sha": _sha(v.get("sha")), "model": _text(v.get("model")), "noise_memory": noise_memory}
    except BadValue as e:
        raise BadValue(f"candidate {_shown(v)}: {e}") from None


def _candidates(v: Any) -> list[dict]:
    specs = [_candidate(c) for c in _json(v, list)]
    if not 2 <= len(specs) <= MAX_SLOTS:
        raise BadValue(f"must list 2-{MAX_SLOTS} candidates, not {len(specs)}")
    if len({c["slot"] for c in specs}) != len(specs):
        raise BadValue("names a slot twice")
    return specs


def _slots(v: Any) -> list[int]:
    return [_int(s, 0, MAX_SLOTS - 1) for s in _json(v, list)]


def _rater_name(v: Any) -> str:
    if v is None:
        return UNKNOWN_RATER
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise BadValue(f"must be text or a whole number, not {_shown(v)}")
    name = str(v).strip()[:64]
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise BadValue(f"must be a printable rater name, not {_shown(v)}")
    return name


def _ranking_id(v: Any) -> str | int:
    if isinstance(v, bool) or not isinstance(v, (str, int)) or v == "":
        raise BadValue(f"must be text or a whole number, not {_shown(v)}")
    return v


def _bool_or_true(v: Any) -> bool:
    if v is None:
        return True
    if not isinstance(v, bool):
        raise BadValue(f"must be true or false, not {_shown(v)}")
    return v


def _time_ms(v: Any) -> int | None:
    if v is None:
        return None
    t = _int(v, -1)
    return None if t < 0 else t  # -1: not measured


def _raters_wanted(v: Any) -> int:
    return 1 if v is None else _int(v, 1)


def _prompt(v: Any) -> str:
    if not isinstance(v, str):
        raise BadValue(f"must be text, not {_shown(v)}")
    try:
        return validate_prompt(v)
    except UserError as e:
        raise BadValue(str(e)) from None


# Every row: column -> check (which returns the value to keep).
COMMON: dict[str, Callable[[Any], Any]] = {
    "caption": _prompt, "jpg_0": _image_bytes, "jpg_1": _image_bytes, "image_0_uid": _text,
    "image_1_uid": _text, "model_0": _text, "model_1": _text, "label_0": _label, "label_1": _label,
    "has_label": _bool_or_true, "ranking_id": _ranking_id, "user_id": _rater_name,
    "pl_raters_wanted": _raters_wanted,
}
# Rows in pickloop's own layout (a pl_key): every one of these too.
PICKLOOP: dict[str, Callable[[Any], Any]] = {
    "pl_key": _text, "pl_set_key": lambda v: _text(v, limit=64), "pl_choice": _choice,
    "pl_winner_slot": lambda v: _int(v, -1, MAX_SLOTS - 1), "pl_shown_slots": _slots, "pl_time_ms": _time_ms,
    "pl_candidates": _candidates, "image_0_uid": _sha, "image_1_uid": _sha,
}


def _check_images(row: dict, readable: set[str]) -> tuple[str, str] | None:
    """(column, why) when an image of the row does not decode, or None. ``readable`` holds the sha256 of
    bytes already decoded, so an image repeated over a set's rows is decoded once."""
    for k in (0, 1):
        sha = hashlib.sha256(row[f"jpg_{k}"]).hexdigest()
        if sha in readable:
            continue
        try:
            decode_image(row[f"jpg_{k}"], what="the image")
        except UserError as e:
            return f"jpg_{k}", str(e)
        readable.add(sha)
    return None


def _check_pickloop_row(row: dict) -> tuple[str, str] | None:
    """(column, why) for the first way a pickloop-layout row contradicts itself, or None."""
    for k in (0, 1):
        if hashlib.sha256(row[f"jpg_{k}"]).hexdigest() != row[f"image_{k}_uid"]:
            return f"jpg_{k}", f"the bytes are not the image image_{k}_uid names (damaged or swapped)"
    slots = sorted(c["slot"] for c in row["pl_candidates"])
    if sorted(row["pl_shown_slots"]) != slots:
        return "pl_shown_slots", f"must list each candidate slot {slots} once, not {row['pl_shown_slots']}"
    if row["pl_choice"] == "pick" and row["pl_winner_slot"] not in slots:
        return "pl_winner_slot", f"a pick must name one of the slots {slots}, not {row['pl_winner_slot']}"
    return None


def parse_rows(rows: list[dict], path: str | Path) -> list[dict]:
    """The rows checked and parsed (see module docstring), or a UserError naming row and column."""
    out, readable = [], set()
    for i, raw in enumerate(rows, start=1):
        checks = {**COMMON, **PICKLOOP} if raw.get("pl_key") is not None else COMMON
        row = dict(raw)
        for col, check in checks.items():
            try:
                row[col] = check(raw.get(col))
            except BadValue as e:
                raise UserError(f"{path}: row {i}, column {col}: {e}; nothing was imported") from None
        bad = (_check_pickloop_row(row) if raw.get("pl_key") is not None else None) or _check_images(row, readable)
        if bad:
            raise UserError(f"{path}: row {i}, column {bad[0]}: {bad[1]}; nothing was imported")
        out.append(row)
    _check_sets_have_their_images(out, path)
    return out


def _check_sets_have_their_images(rows: list[dict], path: str | Path) -> None:
    """Every candidate a pickloop row lists is an image of its own judgement's rows in the file."""
    present: dict[str, set[str]] = {}
    for r in rows:
        if r.get("pl_key") is not None:
            present.setdefault(r["pl_key"], set()).update((r["image_0_uid"], r["image_1_uid"]))
    for i, r in enumerate(rows, start=1):
        if r.get("pl_key") is None:
            continue
        missing = [c["sha"] for c in r["pl_candidates"] if c["sha"] not in present[r["pl_key"]]]
        if missing:
            raise UserError(f"{path}: row {i}, column pl_candidates: image {missing[0][:16]}... is not in the "
                            "file; nothing was imported")

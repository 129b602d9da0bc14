"""Labels in and out of the store in the Pick-a-Pic layout, as parquet.

One row per pair of images shown together, as in Pick-a-Pic v2: ``caption, jpg_0, jpg_1, image_0_uid,
image_1_uid, model_0, model_1, label_0, label_1`` (1/0; a tie 0.5/0.5), ``best_image_uid, are_different,
has_label, ranking_id, user_id, created_at, num_example_per_prompt``. The ``jpg_*`` columns hold the stored
image bytes unchanged (PNG: lossless, so the sha256 survives; every Pick-a-Pic reader decodes it with PIL).

A judgement over n candidates becomes several rows sharing ``ranking_id``: a pick gives the winner against
each other candidate, a tie every pair (0.5/0.5), "none good" and "skip" one unlabelled row per other
candidate (``has_label`` false). Columns starting ``pl_`` carry what Pick-a-Pic has no place for (the set,
slots, seeds, choice, order shown, time taken, idempotency key), so export then import gives back the same
judgements. Files without them (public Pick-a-Pic data) import as one two-image set per row. Every row
is checked (``pickloop.exchange_rows``) before anything is written: a bad one is one line naming it.

Written so that readers that take every row as a decided pair read it right. The diffusers DPO example
(``train_diffusion_dpo.py``) swaps a row's images only when ``label_0 == 0`` and never reads
``has_label``: a tie (0.5) would train as "image 0 won" and an unlabelled row (0/0) as "image 1 won". The
official Diffusion-DPO code keeps rows with ``label_0`` in (0, 1), so it drops ties but would read an
unlabelled row as a pick. So :func:`export_parquet` writes two files:

- ``FILE``: decided pairs only (label 1/0). The winner's position is balanced, not always first: rows are
  ordered by a hash of (judgement key, images) and every other one puts the winner second, so a reader
  that ignores the labels' order learns no position bias and one that honours them loses nothing.
- ``FILE.stem + ".undecided.parquet"`` beside it, only when there are any: ties (0.5/0.5, ``has_label``
  true, the Pick-a-Pic convention that PickScore-style trainers read as a soft target) and "none good"
  or "skip" (0/0, ``has_label`` false). Point a DPO reader at ``FILE`` only.

:func:`import_parquet` reads ``FILE`` and, when it is there, its ``.undecided`` sibling, so export then
import still gives back every judgement.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections import defaultdict
from pathlib import Path

from sqlmodel import Session, select

from pickloop.errors import UserError, one_line
from pickloop.exchange_rows import parse_rows
from pickloop.images import ImageStore
from pickloop.schema import Candidate, Comparison, Judgement, ModelVersion, Prompt, Rater
from pickloop.store import (
    add_candidates, add_prompts, add_set, candidates_of, ensure_rater_without_sign_in, record_judgement,
)

PICKAPIC_COLUMNS = ["caption", "jpg_0", "jpg_1", "image_0_uid", "image_1_uid", "model_0", "model_1",
                    "label_0", "label_1", "best_image_uid", "are_different", "has_label", "ranking_id",
                    "user_id", "created_at", "num_example_per_prompt"]


UNDECIDED_SUFFIX = ".undecided.parquet"


def undecided_path(path: str | Path) -> Path:
    """Where :func:`export_parquet` puts ties, "none good" and skips beside ``path``."""
    path = Path(path)
    return path.with_name(path.stem + UNDECIDED_SUFFIX)


def _pairs_of(j: Judgement, cands: list[Candidate]) -> list[tuple[Candidate, Candidate, float, float, bool]]:
    """(image 0, image 1, label_0, label_1, has_label) rows for one judgement; a pick's winner comes first
    here and :func:`_balance_winner_position` moves it."""
    if j.choice == "pick":
        win = next(c for c in cands if c.id == j.winner_id)
        return [(win, c, 1.0, 0.0, True) for c in cands if c.id != win.id]
    if j.choice == "tie":
        return [(a, b, 0.5, 0.5, True) for i, a in enumerate(cands) for b in cands[i + 1:]]
    return [(cands[0], c, 0.0, 0.0, False) for c in cands[1:]]


_SWAP = {"jpg_0": "jpg_1", "image_0_uid": "image_1_uid", "model_0": "model_1", "label_0": "label_1"}


def _balance_winner_position(rows: list[dict]) -> None:
    """Put the winner second in every other decided row, in an order fixed by a hash of the row's
    judgement key and images: half the winners sit in each position (within one), independent of the
    order the judgements were made in, and a rerun writes the same file."""
    def order(r: dict) -> str:
        return hashlib.sha256(f"{r['pl_key']}|{r['image_0_uid']}|{r['image_1_uid']}".encode()).hexdigest()

    for r in sorted(rows, key=order)[1::2]:
        for a, b in _SWAP.items():
            r[a], r[b] = r[b], r[a]


def export_rows(*, session: Session, images: ImageStore) -> list[dict]:
    """Every judgement as Pick-a-Pic rows (see module docstring), decided rows with the winner's position
    balanced."""
    versions = {v.id: v.name for v in session.exec(select(ModelVersion))}
    raters = {r.id: r.name for r in session.exec(select(Rater))}
    q = (select(Judgement, Comparison, Prompt).join(Comparison, Judgement.comparison_id == Comparison.id)
         .join(Prompt, Comparison.prompt_id == Prompt.id).order_by(Judgement.id))
    rows: list[dict] = []
    blobs: dict[str, bytes] = {}  # each image read (and checked against its sha256) once, shared by its rows

    def blob(sha: str) -> bytes:
        if sha not in blobs:
            blobs[sha] = images.read_bytes(sha)
        return blobs[sha]

    for j, comp, prompt in session.exec(q):
        cands = candidates_of(session=session, comparison_id=comp.id)
        for a, b, l0, l1, has_label in _pairs_of(j, cands):
            rows.append({
                "caption": prompt.text, "jpg_0": blob(a.image_sha256),
                "jpg_1": blob(b.image_sha256), "image_0_uid": a.image_sha256,
                "image_1_uid": b.image_sha256, "model_0": versions[a.model_version_id],
                "model_1": versions[b.model_version_id], "label_0": l0, "label_1": l1,
                "best_image_uid": a.image_sha256 if l0 == 1.0 else "",
                "are_different": a.image_sha256 != b.image_sha256, "has_label": has_label,
                "ranking_id": j.id, "user_id": raters[j.rater_id], "created_at": j.created_at.isoformat(),
                "pl_set_key": comp.key, "pl_choice": j.choice, "pl_winner_slot": next(
                    (c.slot for c in cands if c.id == j.winner_id), -1),
                "pl_shown_slots": json.dumps([next(c.slot for c in cands if c.id == i) for i in j.shown_order]),
                "pl_time_ms": j.time_ms if j.time_ms is not None else -1, "pl_key": j.idempotency_key,
                "pl_candidates": json.dumps([{"slot": c.slot, "seed": c.seed, "params": c.params,
                                              "sha": c.image_sha256, "noise_memory": c.from_noise_memory,
                                              "model": versions[c.model_version_id]} for c in cands]),
                "pl_raters_wanted": comp.raters_wanted,
            })
    _balance_winner_position([r for r in rows if r["pl_choice"] == "pick"])
    return rows


def _count_per_prompt(rows: list[dict]) -> list[dict]:
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["caption"]] += 1
    for r in rows:
        r["num_example_per_prompt"] = counts[r["caption"]]
    return rows


def _write_atomically(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
        tmp.replace(path)  # a half-written export is never left under the requested name
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_parquet(*, session: Session, images: ImageStore, path: str | Path) -> int:
    """Write every judgement: decided pairs to ``path``, ties, "none good" and skips to
    :func:`undecided_path` (only when there are any; a stale one is removed). Returns the number of rows
    in both. Each file is written atomically."""
    path = check_export_path(path)
    rows = export_rows(session=session, images=images)
    if not rows:
        raise UserError("no judgements to export yet")
    decided = [r for r in rows if r["pl_choice"] == "pick"]
    undecided = [r for r in rows if r["pl_choice"] != "pick"]
    _write_atomically(_count_per_prompt(decided), path)
    side = undecided_path(path)
    if undecided:
        _write_atomically(_count_per_prompt(undecided), side)
    elif side.exists():  # from an earlier export: importing it beside this file would add stale labels
        side.unlink()
    return len(rows)


def check_export_path(path: str | Path) -> Path:
    """``path`` if a file can be written there: not a folder, in a folder that exists."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a file name such as {path / 'labels.parquet'}")
    if not path.parent.is_dir():
        raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    return path


def _version_named(session: Session, name: str) -> ModelVersion:
    v = session.exec(select(ModelVersion).where(ModelVersion.name == name)).first()
    if v is None:
        v = ModelVersion(name=name, base_model=f"imported:{name}", method="imported", status="retired")
        session.add(v)
        session.flush()
    return v


def _rater_named(session: Session, name: str) -> Rater:
    return ensure_rater_without_sign_in(session=session, name=name, kind="imported")


def public_key(ranking_id: str | int, uid0: str, uid1: str) -> str:
    """The idempotency key of a public Pick-a-Pic row: ``pickapic:<ranking_id>:<uid0>:<uid1>`` when that
    fits the 128-character limit (as before, so re-imports stay no-ops), else its sha256 (two 64-hex
    image ids make it 139 characters)."""
    key = f"pickapic:{ranking_id}:{uid0}:{uid1}"
    return key if len(key) <= 128 else "pickapic-sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _import_set(session: Session, images: ImageStore, rows: list[dict]) -> bool:
    """One judgement from its checked rows (``exchange_rows.parse_rows``); returns True when it was new."""
    first = rows[0]
    own = first.get("pl_key") is not None  # pickloop's own layout
    prompt = add_prompts(session=session, texts=[first["caption"]])[0]
    key = first["pl_key"] if own else public_key(first["ranking_id"], first["image_0_uid"], first["image_1_uid"])
    if session.exec(select(Judgement).where(Judgement.idempotency_key == key)).first() is not None:
        return False
    data = {}
    for r in rows:
        data[r["image_0_uid"]], data[r["image_1_uid"]] = r["jpg_0"], r["jpg_1"]
    if own:
        specs = first["pl_candidates"]
    else:
        specs = [{"slot": 0, "seed": -1, "params": {}, "sha": first["image_0_uid"], "model": first["model_0"]},
                 {"slot": 1, "seed": -1, "params": {}, "sha": first["image_1_uid"], "model": first["model_1"]}]
    set_key = first["pl_set_key"] if own else hashlib.sha256(key.encode()).hexdigest()[:32]
    comp = session.exec(select(Comparison).where(Comparison.key == set_key)).first()
    if comp is None:
        comp = add_set(session=session, key=set_key, prompt_id=prompt.id, status="ready", source="import",
                       model_version_id=_version_named(session, specs[0]["model"]).id,
                       raters_wanted=first["pl_raters_wanted"])
        # every image comes from the file's bytes (checked: each is there)
        add_candidates(session=session, comparison=comp, candidates=[
            dict(slot=sp["slot"], model_version_id=_version_named(session, sp["model"]).id, seed=sp["seed"],
                 params=sp["params"], image_sha256=images.put(data[sp["sha"]]),
                 from_noise_memory=sp.get("noise_memory", False)) for sp in specs])
    by_slot = {c.slot: c.id for c in candidates_of(session=session, comparison_id=comp.id)}
    if own:
        choice, winner_slot, shown_slots = first["pl_choice"], first["pl_winner_slot"], first["pl_shown_slots"]
    else:
        choice = "skip" if not first["has_label"] else ("tie" if first["label_0"] == 0.5 else "pick")
        winner_slot, shown_slots = (0 if first["label_0"] == 1.0 else 1), [0, 1]
    if sorted(shown_slots) != sorted(by_slot):
        raise UserError(f"judgement {key[:40]} names slots {sorted(shown_slots)} but its set {set_key} "
                        f"already holds slots {sorted(by_slot)}; nothing was imported")
    _, created = record_judgement(
        session=session, comparison_id=comp.id, rater_id=_rater_named(session, first["user_id"]).id,
        choice=choice, winner_id=by_slot.get(winner_slot) if choice == "pick" else None,
        shown_order=[by_slot[s] for s in shown_slots], idempotency_key=key,
        time_ms=first.get("pl_time_ms") if own else None)
    return created


def _read_rows(path: str | Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read parquet file {path}: {one_line(e)}") from None
    missing = [c for c in ("caption", "jpg_0", "jpg_1", "image_0_uid", "image_1_uid", "label_0", "label_1",
                           "model_0", "model_1", "ranking_id", "user_id") if c not in table.column_names]
    if missing:
        raise UserError(f"{path} lacks Pick-a-Pic columns: {', '.join(missing)}")
    return table.to_pylist()


def import_parquet(*, session: Session, images: ImageStore, path: str | Path) -> tuple[int, int]:
    """Read Pick-a-Pic rows from ``path`` and, when it exists, its ``.undecided`` sibling (see
    :func:`export_parquet`) into the store; returns (judgements added, already present).

    Every row is checked first (``exchange_rows``): a bad one is one UserError naming its file, row and
    column, raised before any image or row is written."""
    rows = parse_rows(_read_rows(path), path)  # every row checked before anything is written
    side = undecided_path(path)
    if side.is_file() and side.resolve() != Path(path).resolve():
        rows += parse_rows(_read_rows(side), side)
        # the judgements in the order they were made (pickloop writes its judgement id as ranking_id)
        rows.sort(key=lambda r: r["ranking_id"] if isinstance(r["ranking_id"], int) else -1)
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        row.setdefault("has_label", True)
        gid = row["pl_key"] if row.get("pl_key") is not None else \
            public_key(row["ranking_id"], row["image_0_uid"], row["image_1_uid"])
        groups[gid].append(row)
    try:
        added = sum(_import_set(session, images, rows) for rows in groups.values())
    except UserError as e:  # the file is named once, whatever row was refused
        raise UserError(e if str(path) in str(e) else f"{path}: {e}") from None
    return added, len(groups) - added

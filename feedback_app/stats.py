"""Figures and tools for the admin page: agreement, win rates, queue state, prompts, label export.

Plain functions over a store session (no Streamlit); re-exported by ``feedback_app.logic``.
"""
from __future__ import annotations

import csv
import importlib
import io
import json
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from pickloop.audiences import WinTally, parent_tally
from pickloop.errors import UserError
from pickloop.schema import Candidate, Comparison, Judgement, ModelVersion, Prompt, Rater
from pickloop.store import add_prompts, add_rater, list_prompts


# ---------------------------------------------------------------- agreement on overlap sets

@dataclass
class AgreementReport:
    """Pairwise agreement on sets answered by two or more raters (skips left out).

    Two answers agree when both are the same pick, both tie or both none good.
    """

    sets: int = 0  # overlap sets with at least two answers
    pairs: int = 0  # rater pairs compared
    agreed: int = 0
    per_rater: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (agreed, pairs)

    @property
    def overall(self) -> float | None:
        return self.agreed / self.pairs if self.pairs else None

    def rate_of(self, name: str) -> float | None:
        agreed, pairs = self.per_rater.get(name, (0, 0))
        return agreed / pairs if pairs else None


def agreement(*, session: Session) -> AgreementReport:
    """Agreement per rater and overall, from every set that two or more raters answered."""
    names = {r.id: r.name for r in session.exec(select(Rater))}
    by_set: dict[int, list[Judgement]] = defaultdict(list)
    for j in session.exec(select(Judgement).where(Judgement.choice != "skip").order_by(Judgement.id)):
        by_set[j.comparison_id].append(j)
    report = AgreementReport()
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for answers in by_set.values():
        if len(answers) < 2:
            continue
        report.sets += 1
        for a, b in combinations(answers, 2):
            same = (a.choice, a.winner_id) == (b.choice, b.winner_id)
            report.pairs += 1
            report.agreed += same
            for r in (a.rater_id, b.rater_id):
                per[names.get(r, str(r))][0] += same
                per[names.get(r, str(r))][1] += 1
    report.per_rater = {k: (v[0], v[1]) for k, v in sorted(per.items())}
    return report


# ---------------------------------------------------------------- win rates against the parent

@dataclass(frozen=True)
class VersionWinRate(WinTally):
    """How often a version's images beat its parent's when both were shown in one set.

    Counted per pair of candidates (one from each version) in a set: the picked one wins, a tie
    is half a win each; a pick of a third candidate says nothing about the pair.
    """

    version_id: int
    name: str
    parent: str | None
    status: str
    wins: int
    losses: int
    ties: int


def win_rates_by_version(*, session: Session) -> list[VersionWinRate]:
    """Each model version with a parent against that parent, from the labels so far."""
    versions = {v.id: v for v in session.exec(select(ModelVersion).order_by(ModelVersion.id))}
    tally = parent_tally(session=session)
    out = []
    for v in versions.values():
        if v.parent_id is None:
            continue
        t = tally[v.id]
        parent = versions.get(v.parent_id)
        out.append(VersionWinRate(v.id, v.name, parent.name if parent else None, v.status,
                                  t["wins"], t["losses"], t["ties"]))
    return out


# ---------------------------------------------------------------- queue and prompts

def queue_counts(*, session: Session) -> dict[str, int]:
    """Sets by status (drawing, ready, done, failed), plus answers and active prompts."""
    counts = {s: 0 for s in ("drawing", "ready", "done", "failed")}
    for status, n in session.exec(select(Comparison.status, func.count()).group_by(Comparison.status)):
        counts[status] = n
    answered = select(Judgement.comparison_id)
    counts["ready_unanswered"] = session.exec(
        select(func.count()).select_from(Comparison)
        .where(Comparison.status == "ready", Comparison.id.not_in(answered))).one()
    counts["judgements"] = session.exec(select(func.count()).select_from(Judgement)).one()
    counts["active_prompts"] = session.exec(select(func.count()).select_from(Prompt)
                                            .where(Prompt.active == True)).one()  # noqa: E712
    return counts


def prompt_lines(text: str) -> list[str]:
    """One prompt per non-blank line; Windows line ends are tolerated."""
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def add_prompts_from_text(*, session: Session, text: str | bytes, pool: str = "default") -> tuple[int, int]:
    """Add pasted or uploaded prompts (UTF-8, one per line). Returns (added, already present)."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UserError("the prompt file is not UTF-8 text") from None
    texts = prompt_lines(text)
    if not texts:
        raise UserError("no prompts given: one prompt per line")
    before = {p.id for p in list_prompts(session=session, active=None)}
    rows = add_prompts(session=session, texts=texts, pool=pool)
    new = sum(r.id not in before for r in rows)
    return new, len(rows) - new


def allow_oidc_rater(*, session: Session, email: str, role: str = "rater") -> Rater:
    """Put an email on the OIDC allow list (a rater of kind ``oidc`` named by the email)."""
    if "@" not in (email or ""):
        raise UserError(f"not an email address: {email!r}")
    rater, _token = add_rater(session=session, name=email.strip(), role=role, kind="oidc")
    return rater


# ---------------------------------------------------------------- label export

def _pickapic_exporter():  # noqa: ANN202
    """``pickloop.exchange.export_parquet`` when that module is installed, else None."""
    try:
        mod = importlib.import_module("pickloop.exchange")
    except ModuleNotFoundError:
        return None
    return getattr(mod, "export_parquet", None)


def export_formats() -> list[str]:
    """Formats the admin page offers: Pick-a-Pic parquet when ``pickloop.exchange`` provides it."""
    return (["pickapic-parquet"] if _pickapic_exporter() else []) + ["csv", "json"]


def label_rows(*, session: Session) -> list[dict]:
    """One dict per judgement with everything logged at labelling time (prompt, candidates, seeds)."""
    q = (select(Judgement, Comparison, Prompt, Rater).join(Comparison, Judgement.comparison_id == Comparison.id)
         .join(Prompt, Comparison.prompt_id == Prompt.id).join(Rater, Judgement.rater_id == Rater.id)
         .order_by(Judgement.id))
    rows = []
    for j, comp, prompt, rater in session.exec(q):
        cands = {c.id: c for c in session.exec(select(Candidate).where(Candidate.comparison_id == comp.id))}
        shown = [cands[i] for i in j.shown_order if i in cands]
        rows.append(dict(
            judgement_id=j.id, created_at=j.created_at.isoformat(), rater=rater.name, set_key=comp.key,
            prompt=prompt.text, choice=j.choice, winner_id=j.winner_id,
            winner_image_sha256=cands[j.winner_id].image_sha256 if j.winner_id in cands else None,
            time_ms=j.time_ms,
            shown=[dict(candidate_id=c.id, position=i, image_sha256=c.image_sha256, seed=c.seed,
                        model_version_id=c.model_version_id, params=c.params) for i, c in enumerate(shown)],
        ))
    return rows


def csv_text(text: str) -> str:
    """``text`` for a CSV cell a spreadsheet opens: a leading ``= + - @`` (or tab, CR) would start a formula
    (``=HYPERLINK(...)``), so such text gets a leading apostrophe, which spreadsheets show as text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def export_labels(*, session: Session, fmt: str, images=None) -> tuple[bytes, str, str]:  # noqa: ANN001
    """The labels as (data, file name, MIME type) in ``fmt``: pickapic-parquet, csv or json."""
    if fmt == "pickapic-parquet":
        export = _pickapic_exporter()
        if export is None:
            raise UserError("Pick-a-Pic export needs pickloop.exchange, which is not installed")
        with tempfile.TemporaryDirectory(prefix="pickloop-export-") as tmp:
            path = Path(tmp) / "pickloop-labels.parquet"
            export(session=session, images=images, path=path)
            files = sorted(Path(tmp).glob("*.parquet"))
            if len(files) == 1:  # decided pairs only
                return path.read_bytes(), path.name, "application/vnd.apache.parquet"
            # ties, none good and skips sit in a sibling file that DPO readers must not see: ship both
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
                for f in files:
                    z.write(f, f.name)
            return buf.getvalue(), "pickloop-labels.zip", "application/zip"
    rows = label_rows(session=session)
    if fmt == "json":
        return json.dumps(rows, indent=1).encode(), "pickloop-labels.json", "application/json"
    if fmt == "csv":
        buf = io.StringIO()
        cols = ["judgement_id", "created_at", "rater", "set_key", "prompt", "choice", "winner_id",
                "winner_image_sha256", "time_ms", "shown_candidate_ids", "shown_image_sha256s", "shown_seeds"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            shown = r.pop("shown")
            r.update({k: csv_text(r[k]) for k in ("rater", "set_key", "prompt")})
            w.writerow({**r, "shown_candidate_ids": " ".join(str(c["candidate_id"]) for c in shown),
                        "shown_image_sha256s": " ".join(c["image_sha256"] for c in shown),
                        "shown_seeds": " ".join(str(c["seed"]) for c in shown)})
        return buf.getvalue().encode(), "pickloop-labels.csv", "text/csv"
    raise UserError(f"unknown export format {fmt!r}; choose from {', '.join(export_formats())}")


__all__ = ["AgreementReport", "VersionWinRate", "add_prompts_from_text", "agreement", "allow_oidc_rater",
           "export_formats", "export_labels", "label_rows", "queue_counts", "win_rates_by_version"]

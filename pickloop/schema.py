"""The store's schema: every table pickloop keeps, in one module (the hub every stage imports).

Migrations in ``pickloop/migrations`` are generated from these classes; a test checks that the
migrated database and this module agree.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

MAX_PROMPT_CHARS = 2000  # CLIP reads 77 tokens; longer text is almost surely a paste mistake
CHOICES = ("pick", "tie", "none", "skip")  # none = "none good"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Prompt(SQLModel, table=True):
    __tablename__ = "prompts"
    id: Optional[int] = Field(default=None, primary_key=True)
    text: str = Field(max_length=MAX_PROMPT_CHARS)
    text_sha256: str = Field(max_length=64, unique=True, description="sha256 of the exact text; dedupes")
    pool: str = Field(default="default", max_length=64, index=True)
    split: str = Field(default="train", max_length=16, description="train or heldout (fixed by a hash)")
    active: bool = Field(default=True, description="false: hidden by an admin (never drawn or handed out)")
    written_by: Optional[int] = Field(default=None, foreign_key="raters.id", index=True,
                                      description="the rater who wrote it on the Create page; None: an admin's")
    created_at: datetime = Field(default_factory=utcnow)


class Rater(SQLModel, table=True):
    __tablename__ = "raters"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    token_hash: str = Field(max_length=128, description="sha256 of the rater's random token")
    role: str = Field(default="rater", max_length=16, description="rater or admin")
    kind: str = Field(default="human", max_length=16, description="human, oidc or simulated")
    active: bool = Field(default=True)
    created_at: datetime = Field(default_factory=utcnow)
    guide_seen_at: Optional[datetime] = Field(default=None, description="when the rater closed the rating guide")


class RaterSession(SQLModel, table=True):
    """A sign-in that outlives a page load: the browser's cookie carries the random session id (signed);
    this row is what the server checks and revokes (sign out ends it in every tab)."""

    __tablename__ = "rater_sessions"
    id: Optional[int] = Field(default=None, primary_key=True)
    sid_sha256: str = Field(max_length=64, unique=True, description="sha256 of the random session id")
    rater_id: int = Field(foreign_key="raters.id", index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: Optional[datetime] = None


class AppText(SQLModel, table=True):
    """Texts the app keeps in the store (the rating guide admins edit, the session signing key)."""

    __tablename__ = "app_texts"
    name: str = Field(primary_key=True, max_length=64)
    text: str = Field(max_length=20000)
    updated_at: datetime = Field(default_factory=utcnow)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=128, unique=True)
    base_model: str = Field(max_length=512, description="diffusers folder or hub id")
    lora_path: Optional[str] = Field(default=None, max_length=1024, description="folder with the LoRA")
    lora_sha256: Optional[str] = Field(default=None, max_length=64)
    parent_id: Optional[int] = Field(default=None, foreign_key="model_versions.id")
    method: str = Field(default="base", max_length=16, description="base, dpo or ddpo")
    status: str = Field(default="candidate", max_length=16, description="candidate, promoted, retired")
    data_snapshot: Optional[int] = Field(default=None, description="highest judgement id trained on")
    config_hash: Optional[str] = Field(default=None, max_length=64)
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: Optional[str] = Field(default=None, max_length=2000, description="why a gate refused it")
    created_at: datetime = Field(default_factory=utcnow)
    promoted_at: Optional[datetime] = None
    audience: str = Field(default="everyone", max_length=80, index=True,
                          description="whom it serves once promoted: everyone, group:NAME or rater:NAME")


class RaterGroup(SQLModel, table=True):
    """A named group of raters: an audience a model version can serve."""

    __tablename__ = "rater_groups"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class GroupMember(SQLModel, table=True):
    __tablename__ = "group_members"
    id: Optional[int] = Field(default=None, primary_key=True)
    group_id: int = Field(foreign_key="rater_groups.id", index=True)
    rater_id: int = Field(foreign_key="raters.id", index=True)
    __table_args__ = (UniqueConstraint("group_id", "rater_id"),)


class Comparison(SQLModel, table=True):
    """A set of candidates drawn together to be shown together."""

    __tablename__ = "comparisons"
    id: Optional[int] = Field(default=None, primary_key=True)
    key: str = Field(max_length=64, unique=True, description="random id of the set, used in idempotency keys")
    prompt_id: int = Field(foreign_key="prompts.id", index=True)
    model_version_id: int = Field(foreign_key="model_versions.id", index=True)
    status: str = Field(default="drawing", max_length=16,
                        description="drawing, ready, done or failed; offered: a Create set waiting for its rater")
    claimed_by: Optional[str] = Field(default=None, max_length=128, description="worker drawing it")
    claimed_at: Optional[datetime] = None
    raters_wanted: int = Field(default=1, ge=1, description="2+ for overlap sets (agreement)")
    source: str = Field(default="queue", max_length=16, description="queue, import, loop, ai or create")
    priority: Optional[float] = Field(default=None,
                                      description="higher is shown first (active learning: reward-model uncertainty)")
    created_at: datetime = Field(default_factory=utcnow)
    __table_args__ = (Index("ix_comparisons_queue", "status", "model_version_id", "prompt_id"),)


class Candidate(SQLModel, table=True):
    __tablename__ = "candidates"
    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    slot: int = Field(ge=0, description="position in the batch that drew it")
    prompt_id: int = Field(foreign_key="prompts.id", index=True)
    model_version_id: int = Field(foreign_key="model_versions.id")
    seed: int = Field(description="seed of this image's own torch.Generator")
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    image_sha256: str = Field(max_length=64, index=True)
    from_noise_memory: bool = Field(default=False, description="seed reused from a past winner")
    created_at: datetime = Field(default_factory=utcnow)
    __table_args__ = (UniqueConstraint("comparison_id", "slot"),)


class Assignment(SQLModel, table=True):
    """A set handed to a rater; keeps two raters from getting one set unless it is an overlap set."""

    __tablename__ = "assignments"
    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    rater_id: int = Field(foreign_key="raters.id", index=True)
    assigned_at: datetime = Field(default_factory=utcnow)
    __table_args__ = (UniqueConstraint("comparison_id", "rater_id"),)


class Judgement(SQLModel, table=True):
    __tablename__ = "judgements"
    id: Optional[int] = Field(default=None, primary_key=True)
    comparison_id: int = Field(foreign_key="comparisons.id", index=True)
    rater_id: int = Field(foreign_key="raters.id", index=True)
    choice: str = Field(max_length=8, description="pick, tie, none (none good) or skip")
    winner_id: Optional[int] = Field(default=None, foreign_key="candidates.id")
    shown_order: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    time_ms: Optional[int] = Field(default=None, ge=0, description="from the set shown to the answer")
    idempotency_key: str = Field(max_length=128, unique=True)
    created_at: datetime = Field(default_factory=utcnow)
    __table_args__ = (UniqueConstraint("comparison_id", "rater_id"),)


class RewardModelRow(SQLModel, table=True):
    __tablename__ = "reward_models"
    id: Optional[int] = Field(default=None, primary_key=True)
    path: str = Field(max_length=1024)
    sha256: str = Field(max_length=64)
    backbone: str = Field(max_length=512)
    data_snapshot: int = Field(description="highest judgement id trained on")
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    id: Optional[int] = Field(default=None, primary_key=True)
    kind: str = Field(max_length=32, description="e.g. finetune-dpo, finetune-ddpo, reward")
    run_key: str = Field(max_length=160, unique=True, description="kind + data snapshot + config hash")
    status: str = Field(default="running", max_length=16, description="running, done, failed")
    data_snapshot: int = Field(default=0)
    config_hash: str = Field(max_length=64)
    owner: Optional[str] = Field(default=None, max_length=128, description="host:pid holding it")
    heartbeat_at: datetime = Field(default_factory=utcnow)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    error: Optional[str] = Field(default=None, max_length=4000)
    output: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))

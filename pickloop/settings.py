"""Typed settings, read from ``PICKLOOP_*`` environment variables and an optional YAML file.

Precedence: explicit keyword arguments > environment > config file > defaults. The config file is
``$PICKLOOP_CONFIG`` when set, else ``pickloop.yaml`` in the working directory when present.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pickloop.errors import UserError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICKLOOP_", extra="forbid")

    home: Path = Field(Path("data"), description="Data home: database, images, LoRA versions, reports.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in the data home when unset.")
    image_store_url: str | None = Field(None, description="fsspec URL of the image store; <home>/images when unset.")
    base_model: str | None = Field(None, description="Diffusers folder or hub id; the embedded shapes model "
                                   "when unset.")
    candidates_per_set: int = Field(4, ge=2, le=4, description="Candidates shown together to a rater (2-4).")
    queue_depth: int = Field(2, ge=1, le=100, description="Ready, unanswered sets kept per active prompt.")
    overlap_share: float = Field(0.1, ge=0.0, le=1.0, description="Share of sets shown to two raters (agreement).")
    noise_memory: bool = Field(True, description="Reuse seeds that won for similar prompts.")
    noise_memory_share: float = Field(0.25, ge=0.0, le=1.0, description="Share of candidates drawn from winning seeds.")
    sampling_seed: int | None = Field(None, description="Seed of the candidates' seeds (benchmarks, to make a "
                                      "run repeatable); unset, every image gets a fresh random seed.")
    undo_seconds: float = Field(8.0, ge=0.0, description="How long a rater can undo the last pick, seconds.")
    app_sets_ahead: int = Field(3, ge=1, le=8, description="Sets the rating page holds in the browser after the "
                                "one on screen, so that an answer shows the next set at once.")
    generator_batch_sets: int = Field(4, ge=1, le=16, description="Sets the queue worker draws in one batched "
                                      "pipeline call (one per prompt).")
    queue_lead_seconds: float = Field(30.0, ge=0.0, description="The worker keeps as many open sets as the raters "
                                      "online answer in this many seconds, plus what their browsers hold.")
    first_sets: int = Field(24, ge=0, le=100, description="Candidate sets `pickloop init` draws on a home with none "
                            "ready, so that the first rater rates while the app's worker starts (0: none).")
    queue_min_sets: int = Field(8, ge=1, description="Open sets the worker keeps even with no rater online.")
    queue_max_sets: int = Field(200, ge=1, description="Most open sets the worker keeps, however fast the raters.")
    session_hours: float = Field(12.0, gt=0.0, description="How long a sign-in lasts across reloads and tabs, hours.")
    create_candidates: int = Field(4, ge=2, le=4, description="Candidates the Create page draws for a rater's "
                                   "own prompt (2-4).")
    create_threads: int = Field(1, ge=0, le=256, description="Torch threads the app draws Create's candidates with "
                                "on a CPU (the queue worker draws on the other cores); 0: torch's default.")
    worker_threads: int = Field(1, ge=0, le=256, description="Torch threads the queue worker (`pickloop generate`) "
                                "draws with on a CPU; 0: torch's default. One thread each keeps the worker, the app "
                                "and a fine-tuning job from slowing each other down on a small machine.")
    app_host: str = Field("127.0.0.1", description="Address the rating app binds to.")
    app_port: int = Field(8501, ge=1, le=65535, description="Port of the rating app.")
    sqlite_busy_timeout_ms: int = Field(30000, ge=0, description="How long SQLite waits on a lock, ms.")
    promote_min_win_rate: float = Field(0.5, ge=0.0, le=1.0, description="Promotion gate: win rate a new model "
                                        "version needs against its parent on held-out prompts (reward model, "
                                        "fixed seeds).")
    promote_max_follow_drop: float = Field(0.02, ge=0.0, le=1.0, description="Promotion gate (shapes world): largest "
                                           "allowed fall of the judge's prompt-following accuracy (0.02 = 2 points).")
    promote_gate_steps: int = Field(10, ge=1, le=200, description="Sampling steps for the promotion gate's images.")
    finetune_stale_seconds: float = Field(900.0, gt=0, description="A fine-tuning job whose heartbeat is older "
                                          "than this (s) may be taken over.")
    finetune_nice: int = Field(10, ge=0, le=19, description="A fine-tuning process raises its nice value to this "
                               "(lower CPU priority), so that the queue worker and the app keep ahead of the "
                               "raters while training shares the cores; 0 leaves the priority as it is.")
    reward_trust_min_acc: float = Field(0.70, ge=0.5, le=1.0, description="Fine-tuning uses the reward model's "
                                        "rankings (AI-ranked pairs, DDPO, the gate's win rate) only when its "
                                        "cross-validated accuracy on the human labels reaches this.")
    reward_trust_min_pairs: int = Field(100, ge=1, description="...and it was validated on at least this many pairs.")
    reward_rank_min_top_acc: float = Field(0.60, ge=0.5, le=1.0, description="Below full trust, AI-ranked pairs "
                                           "(best against worst of a set: pairs the reward model separates by far) "
                                           "are still used when its cross-validated accuracy on the quarter of "
                                           "pairs it separates most, less one standard error, reaches this.")
    audience_min_labels: int = Field(20, ge=1, description="`finetune run --audience` and `reward train "
                                     "--audience` refuse, in one line, an audience with fewer labels (picks and "
                                     "ties) of its own than this.")
    auto_dpo_variants: tuple[str, ...] = Field(("dpo+ai",), description="The Diffusion-DPO candidates "
                                               "`finetune run --method auto` trains when the reward model is trusted "
                                               "(dpo: human picks only; dpo+ai: also AI-ranked pairs); the gate "
                                               "promotes the better.")
    active_learning: bool = Field(False, description="show the sets the reward model can least tell apart first")

    @field_validator("auto_dpo_variants")
    @classmethod
    def _variants(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or set(v) - {"dpo", "dpo+ai"}:
            raise ValueError("auto_dpo_variants: one or both of dpo, dpo+ai")
        return tuple(dict.fromkeys(v))

    @field_validator("home", mode="before")
    @classmethod
    def _expand(cls, v: Any) -> Any:
        if v is None:
            return v
        home = Path(os.path.expanduser(str(v)))
        for p in (home, *home.absolute().parents):  # the nearest part that exists must be a folder
            if p.exists():
                if not p.is_dir():
                    raise ValueError(f"{home} is not a folder ({p} is a file)" if p != home
                                     else f"{home} is not a folder")
                break
        return home

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'pickloop.db').resolve()}"

    @property
    def images_url(self) -> str:
        return self.image_store_url or str((self.home / "images").resolve())

    @property
    def lora_dir(self) -> Path:
        return self.home / "loras"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


def _config_file_values() -> dict[str, Any]:
    path = os.environ.get("PICKLOOP_CONFIG")
    if path is None and Path("pickloop.yaml").exists():
        path = "pickloop.yaml"
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of setting: value")
    env_keys = {k[len("PICKLOOP_"):].lower() for k in os.environ if k.startswith("PICKLOOP_")}
    return {k: v for k, v in data.items() if k not in env_keys}


def get_settings(**overrides: Any) -> Settings:
    """Settings from overrides, the environment and the config file; a bad value is one clear line."""
    try:
        return Settings(**{**_config_file_values(), **overrides})
    except Exception as e:  # pydantic.ValidationError: keep the first problem only
        errors = getattr(e, "errors", None)
        if callable(errors):
            first = errors()[0]
            msg = first["msg"].removeprefix("Value error, ")
            raise UserError(f"bad setting {'.'.join(map(str, first['loc']))}: {msg}") from None
        raise

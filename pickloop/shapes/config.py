"""Typed settings of the training recipe; no torch import, so `pickloop --help` stays fast."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from pickloop.config_base import ConfigBase
from pickloop.errors import UserError

from .models import MODELS_DIR


@dataclass
class StageConfig(ConfigBase):
    """Settings of one training stage."""

    minutes: float = field(default=10.0,
                           metadata={"help": "wall-clock budget, minutes (resumed runs count earlier time)"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate, after a linear warmup"})
    warmup_steps: int = field(default=100, metadata={"help": "steps of linear learning-rate warmup"})
    checkpoint_every_s: float = field(default=120.0, metadata={"help": "seconds between checkpoints"})
    seed: int = field(default=0, metadata={"help": "seed of the data stream and the init"})

    section = "shapes stage"

    def validate(self) -> None:
        if self.minutes < 0 or self.batch_size < 1 or self.lr <= 0:
            raise UserError(f"a shapes training stage needs minutes >= 0, batch_size >= 1 and lr > 0, not {self}")


@dataclass
class UnetConfig(StageConfig):
    """Extra settings of the U-Net stage."""

    cfg_dropout: float = field(default=0.1, metadata={"help": "share of captions replaced by '' (for guidance)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay per step of the shipped weights"})
    open_share: float = field(default=0.3, metadata={"help": "share of captions that leave attributes open"})
    pool_size: int = field(default=8192, metadata={"help": "scenes encoded once to latents and reused"})


@dataclass
class ShapesBenchConfig(ConfigBase):
    """Settings of the shapes bench."""

    n: int = field(default=100, metadata={"help": "held-out prompts drawn and read"})
    batch: int = field(default=20, metadata={"help": "images per pipeline call while drawing"})
    seed: int = field(default=0, metadata={"help": "seed of the first image; image i uses seed + i"})
    pipeline_dir: Path | None = field(default=None, metadata={"help": "pipeline folder (default: shipped)",
                                                                         "flag": "pipeline"})
    clip_dir: Path | None = field(default=None, metadata={"help": "CLIP folder (default: shipped)",
                                                                     "flag": "clip"})
    candidates: int = field(default=16, metadata={"help": "captions the CLIP chooses among"})

    section = "shapes bench"

    def validate(self) -> None:
        if self.n < 1 or self.batch < 1 or self.candidates < 2:
            raise UserError("the shapes bench needs n >= 1, batch >= 1 and candidates >= 2")


STAGES = ("vae", "clip", "unet")  # in order: the U-Net needs the trained VAE


@dataclass
class RecipeConfig(ConfigBase):
    """The whole recipe; the defaults take about 70 minutes on one busy CPU thread (CLIP may run beside)."""

    work: Path = field(default=Path("runs/shapes/work"), metadata={"help": "checkpoints live here; rerun to resume"})
    out: Path = field(default=MODELS_DIR, metadata={"help": "writes sd/ and clip/ here"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    vae: StageConfig = field(default_factory=lambda: StageConfig(minutes=10, batch_size=8, lr=2e-3))
    clip: StageConfig = field(default_factory=lambda: StageConfig(minutes=15, batch_size=64, lr=5e-4))
    unet: UnetConfig = field(default_factory=lambda: UnetConfig(minutes=55, batch_size=32, lr=7e-4))

    section = "shapes recipe"

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise UserError(f"device must be cpu or cuda, got {self.device!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work", type=Path, default=Path("runs/shapes/work"), help="checkpoint folder (resumable)")
    p.add_argument("--out", type=Path, default=MODELS_DIR, help="where sd/ and clip/ are written")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    d = RecipeConfig()
    p.add_argument("--minutes-vae", type=float, default=d.vae.minutes, help="VAE budget, minutes")
    p.add_argument("--minutes-clip", type=float, default=d.clip.minutes, help="CLIP budget, minutes")
    p.add_argument("--minutes-unet", type=float, default=d.unet.minutes, help="U-Net budget, minutes")
    p.add_argument("--stages", default="vae,clip,unet",
                   help="comma-separated stages to run, e.g. 'clip' in a second process beside 'vae,unet'")
    p.add_argument("--ship-only", action="store_true", help="only write the models from the checkpoints")


def config_from_args(args: argparse.Namespace) -> RecipeConfig:
    cfg = RecipeConfig(work=args.work, out=args.out, device=args.device)
    cfg.vae.minutes, cfg.clip.minutes, cfg.unet.minutes = args.minutes_vae, args.minutes_clip, args.minutes_unet
    return cfg



"""`pickloop shapes train` end to end: VAE, CLIP, U-Net, then ship both models with model cards."""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import train as T
from .models import MODELS_DIR


STAGES = ("vae", "clip", "unet")  # in order: the U-Net needs the trained VAE


@dataclass
class RecipeConfig:
    """The whole recipe; defaults fit about 65 minutes on one CPU thread."""

    work: Path = field(default=Path("runs/shapes/work"), metadata={"help": "checkpoints live here; rerun to resume"})
    out: Path = field(default=MODELS_DIR, metadata={"help": "writes sd/ and clip/ here"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    vae: T.StageConfig = field(default_factory=lambda: T.StageConfig(minutes=10, batch_size=8, lr=2e-3))
    clip: T.StageConfig = field(default_factory=lambda: T.StageConfig(minutes=15, batch_size=64, lr=5e-4))
    unet: T.UnetConfig = field(default_factory=lambda: T.UnetConfig(minutes=55, batch_size=32, lr=7e-4, pool_size=8192))

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")


def model_card(kind: str, cfg: RecipeConfig, figures: dict | None = None) -> str:
    """A short README for a shipped folder: recipe, steps, time, figures reached."""
    lines = [f"# pickloop shapes {kind}", "",
             "Trained from scratch by `pickloop shapes train` on the procedural shapes world",
             "(pickloop/shapes/world.py); no external data or weights.", "", "## Recipe"]
    for name in ("vae", "clip", "unet"):
        meta = T.stage_meta(cfg.work, name)
        if meta:
            c = meta["config"]
            lines.append(f"- {name}: {meta['step']} steps, batch {c['batch_size']}, lr {c['lr']}, "
                         f"{meta['elapsed_s'] / 60:.1f} min on {cfg.device}, final loss {meta['loss']:.4f}")
    lines += ["- schedule: scaled-linear betas rescaled to zero terminal SNR, v-prediction; DDIM with trailing "
              "spacing for sampling; frozen random 2-layer CLIP text encoder; EMA 0.999 U-Net weights."]
    if figures:
        lines += ["", "## Figures (`pickloop bench shapes`)", "", " ".join(f"{k}={v}" for k, v in figures.items())]
    return "\n".join(lines) + "\n"


def ship(cfg: RecipeConfig, figures: dict | None = None) -> None:
    """Write the pipeline and the CLIP from the current checkpoints into cfg.out (atomically)."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if (Path(cfg.work) / "unet.ckpt.safetensors").exists():
        T.build_pipeline(cfg.work, Path(cfg.out) / "sd", card=model_card("pipeline", cfg, figures))
    if (Path(cfg.work) / "clip.ckpt.safetensors").exists():
        T.save_clip(cfg.work, Path(cfg.out) / "clip", card=model_card("CLIP", cfg, figures))


def train_all(cfg: RecipeConfig, stages: tuple[str, ...] = STAGES) -> None:
    """Run (or resume) every stage, then ship. Each stage skips itself once its budget is spent."""
    if cfg.device == "cpu":
        torch.set_num_threads(1)
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    for name in STAGES:
        if name in stages:
            {"vae": T.train_vae, "clip": T.train_clip, "unet": T.train_unet}[name](work, getattr(cfg, name), cfg.device)
    ship(cfg)
    print(f"recipe done in {(time.time() - t0) / 60:.1f} min; shipped to {cfg.out}", flush=True)


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pickloop.shapes.recipe", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    ship(cfg) if args.ship_only else train_all(cfg, tuple(s for s in args.stages.split(",") if s))


if __name__ == "__main__":
    main()

"""`pickloop shapes train` end to end: VAE, CLIP, U-Net, then ship both models with model cards."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import train as T
from .config import STAGES, RecipeConfig, add_arguments, config_from_args


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
                         f"{meta['elapsed_s'] / 60:.1f} min on {cfg.device}, final loss "
                         + (f"{meta['loss']:.4f}" if meta["loss"] is not None else "n/a (resumed, no new steps)"))
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m pickloop.shapes.recipe", description=__doc__)
    add_arguments(p)
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    ship(cfg) if args.ship_only else train_all(cfg, tuple(s for s in args.stages.split(",") if s))


if __name__ == "__main__":
    main()

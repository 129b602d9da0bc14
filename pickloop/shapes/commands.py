"""CLI: `pickloop shapes train` and `pickloop bench shapes`."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pickloop.config_base import add_flags, config_from_args
from pickloop.errors import UserError

from .config import ShapesBenchConfig, add_arguments
from .config import config_from_args as recipe_from_args
from .models import default_pipeline_dir


def cmd_train(args: argparse.Namespace) -> None:
    from .recipe import ship, train_all

    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda asked, but torch sees no CUDA device")
    cfg = recipe_from_args(args)  # a bad setting is a UserError from the config base
    if args.ship_only:
        if not (Path(cfg.work) / "unet.ckpt.safetensors").exists():
            raise UserError(f"no checkpoints in {cfg.work}; train first")
        ship(cfg)
    else:
        train_all(cfg, tuple(s for s in args.stages.split(",") if s))


def cmd_bench(args: argparse.Namespace) -> None:
    cfg = config_from_args(ShapesBenchConfig, args)  # a bad setting: one line before torch loads
    import torch

    from .bench import format_figures, run_bench

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for folder in (cfg.pipeline_dir, cfg.clip_dir):
        if folder is not None and not Path(folder).is_dir():
            raise UserError(f"model folder {folder} does not exist")
    if cfg.pipeline_dir is None and not (default_pipeline_dir() / "model_index.json").is_file():
        raise UserError("the shapes models are not shipped yet; run `pickloop shapes train`")
    print(format_figures(run_bench(cfg)), flush=True)


def register(sub, bench_sub) -> None:  # noqa: ANN001
    """Add `shapes train` to the top-level subparsers and `shapes` to the bench subparsers."""
    shapes = sub.add_parser("shapes", help="the embedded shapes world and its tiny models")
    shapes_sub = shapes.add_subparsers(dest="shapes_cmd", required=True)
    q = shapes_sub.add_parser("train", help="train (or resume) the tiny pipeline and CLIP, then ship them")
    add_arguments(q)
    q.set_defaults(func=cmd_train)

    q = bench_sub.add_parser("shapes", help="judge the shipped pipeline on held-out prompts; CLIP top-1; speed")
    add_flags(q, ShapesBenchConfig)
    q.set_defaults(func=cmd_bench)

"""Diffusion-DPO as a job: pairs from the store (plus AI-ranked pairs when asked), then ``train_dpo``;
``python -m finetune.dpo`` (or ``accelerate launch -m finetune.dpo``) runs it on $PICKLOOP_HOME."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from finetune import lora as lora_io
from finetune.dpo.ai_feedback import ai_feedback_pairs
from finetune.dpo.config import DPOConfig, PairSpec
from finetune.dpo.train import DPOResult, train_dpo
from finetune.priority import lower_priority
from pickloop.audiences import LabelScope, label_weight
from pickloop.errors import UserError
from pickloop.config_base import add_flags, config_from_args
from pickloop.db import read_session
from pickloop.store import preference_pairs


def store_pairs(ctx: Any, *, upto: int | None = None, after: int | None = None,
                split: str | None = "train", scope: LabelScope | None = None) -> list[PairSpec]:
    """Human picks from the store as pairs (winner vs each other candidate; ties, none-good, skips dropped),
    from judgements with ``after`` < id <= ``upto`` (None: no bound). ``scope``: an audience's picks at
    weight 1 and everyone else's at its ``others_weight`` (left out at 0); None: every pick at weight 1.

    Held-out prompts are left out by default: the promotion gate judges on them.
    """
    with read_session(ctx.engine) as s:
        weight = label_weight(session=s, scope=scope or LabelScope())
        raw = preference_pairs(session=s, upto_id=upto, include_ties=False, split=split)
        pairs = [(p, weight(p.rater_id)) for p in raw if p.label == 1.0 and (after is None or p.judgement_id > after)]
        return [PairSpec(p.prompt, p.a.image_sha256, p.b.image_sha256, weight=w) for p, w in pairs if w > 0]


def run_dpo(ctx: Any, cfg: DPOConfig, *, out_dir: Path | str, work_dir: Path | str | None = None,
            upto: int | None = None, base: str | None = None, resume: bool = True,
            on_step: Callable[[int, dict[str, float]], None] | None = None,
            parent: lora_io.ParentLora | None = None, scope: LabelScope | None = None) -> DPOResult:
    """Diffusion-DPO on the store's picks up to judgement ``upto``, on the settings' base model,
    continuing from ``parent`` (None: from the base). With ``cfg.since_parent`` a stacked run takes
    only the picks newer than the parent's data snapshot (when the parent serves the run's audience; a
    run for an audience starting from another's version learns from all of its audience's picks).

    With ``cfg.ai_feedback_sets`` > 0 the latest reward model (of ``scope``'s audience) also ranks that many
    freshly drawn candidate sets, whose best-vs-worst pairs join the human ones at weight ``cfg.ai_feedback_weight``.
    ``scope``: whose picks, at what weight (``pickloop.audiences.LabelScope``; None: everyone's).
    """
    from pickloop.context import resolve_model_ref

    scope = scope or LabelScope()
    base_path = resolve_model_ref(base or ctx.base_model)
    stacked = parent is not None and cfg.since_parent and parent.audience == scope.audience
    after = parent.data_snapshot if stacked else None
    pairs = store_pairs(ctx, upto=upto, after=after, scope=scope)
    ctx.images.verify(k for p in pairs for k in (p.winner, p.loser))  # a damaged image: one line, before any model
    human = len(pairs)
    metadata: dict[str, Any] = {"data_snapshot": upto, "labels_after": after}
    if not scope.shared:
        metadata["labels"] = scope.describe()
    if cfg.ai_feedback_sets > 0:
        ai, metadata["ai_feedback"] = ai_feedback_pairs(ctx, cfg, base=base_path, parent=parent,
                                                        audience=scope.audience)
        pairs = pairs + ai
    result = train_dpo(cfg, base=base_path, pairs=pairs, load_image=ctx.images.open, out_dir=out_dir,
                       work_dir=work_dir, resume=resume, on_step=on_step, metadata=metadata, parent=parent)
    result.metrics.update(human_pairs=float(human), ai_pairs=float(len(pairs) - human))
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m finetune.dpo`` (or ``accelerate launch -m finetune.dpo``): train on the store in $PICKLOOP_HOME."""
    ap = argparse.ArgumentParser(prog="python -m finetune.dpo",
                                 description="Diffusion-DPO with a LoRA on the U-Net, trained on the raters' picks.")
    ap.add_argument("--out", required=True, help="folder for the final LoRA")
    ap.add_argument("--work", help="checkpoint folder (resumed from when it holds one)")
    ap.add_argument("--upto", type=int, help="highest judgement id to train on")
    ap.add_argument("--no-resume", action="store_true")
    add_flags(ap, DPOConfig)  # every setting as a flag, and --config FILE.yaml
    args = ap.parse_args(argv)
    from pickloop.context import Context

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        ctx = Context()
        lower_priority(ctx.settings.finetune_nice)
        cfg = config_from_args(DPOConfig, args)
        result = run_dpo(ctx, cfg, out_dir=args.out, work_dir=args.work, upto=args.upto,
                         resume=not args.no_resume)
    except UserError as e:
        print(f"pickloop: error: {e}")
        return 2
    if result.lora_sha256:
        print(json.dumps({"lora_dir": str(result.lora_dir), "sha256": result.lora_sha256, **result.metrics}))
    return 0

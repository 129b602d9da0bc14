"""``run_ddpo``: DDPO as a scheduled job (``pickloop finetune run --method ddpo``).

Prompts come from the data home (the train split; the shapes pool for the embedded model), the reward
from ``config.reward`` (the newest reward model by default), the drift guard watches the promotion
gate's held-out prompts. Each epoch ends in a checkpoint (``finetune.checkpoint``: LoRA, optimizer,
RNG, stat-tracker buffers and history), so a killed run resumes at the next epoch; the final LoRA is
written atomically and registered by ``finetune.jobs`` as a candidate for the same promotion gate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from finetune import checkpoint as ckpt
from finetune.ddpo.config import DDPOConfig
from finetune.ddpo.rewards import RewardFn, make_reward
from finetune.ddpo.train import DDPOState, train_ddpo
from finetune.lora import ParentLora, lora_parameters, lora_tensors, save_lora_atomic, start_lora
from finetune.registry import gate_prompts
from pickloop.audiences import LabelScope
from pickloop.db import read_session
from pickloop.errors import UserError
from pickloop.pipelines import open_pipeline
from pickloop.shapes.world import prompt_pool
from pickloop.store import list_prompts


@dataclass
class DDPOResult:
    lora_dir: Path
    lora_sha256: str
    epochs: int  # epochs run in total (fewer than configured when the drift guard stopped the run)
    metrics: dict[str, Any]  # summary plus "history", one JSON row per epoch
    # every epoch crossed a drift limit and the LoRA went back to where it started: nothing new, no file written
    unchanged: bool = False


def load_pipeline(ref: str):  # noqa: ANN201 - a diffusers StableDiffusionPipeline
    """A StableDiffusionPipeline (SD 1.x/2.x layout) from a folder or hub id, no safety checker."""
    pipe = open_pipeline(ref, pipeline_class=StableDiffusionPipeline, safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def training_prompts(ctx: Any, n: int = 500) -> list[str]:
    """The store's active train-split prompts; the shapes pool when the store has none (embedded model)."""
    with read_session(ctx.engine) as s:
        found = [p.text for p in list_prompts(session=s, split="train")]
    if not found and ctx.base_model.startswith("embedded:"):
        found = prompt_pool("train", n=n)
    if not found:
        raise UserError("no prompts to train DDPO on: add some with `pickloop prompts add`")
    return found[:n] if n else found


def _drift_prompts(ctx: Any, prompts: Sequence[str], n: int) -> list[str]:
    """The gate's held-out prompts for the drift guard; the first training prompts when there are none."""
    if n == 0:
        return []
    try:
        return gate_prompts(ctx, n=n)
    except UserError:
        print(f"ddpo: no held-out prompts; the drift guard watches {min(n, len(prompts))} training prompts")
        return list(prompts[:n])


def _summary(history: list[dict], stopped: str | None) -> dict[str, Any]:
    first, last = history[0], history[-1]
    mean = lambda key: float(np.mean([h[key] for h in history]))  # noqa: E731
    return {"reward_first": first["reward_mean"], "reward_last": last["reward_mean"],
            "reward_gain": last["reward_mean"] - first["reward_mean"], "drift_pixel": last.get("drift_pixel"),
            "drift_follow": last.get("drift_follow"), "guard": stopped, "epoch_s": mean("epoch_s"),
            "sample_s": mean("sample_s"), "train_s": mean("train_s"), "history": history}


def _resume_state(pipe, work_dir: Path | None, config: DDPOConfig,  # noqa: ANN001
                  parent: ParentLora | None = None) -> DDPOState | None:
    """The DDPOState of the newest complete checkpoint in ``work_dir`` (LoRA loaded into pipe.unet)."""
    latest = ckpt.latest_complete_checkpoint(work_dir) if work_dir else None
    if latest is None:
        return None
    start_lora(pipe.unet, rank=config.lora_rank, parent=parent)  # the adapter's shape; weights from the checkpoint
    opt = torch.optim.AdamW(lora_parameters(pipe.unet), lr=config.lr, weight_decay=config.weight_decay)
    resumed = ckpt.load_checkpoint(latest, unet=pipe.unet, optimizer=opt)
    extra = resumed.extra
    print(f"ddpo: resuming from {latest.name} (epoch {resumed.step})")
    return DDPOState(epoch=resumed.step, optimizer=opt.state_dict(), tracker=extra.get("tracker", {}),
                     last_good_lora=lora_tensors(pipe.unet), history=extra.get("history", []),
                     stopped=extra.get("stopped"))


def run_ddpo(ctx: Any, config: DDPOConfig, *, out_dir: Path | str, work_dir: Path | str | None = None,
             upto: int | None = None, base: str | None = None, resume: bool = True,
             on_step: Callable[[int, dict], None] | None = None, prompts: Sequence[str] | None = None,
             reward_fn: RewardFn | None = None, progress: bool = True,
             parent: ParentLora | None = None, scope: LabelScope | None = None) -> DDPOResult:
    """DDPO on the data home's prompts against ``config.reward``; LoRA to ``out_dir``, checkpoints in ``work_dir``.
    ``scope``: whose reward model ``reward-model`` reads (its audience's newest; None: the shared one).

    ``parent``: the promoted LoRA the run continues from (its LoRA is the starting point; None: a fresh
    LoRA on the base, see ``finetune.lora.start_lora``).

    ``upto`` (the data snapshot) is recorded in the LoRA's metadata. ``on_step(epoch, row)`` runs on the
    main process after each epoch (heartbeats). Works as one process or under ``accelerate launch``.
    """
    from accelerate import Accelerator

    from pickloop.context import resolve_model_ref

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    pipe = load_pipeline(resolve_model_ref(base or ctx.base_model))
    prompts = list(prompts or training_prompts(ctx))
    drift = _drift_prompts(ctx, prompts, config.drift_prompts)
    reward_fn = reward_fn or make_reward(config.reward, path=config.reward_path, ctx=ctx,
                                       audience=(scope or LabelScope()).audience)
    work = Path(work_dir) if work_dir else None
    state = _resume_state(pipe, work, config, parent) if resume else None
    if state is None and parent is not None:
        start_lora(pipe.unet, rank=config.lora_rank, parent=parent)

    def after_epoch(st: DDPOState, unet, optimizer) -> None:  # noqa: ANN001
        if accelerator.is_main_process:
            # an epoch past a drift limit is not checkpointed: a resumed run starts from the last good epoch
            if work is not None and (not st.over_limit or st.stopped):
                ckpt.save_checkpoint(work, step=st.epoch, unet=unet,
                                     optimizer=getattr(optimizer, "optimizer", optimizer),
                                     data_position=st.epoch, extra={"tracker": st.tracker, "history": st.history,
                                                                    "stopped": st.stopped,
                                                                    "config_hash": config.config_hash()})
            if on_step is not None:
                on_step(st.epoch, st.history[-1])
        accelerator.wait_for_everyone()

    _, history = train_ddpo(pipe, prompts, reward_fn, config, progress, drift_prompts=drift, state=state,
                            on_epoch_end=after_epoch, accelerator=accelerator)
    stopped = next((h["guard"] for h in history if h.get("guard")), None)
    metrics = _summary(history, stopped) if history else {}
    if stopped and config.drift_action == "rollback" and not any(h.get("kept", True) for h in history):
        return DDPOResult(Path(out_dir), "", len(history), metrics, unchanged=True)
    sha = ""
    if accelerator.is_main_process:
        sha = save_lora_atomic(getattr(pipe.unet, "module", pipe.unet), Path(out_dir), metadata={
            "method": "ddpo", "config": config.to_dict(), "config_hash": config.config_hash(), "data_snapshot": upto,
            "parent": parent.describe() if parent else None,
            "metrics": {k: v for k, v in metrics.items() if k != "history"}})
    accelerator.wait_for_everyone()
    return DDPOResult(Path(out_dir), sha, len(history), metrics)

"""Training the reward model: a Bradley-Terry loss over pairs, per-prompt weights, early stopping.

Loss (PickScore, Kirstain et al. 2023): for a pair (a, b) with target P(a over b) = y, the
cross-entropy of softmax([r_a, r_b]) against [y, 1 - y]; a tie (y = 0.5) of equal scores costs
log 2 and pulls the two scores together. Each pair is weighted 1 / (pairs of its prompt), so a
prompt with many labels does not drown the rest. Pairs are split by prompt (see reward.data), and
training stops when the held-out loss has not improved for ``patience`` epochs; the best epoch's
weights are kept.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from pickloop.errors import UserError
from reward.config import RewardConfig
from reward.data import (
    ImagePair, PairFeatures, check_labels, featurize, pairs_from_store, prompt_hash, prompt_weights, split_indices,
)
from reward.model import RewardModel
from reward.registry import weights_sha256


def bradley_terry_loss(r_a: torch.Tensor, r_b: torch.Tensor, label: torch.Tensor,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean cross-entropy of softmax([r_a, r_b]) against [label, 1 - label].

    r_a, r_b, label, weight: (n,). Equal scores with label 0.5 give log 2.
    """
    logp = F.log_softmax(torch.stack([r_a, r_b], dim=-1), dim=-1)
    ce = -(label * logp[:, 0] + (1.0 - label) * logp[:, 1])
    if weight is None:
        return ce.mean()
    return (ce * weight).sum() / weight.sum().clamp_min(1e-12)


# ---------------------------------------------------------------- one training run

def pair_scores(model: RewardModel, data, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """(r_a, r_b) for the pairs ``idx`` of ``data`` (PairFeatures, or ImagePairs when the backbone trains)."""
    if isinstance(data, PairFeatures):
        txt = data.txt[idx]
        return model.score_features(data.img_a[idx], txt), model.score_features(data.img_b[idx], txt)
    pairs = [data[i] for i in idx.tolist()]
    prompts = [p.prompt for p in pairs]
    return model(prompts, [p.a for p in pairs]), model(prompts, [p.b for p in pairs])


def pair_labels(data) -> tuple[torch.Tensor, list[str]]:  # noqa: ANN001
    if isinstance(data, PairFeatures):
        return data.label, data.prompts
    return torch.tensor([p.label for p in data], dtype=torch.float32), [p.prompt for p in data]


@torch.no_grad()
def heldout_loss(model: RewardModel, data, batch_size: int = 512) -> tuple[float, float]:  # noqa: ANN001
    """(per-prompt-weighted Bradley-Terry loss, accuracy without ties) on ``data`` in eval mode."""
    model.eval()
    label, prompts = pair_labels(data)
    idx = torch.arange(len(prompts))
    scores = [pair_scores(model, data, idx[i:i + batch_size]) for i in range(0, len(idx), batch_size)]
    r_a, r_b = torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores])
    loss = bradley_terry_loss(r_a, r_b, label, prompt_weights(prompts)).item()
    decided = label != 0.5
    acc = ((r_a > r_b) == (label > 0.5))[decided].float().mean().item() if decided.any() else float("nan")
    return loss, acc


def _trainable_state(model: RewardModel) -> dict[str, torch.Tensor]:
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    state.update({f"lora.{k}": v for k, v in model.lora_state_dict().items()})
    return copy.deepcopy(state)


def _restore(model: RewardModel, state: dict[str, torch.Tensor]) -> None:
    model.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    lora = {k[5:]: v for k, v in state.items() if k.startswith("lora.")}
    if lora:
        model.backbone.load_state_dict(lora, strict=False)


def _optimizer(model: RewardModel, config: RewardConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(model.head.parameters()), "lr": config.lr}]
    lora = [p for p in model.backbone.parameters() if p.requires_grad]
    if lora:
        groups.append({"params": lora, "lr": config.lora_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def fit(model: RewardModel, train, heldout, config: RewardConfig, progress: bool = True,  # noqa: ANN001
        select_best: bool = True) -> dict:
    """Train ``model`` on ``train`` with early stopping on ``heldout`` (both PairFeatures, or lists of
    ImagePair when the backbone has LoRA). Keeps the best epoch's weights; returns the run's figures.

    ``select_best=False``: run every epoch of ``config.epochs`` and keep the last weights, so ``heldout``
    only measures (cross-validation: the fold it is scored on must not pick the epoch)."""
    label, prompts = pair_labels(train)
    weight = prompt_weights(prompts)
    opt = _optimizer(model, config)
    gen = torch.Generator().manual_seed(config.seed)
    best = (float("inf"), -1, _trainable_state(model))
    t0, bad_epochs, epoch = time.perf_counter(), 0, 0
    bar = tqdm(range(config.epochs), desc="reward epochs", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(prompts), generator=gen)
        for i in range(0, len(order), config.batch_size):
            idx = order[i:i + config.batch_size]
            r_a, r_b = pair_scores(model, train, idx)
            loss = bradley_terry_loss(r_a, r_b, label[idx], weight[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val_loss, val_acc = heldout_loss(model, heldout)
        bar.set_postfix(heldout_loss=f"{val_loss:.4f}", heldout_acc=f"{val_acc:.3f}")
        if not select_best:
            continue
        if val_loss < best[0] - 1e-5:
            best, bad_epochs = (val_loss, epoch, _trainable_state(model)), 0
        else:
            bad_epochs += 1
            if bad_epochs >= config.patience:
                break
    if select_best:
        _restore(model, best[2])
    model.eval()
    val_loss, val_acc = heldout_loss(model, heldout)
    train_loss, train_acc = heldout_loss(model, train)
    return dict(heldout_loss=val_loss, heldout_acc=val_acc, train_loss=train_loss, train_acc=train_acc,
                best_epoch=best[1], epochs_run=epoch + 1, fit_s=time.perf_counter() - t0)


def fold_of(prompt: str, folds: int) -> int:
    """The cross-validation fold of a prompt: fixed by a hash of its text, like the held-out split."""
    return min(int(prompt_hash("cv:" + prompt) * folds), folds - 1)


@torch.no_grad()
def _decided_outcomes(model: RewardModel, data: PairFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """(right, margin) of each decided pair of ``data``: whether the model orders it as the label says,
    and by how much its scores differ."""
    r_a, r_b = pair_scores(model, data, torch.arange(len(data)))
    decided = data.label != 0.5
    right = ((r_a > r_b) == (data.label > 0.5))[decided]
    return right, (r_a - r_b).abs()[decided]


def cross_validated_accuracy(model: RewardModel, data: PairFeatures, config: RewardConfig,
                             epochs: int) -> dict:
    """How far the reward model can be trusted: its accuracy on every label once, each fold of prompts
    scored by a fresh head trained ``epochs`` epochs on the other folds (no early stopping on the fold).

    One held-out slice of ~10% of the prompts is a few dozen labels and swings by +-0.2 between runs;
    pooled over ``config.cv_folds`` folds every label counts once. Returns ``cv_acc``, its standard error
    ``cv_acc_se``, ``cv_pairs`` (decided pairs scored) and ``cv_acc_top``, the accuracy on the quarter of
    pairs it separates most (how far to trust it where it is sure: AI-ranked pairs are best against
    worst of a set, pairs it separates by far); empty when there are too few prompts.
    """
    folds = [fold_of(p, config.cv_folds) for p in data.prompts]
    rights, margins = [], []
    cfg = RewardConfig(**{**asdict(config), "epochs": max(1, epochs)})
    for k in range(config.cv_folds):
        test = [i for i, f in enumerate(folds) if f == k]
        train = [i for i, f in enumerate(folds) if f != k]
        if not test or len(set(data.prompts[i] for i in train)) < 2:
            continue
        head = model.fresh_head(seed=config.seed + 1 + k, head_width=config.head_width, dropout=config.dropout)
        fit(head, data.subset(train), data.subset(test), cfg, progress=False, select_best=False)
        right, margin = _decided_outcomes(head, data.subset(test))
        # margins in units of the fold's own spread, so folds whose heads differ in scale pool fairly
        rights.append(right)
        margins.append(margin / margin.std().clamp_min(1e-12) if len(margin) > 1 else margin)
    right, margin = (torch.cat(rights), torch.cat(margins)) if rights else (torch.zeros(0), torch.zeros(0))
    total = len(right)
    if total == 0:
        return {}
    acc = right.float().mean().item()
    n_top = max(1, total // 4)
    top = right[margin.argsort(descending=True)[:n_top]].float().mean().item()
    return {"cv_acc": acc, "cv_acc_se": (acc * (1 - acc) / total) ** 0.5, "cv_pairs": total,
            "cv_acc_top": top, "cv_acc_top_se": (top * (1 - top) / n_top) ** 0.5}


def _split(data, heldout_share: float):  # noqa: ANN001, ANN202
    _, prompts = pair_labels(data)
    train_idx, held_idx = split_indices(prompts, heldout_share)
    if isinstance(data, PairFeatures):
        return data.subset(train_idx), data.subset(held_idx)
    return [data[i] for i in train_idx], [data[i] for i in held_idx]


def train_on_pairs(pairs: Sequence[ImagePair] | PairFeatures, *, config: RewardConfig | None = None,
                   model: RewardModel | None = None, progress: bool = True) -> tuple[RewardModel, dict]:
    """Train a reward model on labelled pairs, without the store (simulated raters, benches, the loop).

    ``pairs``: ImagePairs, or PairFeatures already computed with ``model`` (frozen backbone only).
    ``model``: a model to train (its head and LoRA keep training); a fresh one on ``config.backbone`` if None.
    Returns (model, metrics) with held-out loss/accuracy, pair and prompt counts, and train_s.
    """
    config = config or RewardConfig()
    t0 = time.perf_counter()
    if not isinstance(pairs, PairFeatures):
        pairs = list(pairs)
        if not config.include_ties:
            pairs = [p for p in pairs if p.label != 0.5]
    elif not config.include_ties:
        pairs = pairs.subset([i for i, y in enumerate(pairs.label.tolist()) if y != 0.5])
    _, prompts = pair_labels(pairs)
    check_labels(prompts)
    if model is None:
        model = RewardModel.create(config.backbone, **config.model_kwargs())
    if isinstance(pairs, PairFeatures) and model.backbone_trainable:
        raise UserError("a LoRA backbone trains on images, not on precomputed features")
    data = pairs if model.backbone_trainable or isinstance(pairs, PairFeatures) else featurize(model, pairs, progress)
    train, heldout = _split(data, config.heldout_share)
    metrics = fit(model, train, heldout, config, progress)
    if config.cv_folds >= 2 and isinstance(data, PairFeatures):
        metrics.update(cross_validated_accuracy(model, data, config, epochs=metrics["best_epoch"] + 1))
    _, train_prompts = pair_labels(train)
    _, held_prompts = pair_labels(heldout)
    metrics.update(train_pairs=len(train_prompts), heldout_pairs=len(held_prompts),
                   train_prompts=len(set(train_prompts)), heldout_prompts=len(set(held_prompts)),
                   heldout_share=config.heldout_share, config=asdict(config), train_s=time.perf_counter() - t0)
    model.metrics = metrics
    return model, metrics


# ---------------------------------------------------------------- from the store

def train_reward(*, ctx, config: RewardConfig | None = None,  # noqa: ANN001
                 progress: bool = True, audience: str = "everyone") -> tuple[RewardModel, dict]:
    """Train on every pair in the store, save under ``<home>/reward/<id>/`` and register a RewardModelRow
    naming the data snapshot (highest judgement id) it saw. One transaction: the row exists only if the
    folder was written. ``audience`` (``group:NAME``, ``rater:NAME``): on that audience's labels only, and
    registered as its reward model (``metrics["audience"]``), which its fine-tuning reads; one line when it
    has fewer than ``settings.audience_min_labels``."""
    from pickloop.audiences import parse_audience, require_audience_labels
    from pickloop.db import read_session, write_session
    from pickloop.schema import RewardModelRow
    from pickloop.store import data_snapshot

    config = config or RewardConfig()
    audience = parse_audience(audience)
    with read_session(ctx.engine) as s:
        snapshot = data_snapshot(session=s)
        require_audience_labels(session=s, audience=audience, minimum=ctx.settings.audience_min_labels,
                                upto=snapshot)
    pairs = pairs_from_store(ctx=ctx, upto_id=snapshot, include_ties=config.include_ties, audience=audience)
    model, metrics = train_on_pairs(pairs, config=config, progress=progress)
    metrics.update(data_snapshot=snapshot, labels=len({p.group for p in pairs}), config_hash=config.config_hash(),
                   audience=audience)
    with write_session(ctx.engine) as s:
        row = RewardModelRow(path="", sha256="", backbone=config.backbone, data_snapshot=snapshot, metrics={})
        s.add(row)
        s.flush()
        folder = ctx.home / "reward" / str(row.id)
        metrics["reward_model_id"] = row.id
        model.save(folder, metrics)
        row.path, row.sha256 = str(folder.resolve()), weights_sha256(folder)
        row.metrics = {k: v for k, v in metrics.items() if k != "config"}
        s.add(row)
    return model, metrics

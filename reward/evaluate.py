"""Held-out figures of a reward model: accuracy, log loss, calibration, and a learning curve.

Accuracy counts only decided pairs (ties say nothing about which score should be higher); log loss
is the Bradley-Terry cross-entropy over every pair, ties included; the expected calibration error
(Guo et al. 2017) bins the predicted probability of the predicted winner, max(P, 1 - P) with
P = sigmoid(r_a - r_b), into 10 equal bins over [0.5, 1] and averages |accuracy - confidence|
weighted by the share of pairs in each bin.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from reward.data import PairFeatures
from reward.model import RewardModel
from reward.train import RewardConfig, bradley_terry_loss, fit, pair_labels, pair_scores


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> float:
    """ECE of predictions with ``confidence`` in [0.5, 1] (n,) and ``correct`` (n,) bools."""
    if len(confidence) == 0:
        return float("nan")
    edges = torch.linspace(0.5, 1.0, bins + 1)
    which = torch.bucketize(confidence.clamp(0.5, 1.0), edges[1:-1], right=False)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.float().mean().item() * abs(correct[mask].float().mean().item()
                                                    - confidence[mask].mean().item())
    return ece


def pairwise_metrics(r_a: torch.Tensor, r_b: torch.Tensor, label: torch.Tensor) -> dict:
    """accuracy (ties excluded), log_loss (all pairs), ece (ties excluded), pairs and ties counted."""
    decided = label != 0.5
    p = torch.sigmoid(r_a - r_b)
    pred_a = r_a > r_b
    correct = (pred_a == (label > 0.5))[decided]
    conf = torch.where(pred_a, p, 1 - p)[decided]
    return dict(
        accuracy=correct.float().mean().item() if decided.any() else float("nan"),
        log_loss=bradley_terry_loss(r_a, r_b, label).item() if len(label) else float("nan"),
        ece=expected_calibration_error(conf, correct),
        pairs=int(len(label)), ties=int((~decided).sum()),
    )


@torch.no_grad()
def evaluate_model(model: RewardModel, data) -> dict:  # noqa: ANN001
    """pairwise_metrics of ``model`` on PairFeatures or a list of ImagePairs."""
    model.eval()
    label, prompts = pair_labels(data)
    idx = torch.arange(len(prompts))
    scores = [pair_scores(model, data, idx[i:i + 512]) for i in range(0, len(idx), 512)]
    if not scores:
        return pairwise_metrics(torch.zeros(0), torch.zeros(0), torch.zeros(0))
    return pairwise_metrics(torch.cat([s[0] for s in scores]), torch.cat([s[1] for s in scores]), label)


def label_counts(n_labels: int, points: int = 5, smallest: int = 10) -> list[int]:
    """Roughly geometric numbers of labels up to ``n_labels`` for a learning curve."""
    if n_labels <= smallest:
        return [n_labels]
    ratio = (n_labels / smallest) ** (1 / max(points - 1, 1))
    return sorted({min(n_labels, round(smallest * ratio ** i)) for i in range(points)} | {n_labels})


def learning_curve(model: RewardModel, train: PairFeatures, heldout: PairFeatures, config: RewardConfig,
                   counts: Sequence[int] | None = None, progress: bool = False) -> list[dict]:
    """Held-out accuracy of fresh heads trained on the first n labels (judgements, in label order).

    Heads share ``model``'s backbone (frozen), so the features are computed once. Early stopping uses
    the held-out set, as in training, so these are the figures ``train`` would report at each size.
    """
    groups = sorted(set(train.group.tolist()))
    counts = counts or label_counts(len(groups))
    curve = []
    for n in counts:
        keep = set(groups[:n])
        sub = train.subset([i for i, g in enumerate(train.group.tolist()) if g in keep])
        head = model.fresh_head(seed=config.seed)
        fit(head, sub, heldout, replace(config, lora_rank=0), progress=False)
        m = evaluate_model(head, heldout)
        curve.append(dict(labels=n, pairs=len(sub), accuracy=m["accuracy"], log_loss=m["log_loss"]))
        if progress:
            print(f"  {n:5d} labels ({len(sub)} pairs): held-out accuracy {m['accuracy']:.3f}")
    return curve


def save_learning_curve(curve: list[dict], path: str | Path, title: str = "reward model learning curve",
                        reference: float | None = None) -> Path:
    """A PNG of held-out accuracy against number of labels (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    xs = [c["labels"] for c in curve]
    ys = [c["accuracy"] if not math.isnan(c["accuracy"]) else None for c in curve]
    ax.plot(xs, ys, marker="o", label="held-out accuracy")
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    if reference is not None:
        ax.axhline(reference, color="green", linestyle="--", label="rater consistency")
    ax.set_xscale("log")
    ax.set_xlabel("labels (judgements)")
    ax.set_ylabel("pairwise accuracy (ties excluded)")
    ax.set_ylim(0.4, 1.0)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path

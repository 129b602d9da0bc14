"""Preference pairs for the reward model: from the store or from anywhere, as images or as features.

A pair says P(a preferred over b) = label: 1.0 when a won, 0.5 for a tie. Every pair carries the
label (judgement) it came from, ``group``, so that "number of labels" means judgements, not pairs.
The train / held-out split is by prompt, fixed by a hash of the prompt text (never by row), so a
prompt never changes side as labels grow.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from tqdm import tqdm

from pickloop.errors import UserError
from reward.model import image_key


@dataclass(frozen=True)
class ImagePair:
    """One labelled pair of images for a prompt. Keys (e.g. the store's sha256) name images for the cache."""

    prompt: str
    a: Image.Image
    b: Image.Image
    label: float  # P(a preferred over b): 1.0, 0.0 or 0.5 (tie)
    group: int = 0  # the judgement (label) this pair comes from
    a_key: str | None = None
    b_key: str | None = None


@dataclass
class PairFeatures:
    """Pairs as frozen-backbone features: img_a, img_b, txt (n, d) each; label, group (n,)."""

    img_a: torch.Tensor
    img_b: torch.Tensor
    txt: torch.Tensor
    label: torch.Tensor
    group: torch.Tensor
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int] | torch.Tensor) -> "PairFeatures":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return PairFeatures(self.img_a[idx], self.img_b[idx], self.txt[idx], self.label[idx], self.group[idx],
                            [self.prompts[i] for i in idx.tolist()])


def check_labels(prompts: Sequence[str]) -> None:
    """A UserError line when there is nothing to learn from or nothing to hold out."""
    if not prompts:
        raise UserError("no preference pairs to train on: rate some sets first (ties count, none/skip do not)")
    if len(set(prompts)) < 2:
        raise UserError("all labels are for one prompt: the train/held-out split is by prompt, so label at "
                        "least two prompts")


def prompt_hash(prompt: str) -> float:
    """A stable number in [0, 1) for a prompt text (sha256), independent of every other prompt."""
    return int(hashlib.sha256(("reward-split:" + prompt).encode("utf-8")).hexdigest()[:12], 16) / 16 ** 12


def heldout_prompts(prompts: Sequence[str], heldout_share: float) -> set[str]:
    """The prompts held out: those whose hash is below ``heldout_share``.

    A prompt's side depends only on its own text, so it is stable as labels grow. Only when one side
    would be empty (few prompts) is the prompt nearest the threshold moved across, so both sides exist.
    """
    unique = sorted(set(prompts))
    check_labels(unique)
    held = {p for p in unique if prompt_hash(p) < heldout_share}
    if not held:
        held = {min(unique, key=prompt_hash)}
    elif len(held) == len(unique):
        held.discard(max(unique, key=prompt_hash))
    return held


def split_indices(prompts: Sequence[str], heldout_share: float) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices) of pairs, split by their prompt."""
    held = heldout_prompts(prompts, heldout_share)
    train = [i for i, p in enumerate(prompts) if p not in held]
    heldout = [i for i, p in enumerate(prompts) if p in held]
    return train, heldout


def prompt_weights(prompts: Sequence[str]) -> torch.Tensor:
    """1 / (pairs of the same prompt) for each pair (PickScore's weighting), shape (n,)."""
    counts = Counter(prompts)
    return torch.tensor([1.0 / counts[p] for p in prompts], dtype=torch.float32)


@torch.no_grad()
def featurize(model, pairs: Sequence[ImagePair], progress: bool = False) -> PairFeatures:  # noqa: ANN001
    """Backbone features of every pair (each distinct image and prompt embedded once), without gradients."""
    images: dict[str, Image.Image] = {}
    ka, kb = [], []
    for p in pairs:
        for im, key, out in ((p.a, p.a_key, ka), (p.b, p.b_key, kb)):
            key = key or image_key(im)
            images.setdefault(key, im)
            out.append(key)
    keys = list(images)
    feats = {}
    for i in tqdm(range(0, len(keys), 256), desc="image features", disable=not progress, leave=False):
        chunk = keys[i:i + 256]
        for k, f in zip(chunk, model.image_features([images[k] for k in chunk], chunk)):
            feats[k] = f
    prompts = [p.prompt for p in pairs]
    return PairFeatures(
        img_a=torch.stack([feats[k] for k in ka]), img_b=torch.stack([feats[k] for k in kb]),
        txt=model.text_features(prompts), label=torch.tensor([p.label for p in pairs], dtype=torch.float32),
        group=torch.tensor([p.group for p in pairs], dtype=torch.long), prompts=prompts,
    )


def pairs_from_store(*, ctx, upto_id: int | None = None, include_ties: bool = True,  # noqa: ANN001
                     audience: str = "everyone") -> list[ImagePair]:
    """Every preference pair in the store (up to judgement ``upto_id``) of ``audience``'s raters (``everyone``:
    all; ``group:NAME``, ``rater:NAME``), with images from the image store."""
    from pickloop.audiences import audience_rater_ids
    from pickloop.db import read_session
    from pickloop.store import preference_pairs

    with read_session(ctx.engine) as s:
        rows = preference_pairs(session=s, upto_id=upto_id, include_ties=include_ties,
                                rater_ids=audience_rater_ids(session=s, audience=audience))
        raw = [(r.prompt, r.a.image_sha256, r.b.image_sha256, r.label, r.judgement_id) for r in rows]
    opened: dict[str, Image.Image] = {}

    def image(sha: str) -> Image.Image:
        if sha not in opened:
            opened[sha] = ctx.images.open(sha)
        return opened[sha]

    return [ImagePair(prompt, image(a), image(b), label, group=j, a_key=a, b_key=b)
            for prompt, a, b, label, j in raw]
